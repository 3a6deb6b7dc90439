"""The search space of `yelp-lora tune`: for each run-config field it may search, a range or a list of
choices. Laid out as a run config (section, then field), read from an optional YAML file field by field
over the defaults, and checked against the base config before any trial trains.

Apart from config.py because only tune needs it: the commands that predict or serve do not build it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from yelp_lora.config import RunConfig, read_mapping, with_overrides
from yelp_lora.errors import ConfigError

# lora.target_modules, by the name a search space chooses among (Optuna's choices must be scalars).
TARGET_MODULES: dict[str, list[str]] = {
    "query+value": ["query", "value"],
    "attention": ["query", "key", "value", "attention.output.dense"],  # every attention projection
    "all-linear": ["query", "key", "value", "dense"],  # and the feed-forward and pooler layers
}


class _Domain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Domain):
    """Any value from low to high, drawn uniformly or, with log, log-uniformly."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(_Domain):
    """Any integer from low to high in steps of step, drawn uniformly or, with log, log-uniformly."""

    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ValueError("a log range needs low > 0 and step 1")
        return self


def _domain_form(value: Any) -> str:
    return "range" if isinstance(value, (dict, _Domain)) else "choices"


def _domain(range_type: type, value_type: Any) -> Any:
    # Tagged so that a bad range reports only the range's problem, and bad choices only theirs.
    return Annotated[
        Union[Annotated[range_type, Tag("range")], Annotated[list[value_type], Tag("choices")]],
        Discriminator(_domain_form),
    ]


FloatDomain = _domain(FloatRange, float)
IntDomain = _domain(IntRange, int)


class _SpaceSection(BaseModel):
    """Each field is one searchable config field of the same section and name: a range ({low, high,
    log}), a list of choices, a single value (fixed, not searched) or null (the base config's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _one_form(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("no choices: give at least one, or null to keep the base config's value")
            return list(value)
        if value is None or isinstance(value, (dict, _Domain)):
            return value
        return [value]  # one value: fixed


class ModelSpace(_SpaceSection):
    max_length: IntDomain | None = [128, 192, 256]
    truncation: list[Literal["head", "head+tail"]] | None = ["head", "head+tail"]


class LoraSpace(_SpaceSection):
    r: IntDomain | None = [4, 8, 16, 32]
    alpha: IntDomain | None = [8, 16, 32, 64]
    dropout: FloatDomain | None = FloatRange(low=0.0, high=0.3)
    target_modules: list[Literal[tuple(TARGET_MODULES)]] | None = list(TARGET_MODULES)


class TrainSpace(_SpaceSection):
    learning_rate: FloatDomain | None = FloatRange(low=5e-4, high=5e-3, log=True)
    epochs: IntDomain | None = IntRange(low=1, high=4)
    warmup_ratio: FloatDomain | None = FloatRange(low=0.0, high=0.2)
    weight_decay: FloatDomain | None = FloatRange(low=0.0, high=0.1)
    train_batch_size: IntDomain | None = [8, 16, 32]
    class_weights: list[Literal["none", "auto"]] | None = ["none", "auto"]
    label_smoothing: FloatDomain | None = FloatRange(low=0.0, high=0.2)
    ordinal_weight: FloatDomain | None = FloatRange(low=0.0, high=1.0)
    loraplus_lr_ratio: FloatDomain | None = None  # searched only when a space file gives it a range


Domain = FloatRange | IntRange | list


class SearchSpace(BaseModel):
    """What `yelp-lora tune` searches: the run config's fields of the same sections and names. The
    defaults suit a CPU; a space file (YAML, laid out as a run config) replaces them field by field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpace = ModelSpace()
    lora: LoraSpace = LoraSpace()
    train: TrainSpace = TrainSpace()

    def domains(self) -> dict[str, Domain]:
        """Every field the space sets, by dotted config name (train.learning_rate), to its range or choices."""
        return {
            f"{section}.{name}": domain
            for section in type(self).model_fields
            for name, domain in getattr(self, section)
            if domain is not None
        }

    def searched(self) -> dict[str, Domain]:
        """The fields a trial draws: those with a range wider than a point, or more than one choice."""
        return {name: domain for name, domain in self.domains().items() if _fixed_value(domain) is _SEARCHED}

    def fixed(self) -> dict[str, Any]:
        """The fields every trial sets to the same value (one choice, or low == high), as config values."""
        values = {name: _fixed_value(domain) for name, domain in self.domains().items()}
        return {name: config_value(name, value) for name, value in values.items() if value is not _SEARCHED}

    def holding(self, given: dict[str, Any], space_file: str | Path | None) -> "SearchSpace":
        """This space without the fields that a flag or --set gave a value, which every trial then keeps.
        A field the space file names as well is refused: which of the two should win is not obvious."""
        sections = {}
        for section in type(self).model_fields:
            part = getattr(self, section)
            held = [name for name, domain in part if domain is not None and f"{section}.{name}" in given]
            named = [f"{section}.{name}" for name in held if name in part.model_fields_set]
            if named:
                raise ConfigError(f"{', '.join(named)}: given by a flag or --set and by the space file {space_file}: give one")
            sections[section] = part.model_copy(update=dict.fromkeys(held))
        return type(self)(**sections)

    def check(self, base: RunConfig) -> None:
        """Refuse a space with a value that cannot make a valid run config from `base` (each bound and
        choice tried alone), before any trial trains."""
        for name, domain in self.domains().items():
            candidates = [domain.low, domain.high] if isinstance(domain, _Domain) else domain
            for value in candidates:
                try:
                    with_overrides(base, {name: config_value(name, value)})
                except ConfigError as err:
                    problem = str(err).removeprefix("config: ")
                    raise ConfigError(f"search space {name}: {value!r} makes no valid run config ({problem})") from None


_SEARCHED = object()


def _fixed_value(domain: Domain) -> Any:
    if isinstance(domain, list):
        return domain[0] if len(set(domain)) == 1 else _SEARCHED
    return domain.low if domain.low == domain.high else _SEARCHED


def config_value(name: str, value: Any) -> Any:
    """The config value a space's value stands for: a target-module set's name becomes its modules."""
    return TARGET_MODULES[value] if name == "lora.target_modules" else value


def load_space(path: str | Path | None = None) -> SearchSpace:
    """The default search space, with the fields a YAML space file sets replaced."""
    if path is None:
        return SearchSpace()
    raw = read_mapping(Path(path), "space file")
    try:
        return SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"space file {path}: {'; '.join(_space_problem(e) for e in err.errors())}") from None


def _space_problem(error: dict) -> str:
    # Drop the union's tags (range / choices) from where the problem is.
    where = ".".join(str(p) for p in error["loc"] if p not in ("range", "choices"))
    if error["type"] == "extra_forbidden":
        return f"{where}: not a search parameter (they are: {', '.join(SearchSpace().domains())})"
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')} (got {error.get('input')!r})"
