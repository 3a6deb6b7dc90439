"""The one typed config of a run, loaded from a YAML preset and overridden from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class ConfigError(ValueError):
    """A config file or override that cannot make a valid run config."""


class _Section(BaseModel):
    # A misspelt key in a YAML preset must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
        description="How training draws dropout masks. fast = 16-bit draws (yelp_lora.dropout), measured ~3x cheaper "
        "than torch's per-element ones on CPU; auto = fast on CPU, torch on CUDA (its fused kernels).",
    )


class LoraSettings(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = ["query", "value"]
    bias: Literal["none", "all", "lora_only"] = "none"


class DataConfig(_Section):
    source: str = Field(
        "auto",
        description="Hub data set id, a directory with train/test files, or one file. "
        "'auto': $YELP_LORA_DATA, else ../shared/data/yelp_review_full, else the hub's yelp_review_full.",
    )
    train_samples: int | None = Field(None, ge=1, description="Seeded stratified subsample of train; null = all.")
    val_samples: int = Field(400, ge=1, description="Validation rows carved from the train split, never from test.")
    skip_bad_rows: bool = False


class TrainConfig(_Section):
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: float = Field(3, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 = run all epochs.")
    train_batch_size: int | None = Field(
        None, ge=1, description="null = auto: 16 on CPU, 64 on CUDA (16 leaves a large GPU launch-bound)."
    )
    eval_batch_size: int | None = Field(None, ge=1, description="null = auto: 16 on CPU, 128 on CUDA.")
    weight_decay: float = Field(0.01, ge=0.0)
    seed: int = 42
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
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the CPU or GPU supports it, else fp32."
    )
    logging_steps: int = Field(10, ge=1)
    save_steps: int | None = Field(None, ge=1, description="Also checkpoint every N steps (for --resume).")


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    lora: LoraSettings = LoraSettings()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML preset (or the defaults) and apply dotted overrides such as {"train.seed": 7}."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        where = f"config {path}" if path else "config"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in err.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
