"""A registry version's manifest.json: what was registered, from which run, with every file's sha256."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_serializer

from yelp_lora.artifacts import (
    AdapterMeta,
    CompareResult,
    EpochScore,
    Environment,
    Headline,
    Record,
    RunRecord,
)
from yelp_lora.config import LABEL_NAMES, RunConfig

MANIFEST_FORMAT = 1


class BaseModelRecord(Record):
    """The frozen base the adapter needs: its name, where it was found, and the hash of its weights."""

    id: str
    path: str
    sha256: str | None
    files: list[str]
    note: str | None = None

    @model_serializer(mode="wrap")
    def _note_only_when_unhashed(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if key != "note" or value is not None}


class SplitBrief(Record):
    rows: int | None = None
    label_counts: list[int] | None = None
    fingerprint: str | None = None


class ManifestData(Record):
    source: str | None
    train: SplitBrief
    validation: SplitBrief


class TestCompare(Record):
    n: int
    seed: int
    baseline: Headline
    lora: Headline
    gain: Headline
    extreme_reversals: int


class ManifestMetrics(Record):
    validation_best: EpochScore | None
    validation_per_epoch: list[EpochScore]
    train_runtime_s: float | None
    train_samples_per_second: float | None
    test_compare: TestCompare | None = None

    @model_serializer(mode="wrap")
    def _test_only_when_compared(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if key != "test_compare" or value is not None}


class Manifest(Record):
    format: int = MANIFEST_FORMAT
    version: str
    name: str | None
    created: str
    source_run: str
    adapter_sha256: str
    base_model: BaseModelRecord
    max_length: int
    label_map: dict[str, str]
    training_config: RunConfig | None
    data: ManifestData
    metrics: ManifestMetrics
    environment: Environment | None
    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _inside_the_version(cls, files: dict[str, str]) -> dict[str, str]:
        # A name that leaves the version's directory would have another version's file, or any file, hashed as its own.
        for name in files:
            if Path(name).is_absolute() or ".." in Path(name).parts or not name:
                raise ValueError(f"{name!r} is not a path inside the version's directory")
        return files

    # The adapter's softmax temperature (yelp_lora.json); null in manifests written before it was recorded.
    temperature: float | None = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_manifest(
    *, version: str, name: str | None, run_root: Path, run: RunRecord, compare: CompareResult | None, meta: AdapterMeta,
    base: BaseModelRecord, adapter_sha256: str, id2label: dict[str, str] | None,
) -> Manifest:
    """The manifest of a new version (its `files` are hashed once the version's directory is complete)."""
    metrics = ManifestMetrics(
        validation_best=run.best_epoch,
        validation_per_epoch=run.validation,
        train_runtime_s=run.train_runtime,
        train_samples_per_second=run.train_samples_per_second,
    )
    if compare:
        metrics.test_compare = TestCompare(
            n=compare.n, seed=compare.seed, baseline=compare.baseline, lora=compare.lora, gain=compare.gain,
            extreme_reversals=compare.extreme_reversals,
        )
    brief = lambda split: SplitBrief(rows=split.rows, label_counts=split.label_counts, fingerprint=split.fingerprint)  # noqa: E731
    return Manifest(
        version=version,
        name=name,
        created=_now(),
        source_run=str(run_root.resolve()),
        adapter_sha256=adapter_sha256,
        base_model=base,
        max_length=meta.max_length,
        label_map={str(k): v for k, v in (id2label or dict(enumerate(LABEL_NAMES))).items()},
        training_config=run.config,
        data=ManifestData(source=meta.data_source, train=brief(run.data.train), validation=brief(run.data.validation)),
        metrics=metrics,
        environment=run.environment,
        temperature=meta.temperature,
    )
