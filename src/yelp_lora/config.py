"""Every settings model: the run config (a YAML preset plus CLI overrides) and the settings of
evaluation, tuning, serving and the bench. Each is validated when built and immutable afterwards; the
CLI's flags are named after their fields, so a flag maps to its setting by name alone."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Collection, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yelp_lora.errors import ConfigError, shown

LABEL_NAMES: tuple[str, ...] = (
    "strong_negative",
    "negative",
    "neutral",
    "positive",
    "strong_positive",
)
NUM_LABELS = len(LABEL_NAMES)
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}
# What NumPy's and Optuna's generators accept as a seed.
SEED_RANGE = dict(ge=0, le=2**32 - 1)
# How a review longer than max_length is cut (ModelConfig.truncation, and the adapter's yelp_lora.json).
Truncation = Literal["head", "head+tail"]


class _Section(BaseModel):
    # A misspelt key in a YAML preset must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info) -> Any:
        # YAML reads true, yes and on as booleans, which a number field would silently take as 1 or 0.
        annotation = cls.model_fields[info.field_name].annotation
        kinds = get_args(annotation) or (annotation,)
        if isinstance(value, bool) and bool not in kinds and (int in kinds or float in kinds):
            raise ValueError("a number is needed, not a boolean")
        return value


class ModelConfig(_Section):
    name_or_path: str = Field(
        "minilm", description="Hub id, local directory, or the alias 'minilm' (the packaged all-MiniLM-L6-v2)."
    )
    max_length: int = Field(256, ge=8, le=512)
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="Attention kernel for training. auto = eager on CPU, sdpa on CUDA: with attention dropout on, "
        "CPU SDPA falls back to a slower math path (docs/performance.md).",
    )
    attention_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Dropout on attention probabilities; null keeps the base model's own (0.1 in BERT)."
    )
    dropout_kernel: Literal["auto", "torch", "fast"] = Field(
        "auto",
        description="How training draws dropout masks. fast = 16-bit draws (yelp_lora.modeling.dropout), measured ~3x cheaper "
        "than torch's per-element ones on CPU; auto = fast on CPU, torch on CUDA (its fused kernels).",
    )
    truncation: Truncation = Field(
        "head",
        description="How a review longer than max_length is cut, in training, evaluation and prediction alike: "
        "head keeps its first tokens; head+tail keeps the first head_tokens and the last "
        "max_length - head_tokens (Sun et al. 2019 found it best on Yelp).",
    )
    head_tokens: int | None = Field(
        None, ge=2, description="With head+tail: tokens kept from the start ([CLS] included); null = a quarter of max_length."
    )

    @field_validator("head_tokens")
    @classmethod
    def _head_fits(cls, value: int | None, info) -> int | None:
        # A field check (not a model one), so the error names model.head_tokens and its value alone.
        max_length = info.data.get("max_length")
        if value is not None and max_length is not None and value >= max_length:
            raise ValueError(f"must be below model.max_length ({max_length}): the tail needs at least [SEP]")
        return value

    @property
    def kept_head(self) -> int:
        """Tokens kept from the start of a review that is cut (the rest come from its end)."""
        return kept_head(self.truncation, self.head_tokens, self.max_length)


def kept_head(truncation: str, head_tokens: int | None, max_length: int) -> int:
    """head: all but the closing [SEP]; head+tail: head_tokens, by default a quarter of max_length."""
    if truncation == "head":
        return max_length - 1
    return head_tokens if head_tokens is not None else max_length // 4


class LoraSettings(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(["query", "value"], min_length=1)
    bias: Literal["none", "all", "lora_only"] = "none"


class TrainSource(_Section):
    """One more source of training rows, beside data.source's train split."""

    source: str = Field(description="A file, a directory (its train split) or a hub data set id (its train split).")
    samples: int | None = Field(None, ge=1, description="Rows drawn from it (seeded); null = all, unless fraction.")
    fraction: float | None = Field(None, gt=0.0, le=1.0, description="Share of its rows drawn, instead of samples.")
    balance: bool = Field(False, description="Draw the same number of rows of every label (as many as the rarest allows).")

    @model_validator(mode="after")
    def _one_size(self) -> "TrainSource":
        if self.samples is not None and self.fraction is not None:
            raise ValueError(f"{self.source}: give samples or fraction, not both")
        return self


