"""The run directory and the adapter inside it: their layout, and the typed records written there.

    RUN_DIR/
      adapter/            the best epoch's adapter: PEFT's files, config.json, tokenizer, yelp_lora.json,
                          int8_calibration.safetensors
      run.json            RunRecord: config, rows, history, validation, speed, environment
      compare.json        CompareResult, when `compare --json` / `report --compare-json` wrote it there
      report/             `report`'s HTML and Markdown, by default
      checkpoints/        only while a checkpointed run is unfinished (for --resume)

Every record that crosses a stage is a pydantic model here, read and written by the functions
below; no stage reads another's JSON by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from yelp_lora.config import LABEL_NAMES, RunConfig, Truncation, kept_head
from yelp_lora.errors import DataError, ModelError
from yelp_lora.util.atomic import atomic_dir, atomic_write_text
from yelp_lora.util.hashing import file_sha256

ADAPTER_DIRNAME = "adapter"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_META_FILE = "yelp_lora.json"
# Per-channel input ranges of the matmuls the int8 export quantizes (modeling.calibration).
INT8_CALIBRATION_FILE = "int8_calibration.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
RUN_FILE = "run.json"
COMPARE_FILE = "compare.json"
REPORT_DIRNAME = "report"  # `report`'s default output, in the run directory
# A registry version's record (registry.manifest); named here so that train can refuse to write into one.
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIRNAME = "checkpoints"
# The config a checkpointed run started with, so --resume refuses to continue a different run.
RESUME_CONFIG_FILE = "run_config.json"
# ... and the fingerprints of its training and validation rows, so --resume refuses changed data.
RESUME_DATA_FILE = "run_data.json"
STAGING_PREFIX = ".staging-"


class Record(BaseModel):
    """A JSON record: fields in file order; keys a newer version added are ignored when read."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, protected_namespaces=())

    def to_json(self) -> str:
        # json.dumps rather than pydantic's writer: the same bytes as the plain dicts written before.
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2) + "\n"


def read_record(model: type[Record], path: Path, error: type[Exception] = DataError):
    """A record from its JSON file, or `error` naming the file and what is wrong with it."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise error(f"{path} not found") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise error(f"{path} is not a valid {model.__name__} ({where}: {first['msg']})") from None


def write_record(path: Path, record: Record) -> None:
    atomic_write_text(path, record.to_json())


# ---------------------------------------------------------------- the adapter


class AdapterMeta(Record):
    """What a consumer of the adapter needs beyond PEFT's own files (yelp_lora.json)."""

    base_model: str
    base_model_path: str
    data_source: str | None = None
    head_seed: int = 42
    max_length: int = Field(256, ge=8, le=512, description="BERT reads at most 512 positions")
    label_names: list[str] = Field(default_factory=lambda: list(LABEL_NAMES))
    truncation: Truncation = "head"
    head_tokens: int | None = Field(None, ge=1, description="ids kept from the start of a cut review (head+tail)")
    temperature: float = Field(1.0, gt=0, description="divide the logits by it before the softmax (fitted on validation)")

    @model_validator(mode="after")
    def _head_inside_max_length(self) -> "AdapterMeta":
        if self.kept_head >= self.max_length:  # a hand edit: the tail would be empty or negative
            raise ValueError(f"head_tokens {self.head_tokens} must be below max_length {self.max_length}")
        return self

    @property
    def kept_head(self) -> int:
        return kept_head(self.truncation, self.head_tokens, self.max_length)


def resolve_adapter_dir(path: str | Path) -> Path:
    """Accept a run directory (holding adapter/) or an adapter directory itself."""
    path = Path(path)
    if (path / ADAPTER_DIRNAME / ADAPTER_CONFIG_FILE).is_file():
        refuse_unfinished_run(path)
        return path / ADAPTER_DIRNAME
    if (path / ADAPTER_CONFIG_FILE).is_file():
        return path
    if not path.exists():
        raise ModelError(f"adapter not found: {path}")
    raise ModelError(f"{path} holds no adapter (no {ADAPTER_CONFIG_FILE} in it or in {path / ADAPTER_DIRNAME})")


class RunAdapterRef(Record):
    """The part of run.json that says which adapter weights are the run's."""

    adapter_sha256: str | None = None


def refuse_unfinished_run(run_dir: Path) -> None:
    """A run directory's adapter is written at each better epoch, and run.json once the run is over:
    until then (or where the run was stopped) the adapter is an epoch's, not a finished run's, and
    where `train --overwrite` was stopped, run.json is the old run's. Given the adapter directory
    itself, the caller takes it as it is."""
    if (run_dir / MANIFEST_FILE).is_file():  # a registry version, verified against its own manifest
        return
    adapter_dir = run_dir / ADAPTER_DIRNAME
    use_anyway = f"pass {adapter_dir} to use that adapter as it is"
    if not (run_dir / RUN_FILE).is_file():
        raise ModelError(
            f"{run_dir} holds no finished run (no {RUN_FILE}): its training is still going or was stopped, and "
            f"{adapter_dir} is the best epoch's so far. Finish it (`yelp-lora train --resume` continues a "
            f"checkpointed run), or {use_anyway}"
        )
    recorded = read_record(RunAdapterRef, run_dir / RUN_FILE, ModelError).adapter_sha256
    weights = adapter_dir / ADAPTER_WEIGHTS
    if recorded is not None and weights.is_file() and recorded != file_sha256(weights):
        raise ModelError(
            f"{run_dir / RUN_FILE} records other adapter weights (sha256 {recorded[:12]}…) than {weights}: they "
            f"changed after the run (a `train --overwrite` into {run_dir} still going or stopped, or a damaged "
            f"copy). Train it again, or {use_anyway}"
        )


def adapter_base(adapter_dir: Path) -> str:
    """The base model named in PEFT's adapter_config.json."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    return config["base_model_name_or_path"]


def read_adapter_meta(adapter_dir: Path) -> AdapterMeta:
    """yelp-lora's notes on the adapter; for a foreign PEFT adapter, what its config implies."""
    meta_file = adapter_dir / ADAPTER_META_FILE
    if meta_file.is_file():
        return read_record(AdapterMeta, meta_file, ModelError)
    base = adapter_base(adapter_dir)
    return AdapterMeta(base_model=base, base_model_path=base)


def tokenizer_source(adapter_dir: Path) -> str:
    """Where the adapter's tokenizer is: saved beside it, or its base model's."""
    return str(adapter_dir) if (adapter_dir / TOKENIZER_CONFIG_FILE).is_file() else adapter_base(adapter_dir)


def save_adapter(peft_model, tokenizer, target: Path, meta: AdapterMeta) -> None:
    """The adapter in standard PEFT format plus config.json (id2label) and the tokenizer, atomically.

    PEFT keeps target_modules as a set and writes it in the set's order, which follows Python's
    per-process string hashing: the same run would write adapter_config.json differently each time.
    It is written sorted, so the same command gives the same bytes.
    """
    configs = list(peft_model.peft_config.values())
    kept = [config.target_modules for config in configs]
    for config in configs:
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
    try:
        _save_adapter_files(peft_model, tokenizer, target, meta)
    finally:
        for config, modules in zip(configs, kept):
            config.target_modules = modules


def _save_adapter_files(peft_model, tokenizer, target: Path, meta: AdapterMeta) -> None:
    with atomic_dir(target) as staging:
        peft_model.save_pretrained(str(staging))
        peft_model.get_base_model().config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / ADAPTER_META_FILE).write_text(meta.to_json(), encoding="utf-8")


# ---------------------------------------------------------------- run.json


class SplitSummary(Record):
    """Which rows a split holds: enough to tell two runs saw the same ones (the fingerprint)."""

    name: str
    source: str
    rows: int
    label_counts: list[int]
    fingerprint: str
    skipped_bad_rows: int = 0
    skipped_examples: list[str] = Field(default_factory=list)
    duplicates_dropped: int = 0


class SourceRows(SplitSummary):
    """One training source's part of the training rows: what was drawn from how many."""

    file_rows: int
    overlap_dropped: int = Field(
        0, description="its rows left out before the draw: their text was already a validation or training row"
    )


class Resolved(Record):
    """What the config's 'auto' settings became on the machine that ran it."""

    data_source: str
    base_model_path: str
    device: str
    bf16: bool
    attention: str
    micro_batch_size: int
    gradient_accumulation_steps: int
    pad_to_multiple_of: int = 1  # runs recorded before this field padded to the longest text


class RunData(Record):
    train_file_rows: int
    skipped_bad_rows: int
    skipped_examples: list[str]
    duplicates_dropped: int
    train: SplitSummary
    validation: SplitSummary
    sources: list[SourceRows] = Field(default_factory=list)


class Parameters(Record):
    trainable: int
    total: int
    line: str


class Hardware(Record):
    platform: str
    python: str
    cpu: str
    cpu_count: int | None
    torch_threads: int
    cuda: bool
    gpu: str | None = None
    gpu_count: int | None = None

    @model_serializer(mode="wrap")
    def _gpu_only_on_gpus(self, handler):
        return {key: value for key, value in handler(self).items() if key not in ("gpu", "gpu_count") or value is not None}


class Environment(Record):
    libraries: dict[str, str]
    git_commit: str | None
    hardware: Hardware


class StepLog(Record):
    step: int | None = None
    epoch: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None


class EpochScore(Record):
    epoch: float | None = None
    step: int | None = None
    accuracy: float
    macro_f1: float
    loss: float | None = None
    # With train.calibrate: the temperature fitted on this epoch's validation logits, and the
    # expected calibration error before and after dividing by it.
    temperature: float | None = None
    ece: float | None = None
    ece_calibrated: float | None = None

    @model_serializer(mode="wrap")
    def _calibration_when_fitted(self, handler):
        return {key: value for key, value in handler(self).items()
                if key not in ("temperature", "ece", "ece_calibrated") or value is not None}