class DataConfig(_Section):
    source: str = Field(
        "auto",
        description="Hub data set id, a directory with train/test files, or one file. "
        "'auto': $YELP_LORA_DATA, else ../shared/data/yelp_review_full, else the hub's yelp_review_full.",
    )
    train_samples: int | None = Field(None, ge=1, description="Seeded stratified subsample of train; null = all.")
    val_samples: int = Field(400, ge=1, description="Validation rows carved from the train split, never from test.")
    extra_train: list[TrainSource] = Field(
        default_factory=list,
        description="More training sources; validation still comes from data.source alone, carved before anything "
        "is drawn; an extra row whose text is a validation or training row already is left out before its draw.",
    )
    skip_bad_rows: bool = False


class TrainConfig(_Section):
    learning_rate: float = Field(2e-4, gt=0)
    # transformers' schedulers that need no further arguments (checked here, not in the Trainer's traceback).
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, ge=-1, description="Run this many optimizer steps, in place of epochs (fewer or more); -1 = run all epochs.")
    train_batch_size: int | None = Field(
        None, ge=1, description="null = auto: 16 on CPU, 64 on CUDA (16 leaves a large GPU launch-bound)."
    )
    eval_batch_size: int | None = Field(None, ge=1, description="null = auto: 16 on CPU, 128 on CUDA.")
    weight_decay: float = Field(0.01, ge=0.0)
    seed: int = Field(42, **SEED_RANGE)
    pad_to_max_length: bool = Field(False, description="Pad every text to max_length (the tutorials' fixed form).")
    group_by_length: bool = Field(
        True,
        description="Draw each optimizer step's batch at random, as usual, then sort it by length and run it "
        "as micro-batches of micro_batch_size with accumulated gradients: padding falls, the step's "
        "examples and gradient stay those of a random batch.",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, description="Rows per forward pass under group_by_length; must divide the training batch. "
        "null = auto: 4 on CPU, 16 on CUDA.",
    )
    pad_to_multiple_of: int | None = Field(
        None, ge=1, description="Pad each batch's length up to a multiple of this (fewer distinct shapes; "
        "1: to its longest text). null = auto: 16 on AMX CPUs, 8 on other CPUs (both measured faster), 1 on GPUs.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the CPU or GPU supports it, else fp32."
    )
    class_weights: Literal["none", "auto"] = Field(
        "none", description="auto: weight each label's loss by its inverse frequency among the training rows."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ordinal_weight: float = Field(
        0.0, ge=0.0,
        description="Adds this times the expected distance in stars (sum of p(k) * |k - label|) to the "
        "cross-entropy: the labels are ordered, so predicting 4 stars for a 5 costs less than 1.",
    )
    loraplus_lr_ratio: float | None = Field(
        None, ge=1.0,
        description="LoRA+ (Hayou et al. 2024; peft's create_loraplus_optimizer): LoRA's B matrices, and "
        "the biases, learn at this multiple of the learning rate, the A matrices and the head's weights "
        "at the rate itself. null = one rate for every parameter.",
    )
    calibrate: bool = Field(
        True, description="Fit a softmax temperature on the validation rows of the kept epoch; stored in the adapter."
    )
    report_to: Literal["none", "tensorboard", "mlflow"] = Field(
        "none", description="The Trainer's own tracking integration (the [tracking] extra)."
    )
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(None, ge=1, description="Also checkpoint every N steps (for --resume).")

    @field_validator("max_steps")
    @classmethod
    def _some_steps_or_all(cls, steps: int) -> int:
        if steps == 0:  # the Trainer would run one step
            raise ValueError("must be at least 1, or -1 for all epochs")
        return steps


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    lora: LoraSettings = LoraSettings()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _padded_length_fits(self) -> "RunConfig":
        check_padded_length(self.model.max_length, self.train.pad_to_multiple_of, "train.pad_to_multiple_of")
        return self


def unused_settings(config: RunConfig, given: Collection[str]) -> list[str]:
    """Of the dotted fields the command line set (`given`), those that `config` makes no use of, each
    with why: a setting that silently does nothing is a mistake the user should hear of. (Not for
    tune's base config, where a trial may draw what makes the setting count.)"""
    model, train = config.model, config.train
    one_batch_steps = train.pad_to_max_length or not train.group_by_length
    unused = {
        "model.head_tokens": (
            model.head_tokens is not None and model.truncation == "head",
            "it counts only with model.truncation head+tail, and this config cuts reviews at their head",
        ),
        "train.pad_to_multiple_of": (
            train.pad_to_multiple_of is not None and train.pad_to_max_length,
            "train.pad_to_max_length pads every text to model.max_length already",
        ),
        "train.epochs": (
            train.max_steps > 0, "train.max_steps sets how many steps the run takes, whatever the epochs would give",
        ),
        "train.micro_batch_size": (
            train.micro_batch_size is not None and one_batch_steps,
            "micro-batches are how train.group_by_length runs a step, and this config runs each step as one "
            "batch (train.pad_to_max_length, or train.group_by_length false)",
        ),
    }
    return [f"{name} is set but unused: {why}" for name, (idle, why) in unused.items() if idle and name in given]


def check_padded_length(max_length: int, multiple: int | None, name: str) -> None:
    """A text of max_length tokens padded up to `multiple` must still fit BERT's 512 positions (auto's
    multiple, 8, divides 512)."""
    padded = -(-max_length // multiple) * multiple if multiple else max_length
    if padded > 512:
        raise ValueError(f"{name} {multiple} pads max_length {max_length} to {padded} tokens, past BERT's 512")


# `--set KEY=null`: the field set to null, where None in overrides keeps the preset's value.
SET_NULL = type("SetNull", (), {"__repr__": lambda self: "null"})()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML preset (or the defaults) and apply dotted overrides such as {"train.seed": 7}.

    A run's run.json serves as well: its `config`, so `--config RUN/run.json` trains that run again.
    """
    raw = read_mapping(Path(path), "config file") if path is not None else {}
    if {"config", "resolved"} <= raw.keys():  # a run record (artifacts.RunRecord), which YAML reads as JSON
        raw = raw["config"]
    given = {key for key, value in (overrides or {}).items() if value is not None}
    return _validated_config(_overridden(raw, overrides), f"config {path}" if path else "config", given)


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """`config` with dotted overrides applied, validated as a whole (load_config's rules)."""
    return _validated_config(_overridden(config.model_dump(), overrides), "config")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping holding a key twice (YAML itself keeps the last, silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """YAML as yaml.safe_load reads it, a key given twice in one mapping refused (yaml.YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong and where, on one line (PyYAML's own message spans several)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that holds a mapping (a run config, a search space); `what` names it in errors."""
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as err:  # a directory, no permission, ...
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {path} must hold a mapping, not {type(raw).__name__}")
    return raw


def _overridden(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if not key or section not in RunConfig.model_fields:
            sections = ", ".join(RunConfig.model_fields)
            raise ConfigError(f"unknown config field {dotted!r}: expected SECTION.KEY with SECTION one of {sections}")
        raw.setdefault(section, {})[key] = None if value is SET_NULL else value
    return raw


MAX_CONFIG_PROBLEMS = 5  # named in one error line; the rest counted


def _validated_config(raw: dict[str, Any], where: str, given: set[str] = frozenset()) -> RunConfig:
    """RunConfig(raw), its errors in one line; `given`: the dotted fields the command line set, whose
    errors are the command line's, not the preset's."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        problems = "; ".join(_config_problem(e) for e in errors[:MAX_CONFIG_PROBLEMS])
        if len(errors) > MAX_CONFIG_PROBLEMS:  # a file that is no run config at all (another record, say)
            problems += f"; and {len(errors) - MAX_CONFIG_PROBLEMS} more"
        if all(".".join(str(p) for p in e["loc"][:2]) in given for e in errors):
            where = "the command line"
        raise ConfigError(f"{where}: {problems}") from None


def _config_problem(error: dict) -> str:
    """A field's error names the field and its value; a rule across fields names them in its message."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    dotted = ".".join(str(p) for p in error["loc"])
    section = RunConfig.model_fields.get(str(error["loc"][0]))
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 2 and section is not None:
        return f"{dotted}: no such field ({error['loc'][0]} has {', '.join(section.annotation.model_fields)})"
    return f"{dotted}: {message} (got {shown(error.get('input'), 80)})"  # a whole JSON record was once printed here


def changed_fields(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """`SECTION.KEY: old -> new` for every field of two sectioned dumps (a config's, a search space's) that differs."""
    return [
        f"{section}.{key}: {before.get(section, {}).get(key)!r} -> {value!r}"
        for section, values in after.items()
        for key, value in values.items()
        if before.get(section, {}).get(key) != value
    ]


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """`--set train.epochs=2` -> {"train.epochs": 2}; values are read as YAML scalars (`1e-3`, without a
    dot, is the string '1e-3', which the config's float field then reads as 0.001); `null` sets a field
    to null (SET_NULL: in overrides, None keeps the preset's value)."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-3")
        if not text.strip():
            raise ConfigError(f"--set {assignment!r}: no value; give one, or null for none")
        if key in overrides:
            raise ConfigError(f"--set {key} given twice: give it once")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({yaml_problem(err)})") from None
        overrides[key] = SET_NULL if value is None else value
    return overrides


# ---------------------------------------------------------------- command settings


class _Settings(BaseModel):
    """Settings of one command: unknown fields refused, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


Settings = TypeVar("Settings", bound=_Settings)


def build_settings(kind: type[Settings], /, **values: Any) -> Settings:
    """`kind(**values)`, with every invalid value reported as the flag that set it (--field-name)."""
    try:
        return kind(**values)
    except ValidationError as err:
        raise ConfigError("; ".join(_flag_problem(e) for e in err.errors())) from None


def _flag_problem(error: dict) -> str:
    if not error["loc"]:  # a check across fields: its message names the flags
        return str(error["msg"]).removeprefix("Value error, ")
    flag = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
    if error["type"] == "greater_than_equal":
        return f"{flag} must be at least {error['ctx']['ge']} (got {error['input']!r})"
    return f"{flag} {error.get('input')!r}: {str(error['msg']).removeprefix('Value error, ')}"


class EvalSettings(_Settings):
    """How `evaluate`, `compare` and `report` score an adapter on held-out reviews."""

    data: str | None = Field(None, description="Data source; null = the one the adapter was trained on.")
    split: Literal["train", "test"] = "test"
    n: int | None = Field(500, ge=1, description="Seeded stratified sample size; null = every row.")
    seed: int = Field(42, **SEED_RANGE, description="Sample (and bootstrap) seed.")
    batch_size: int = Field(64, ge=1)
    skip_bad_rows: bool = False
    with_classical: bool = Field(False, description="Also TF-IDF + logistic regression on the adapter's training rows.")
    resamples: int = Field(1000, ge=1, description="Bootstrap resamples (report).")


class TuneSettings(_Settings):
    """How long `yelp-lora tune` searches, how it prunes, and where its study lives."""

    output_dir: Path = Field(description="The study's directory: trials/, best.yaml, trials.csv, figures, study.db.")
    trials: int = Field(20, ge=1, description="Finished trials (complete or pruned) the study should hold; "
                        "a resumed study runs only the rest.")
    timeout: float | None = Field(None, gt=0, description="Minutes after which no new trial starts (a running one finishes).")
    storage: str | None = Field(None, description="SQLAlchemy URL of the study's database; null = sqlite OUTPUT_DIR/study.db.")
    study_name: str = Field("yelp-lora", min_length=1)
    seed: int | None = Field(None, **SEED_RANGE, description="The sampler's seed; null = the base config's train.seed.")
    prune_startup_trials: int = Field(
        3, ge=0, description="Trials run whole before the median pruner may stop one after an epoch."
    )


MAX_TEXTS_PER_REQUEST = 64
MAX_REQUEST_TEXT_CHARS = 20_000
# How prediction reads a review longer than the adapter's max_length: cut it as training did
# (truncate), or read all of it as overlapping windows and average their probabilities (chunk).
LongText = Literal["truncate", "chunk"]
LONG_TEXT_MODES: tuple[str, ...] = get_args(LongText)
# chunk: windows per review at most, so a review costs at most this many forward passes of
# max_length tokens. Windows overlap by half up to 4.5 windows' worth of tokens (1,143 at 256);
# a longer review gets its 8 windows spread evenly from start to end, overlapping less, and past
# 8 windows' worth (2,032 at 256) leaving gaps, when it is reported as truncated.
MAX_WINDOWS_PER_TEXT = 8
API_KEY_ENV = "YELP_LORA_API_KEY"


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeSettings(_Settings):
    """Where the HTTP service listens, what it lets in, and how much work it holds."""

    host: str = Field("127.0.0.1", description="Bind address (loopback only by default).")
    port: int = Field(8000, ge=0, le=65535)
    max_texts: int = Field(MAX_TEXTS_PER_REQUEST, ge=1, description="Texts per request.")
    max_chars: int = Field(MAX_REQUEST_TEXT_CHARS, ge=1, description="Characters per text.")
    max_batch: int = Field(
        MAX_TEXTS_PER_REQUEST, ge=1, description="Texts per model batch; a full request always fits (when not given: "
        "64, or max_texts where that is more).",
    )
    # No waiting for company: batches form while the model is busy (docs/deploy.md).
    max_wait_ms: float = Field(0.0, ge=0.0, description="How long a batch waits for more requests.")
    max_queue: int | None = Field(
        None, ge=1, description="Texts that may wait for the model; beyond it, 503 at once. null: 4 batches' worth."
    )
    request_timeout: float = Field(30.0, gt=0, description="Seconds a request may wait to be started; then 504.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds a client has to send a request's headers and body; then 408.")
    keep_alive: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    http: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="HTTP/1.1 parser: httptools (C; auto where installed) or h11 (pure Python)."
    )
    limit_concurrency: int = Field(256, ge=1, description="Open connections and tasks at once; beyond it, 503.")
    allowed_hosts: tuple[str, ...] | None = Field(
        None, description="Host header values accepted (DNS rebinding); null: the loopback names when bound to loopback, "
        "any host otherwise.",
    )
    api_key: str | None = Field(None, description=f"Key required on /v1/*; default ${API_KEY_ENV}.")
    api_key_file: Path | None = Field(None, description="A file holding the key (kept off the command line).")
    expect_sha256: str | None = Field(None, description="Refuse to start unless the loaded adapter has this sha256.")

    @model_validator(mode="before")
    @classmethod
    def _key_from_file_or_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("api_key_file") is not None:
            if data.get("api_key") is not None:
                raise ValueError("give --api-key or --api-key-file, not both")
            try:
                data["api_key"] = Path(data["api_key_file"]).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"--api-key-file {data['api_key_file']}: cannot read it ({err})") from None
            if not data["api_key"]:
                raise ValueError(f"--api-key-file {data['api_key_file']} holds no key (it is empty or blank); an empty "
                                 "key would turn authentication off")
        elif data.get("api_key") is None and API_KEY_ENV in os.environ:
            data["api_key"] = os.environ[API_KEY_ENV]
        return data

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """Host names as a Host header carries them, lower-cased (names are case-insensitive), without a port."""
        if names is None:
            return None
        if not names:
            raise ValueError("no host names given: every request would be refused")
        bare = []
        for name in names:
            address = name[1:-1] if name.startswith("[") and name.endswith("]") else name  # [::1] as ::1
            # One colon is a port (an IPv6 address has several); a bracket left over, a port after one.
            if not address or "/" in address or "[" in address or address.count(":") == 1:
                raise ValueError(f"{name!r} is not a host name: give names alone, without a scheme or a port "
                                 "(the port is not compared)")
            bare.append(address.lower())
        return tuple(dict.fromkeys(bare))

    @field_validator("expect_sha256")
    @classmethod
    def _a_sha256(cls, digest: str | None) -> str | None:
        # Checked now, not once the model has loaded and "mismatched".
        if digest is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ValueError("not a sha256 (64 hexadecimal digits), as `yelp-lora registry show` or sha256sum give it")
        return digest.lower() if digest else digest

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError(
                f"the API key is empty (from --api-key, --api-key-file or ${API_KEY_ENV}); an empty key would "
                "turn authentication off: give a key, or none at all"
            )
        return key

    @model_validator(mode="before")
    @classmethod
    def _batch_fits_a_request(cls, data: Any) -> Any:
        # Raising --max-texts alone raises the batch with it: a request must fit one batch.
        if isinstance(data, dict) and data.get("max_batch") is None and isinstance(data.get("max_texts"), int):
            data = {**data, "max_batch": max(MAX_TEXTS_PER_REQUEST, data["max_texts"])}
        return data

    @model_validator(mode="after")
    def _a_request_fits(self) -> "ServeSettings":
        if self.max_batch < self.max_texts:
            raise ValueError(f"--max-batch ({self.max_batch}) must be at least --max-texts ({self.max_texts})")
        if self.queue_limit < self.max_texts:
            raise ValueError(f"--max-queue ({self.queue_limit}) must be at least --max-texts ({self.max_texts})")
        return self

    @property
    def queue_limit(self) -> int:
        return self.max_queue or 4 * self.max_batch

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @property
    def hosts(self) -> tuple[str, ...] | None:
        """The Host header names accepted (without port), or None for any."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return tuple(dict.fromkeys((*LOOPBACK_HOSTS, self.host.lower()))) if self.loopback else None

    @property
    def max_body_bytes(self) -> int:
        # Every text at its character limit, each character sent as JSON's longest escape of one
        # (\uXXXX, 6 bytes: json.dumps and requests escape non-ASCII by default), plus framing.
        return self.max_texts * (self.max_chars * 6 + 16) + 1024


class BenchSettings(_Settings):
    """What `yelp-lora bench` measures, on which model and rows."""

    model: str = Field("minilm", description="minilm, bert-base (its shape, random weights) or a model directory.")
    adapter: str | None = Field(None, description="Adapter to predict with; default: the one the bench trains.")
    data: str = "auto"
    samples: int = Field(256, ge=1, description="Training rows: one pass of samples/batch_size steps.")
    val_samples: int = Field(200, ge=1)
    predict_samples: int = Field(1000, ge=1, description="test.csv rows to predict (all of it by default).")
    batch_size: int = Field(16, ge=1)
    predict_batch_size: int | None = Field(None, ge=1, description="null: each path's own default.")
    max_length: int = Field(
        256, ge=8, le=512, description="Tokens per review for the training paths; prediction reads the adapter's own."
    )
    clients: tuple[int, ...] = (1, 8, 32)
    requests: int | None = Field(
        None, ge=1, description="Requests per client level, one review each; null: each predicted review once, "
        "so the service reads the reviews the offline figure read.",
    )
    matmul_size: int = Field(2048, ge=1)
    rounds: int = Field(5, ge=1, description="The paths of each kind take turns: a share of the work per round.")
    seed: int = Field(42, **SEED_RANGE)
    service: bool = True
    keep_work: bool = Field(False, description="Keep the work directory (training outputs, logs, the adapter the "
                            "bench trained, a random bert-base) instead of removing it at the end.")
    skip: tuple[str, ...] = Field((), description="Path ids to leave out, e.g. pipeline.")
    micro_batch_sizes: tuple[int, ...] = Field(
        (), description="A micro-batch sweep: our bf16 training path once more at each of these sizes "
        "(path ours-mbN), beside the auto one, on the same rows in the same rounds.",
    )
    pad_multiples: tuple[int, ...] = Field(
        (), description="A padding sweep: our bf16 training path once more with each batch's length padded up "
        "to each of these multiples (path ours-padN).",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in ("minilm", "bert-base") and not Path(model).is_dir():
            raise ValueError("expected minilm, bert-base or a model directory")
        return model

    @model_validator(mode="after")
    def _sweeps_fit_the_batch_and_positions(self) -> "BenchSettings":
        # Named as the flags that set them: bench is their only source.
        for size in self.micro_batch_sizes:
            if size < 1:
                raise ValueError(f"--micro-batch-size {size}: must be at least 1")
            if self.batch_size % size:
                raise ValueError(f"--micro-batch-size {size}: must divide the training batch of {self.batch_size} "
                                 "(each sweep point runs the same steps as the others)")
        for multiple in self.pad_multiples:
            if multiple < 1:
                raise ValueError(f"--pad-multiple {multiple}: must be at least 1")
            check_padded_length(self.max_length, multiple, "--pad-multiple")
        return self


# `bench --quick`: tiny sizes that check the bench runs; its figures mean little.
QUICK_BENCH = dict(samples=16, val_samples=8, predict_samples=16, requests=4, matmul_size=512, rounds=2)