class RunRecord(Record):
    """run.json: everything about one training run."""

    config: RunConfig
    resolved: Resolved
    data: RunData
    parameters: Parameters
    environment: Environment
    history: list[StepLog]
    validation: list[EpochScore]
    best_epoch: EpochScore | None
    train_runtime: float
    train_samples_per_second: float | None
    train_steps_per_second: float | None
    # Real (unpadded) tokens: what the model had to read, whatever the padding.
    train_tokens_per_second: float | None
    mean_tokens_per_sample: float
    global_step: int
    world_size: int
    adapter_dir: str = ADAPTER_DIRNAME
    # The kept adapter's weights, so a record and an adapter that are not one run's can be told apart;
    # absent from runs recorded before 2026-12-08, and where no validation ran (no adapter kept).
    adapter_sha256: str | None = None


def run_dir_of(path: str | Path) -> Path:
    """The run directory, given it, the adapter directory inside it, or its run.json."""
    path = Path(path)
    if path.name == RUN_FILE and path.is_file():
        return path.parent
    return path.parent if path.name == ADAPTER_DIRNAME and not (path / RUN_FILE).is_file() else path


def read_run(path: str | Path) -> tuple[Path, RunRecord]:
    """(run directory, its run.json) from a run directory or the adapter directory inside one."""
    run_dir = run_dir_of(path)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise DataError(
            f"{run_file} not found: this needs the run directory written by `yelp-lora train` "
            "(it records which rows the adapter was trained on)"
        )
    return run_dir, read_record(RunRecord, run_file)


def finished_run(run_dir: Path, config: RunConfig) -> RunRecord | None:
    """The record of an earlier, complete run of exactly this config in run_dir, if there is one."""
    try:
        record = RunRecord.model_validate_json((run_dir / RUN_FILE).read_bytes())
    except (OSError, ValidationError):
        return None
    return record if record.config == config else None


# ---------------------------------------------------------------- scores and compare.json


class Headline(Record):
    """Accuracy and macro-F1 (the primary metric)."""

    accuracy: float
    macro_f1: float


class ClassScore(Record):
    precision: float
    recall: float
    f1: float
    support: int


class Detailed(Headline):
    """Headline scores plus per-class scores and the confusion matrix (rows: true, columns: predicted)."""

    n: int
    per_class: dict[str, ClassScore]
    confusion_matrix: list[list[int]]


class Ordinal(Record):
    """How wrong in stars."""

    mae_stars: float
    within_one_star: float
    qwk: float | None


class McNemar(Record):
    only_first_right: int
    only_second_right: int
    statistic: float
    p_value: float
    method: str


class LabelMove(Record):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    count: int


class ClassicalFit(Record):
    model: str
    run: str
    train_rows: int
    train_fingerprint: str
    C: float
    validation: dict[str, Headline]


class TemperatureScaling(Record):
    """The adapter's softmax temperature (fitted on validation, from yelp_lora.json) and the calibration
    error of its test probabilities without it and with it. Every other adapter score in a comparison
    uses the scaled probabilities; the labels, hence accuracy and F1, are the same either way."""

    temperature: float
    ece_raw: float = Field(description="expected calibration error of softmax(logits)")
    ece_calibrated: float = Field(description="expected calibration error of softmax(logits / temperature)")


class LengthGroup(Record):
    """Some of a comparison's test reviews, and each model's headline scores on them alone."""

    n: int
    scores: dict[str, Headline] = Field(default_factory=dict, description="by model; empty when n is 0")


class LongReviews(Record):
    """The test reviews longer than the adapter's max_length (which its input cut, as `truncation`
    says) scored apart from the rest."""

    max_length: int
    truncation: str
    long: LengthGroup
    short: LengthGroup


class CompareResult(Record):
    """The untuned baseline against the adapter (and optionally the classical baseline) on one test sample."""

    n: int
    seed: int
    adapter: str
    data: SplitSummary
    baseline: Headline
    lora: Headline
    adapter_sha256: str | None = None  # the weights scored; absent from files written before 2026-12-08
    classical: Headline | None = None
    gain: Headline
    label_shift: list[LabelMove]
    extreme_reversals: int
    ordinal: dict[str, Ordinal]
    ece: dict[str, float]
    mcnemar: dict[str, McNemar]
    detailed: dict[str, Detailed]
    classical_fit: ClassicalFit | None = None
    # Absent from files written before they were added.
    temperature_scaling: TemperatureScaling | None = None
    long_reviews: LongReviews | None = None

    @model_serializer(mode="wrap")
    def _optional_parts_when_present(self, handler) -> dict[str, Any]:
        optional = ("classical", "classical_fit", "temperature_scaling", "long_reviews", "adapter_sha256")
        return {key: value for key, value in handler(self).items() if key not in optional or value is not None}

    def scores(self) -> dict[str, Headline]:
        """Each scored model's headline, in the order they were scored."""
        return {name: getattr(self, name) for name in self.detailed}


def read_compare(run_dir: Path) -> CompareResult | None:
    """The run's compare.json, if one was written there."""
    file = run_dir / COMPARE_FILE
    return read_record(CompareResult, file) if file.is_file() else None
