"""The Hugging Face style model card of a registry version, and its one-line listing."""

from __future__ import annotations

from yelp_lora.modeling.base import MINILM_ALIAS
from yelp_lora.registry.manifest import Manifest

HUB_IDS = {MINILM_ALIAS: "sentence-transformers/all-MiniLM-L6-v2"}  # for the card's base_model field


def model_card(manifest: Manifest) -> str:
    """A Hugging Face style model card (YAML front matter + sections) from a manifest."""
    base = manifest.base_model
    config = manifest.training_config
    lora, train = (config.lora, config.train) if config else (None, None)
    data, metrics = manifest.data, manifest.metrics
    best = metrics.validation_best
    test = metrics.test_compare
    labels = ", ".join(f"{k} = {v} ({int(k) + 1} star{'s' if k != '0' else ''})" for k, v in manifest.label_map.items())
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {HUB_IDS.get(base.id, base.id)}",
        "pipeline_tag: text-classification",
        "tags: [lora, sentiment-analysis, yelp, yelp-lora]",
        "language: [en]",
        "---",
        "",
        f"# yelp-lora sentiment adapter {manifest.version}" + (f" ({manifest.name})" if manifest.name else ""),
        "",
        f"A LoRA adapter (r={_field(lora, 'r')}, alpha={_field(lora, 'alpha')}, modules {_field(lora, 'target_modules')}) "
        f"with a 5-way classification head on the frozen base `{base.id}`. It reads the strength of sentiment in an English "
        "restaurant or business review and predicts its star rating.",
        "",
        f"- Adapter sha256: `{manifest.adapter_sha256}`",
        f"- Base model hash (config + safetensors): `{base.sha256}`",
        f"- Registered: {manifest.created} from `{manifest.source_run}`",
        f"- Labels: {labels}",
        f"- Max tokens per review: {manifest.max_length} (longer reviews are cut and flagged `truncated`)",
        *([f"- Softmax temperature: {manifest.temperature:.4g} (fitted on the validation rows; 1 = none): yelp-lora's "
           "probabilities are softmax(logits / temperature); a plain transformers load gives the raw logits"]
          if manifest.temperature is not None else []),
        "",
        "## Intended use",
        "",
        "Scoring the sentiment strength of English Yelp-style reviews (1-5 stars), e.g. to triage feedback or track "
        "satisfaction over time. Serve it with `yelp-lora serve --version "
        f"{manifest.version}` or query it with `yelp-lora predict --version {manifest.version} TEXT`.",
        "",
        "Out of scope: other languages, non-review text, decisions about individual people, and any use where a "
        "wrong star rating causes harm without human review.",
        "",
        "## Training data",
        "",
        f"Source: `{data.source}`. Train rows: {data.train.rows} (label counts "
        f"{data.train.label_counts}, fingerprint `{data.train.fingerprint}`); validation rows: "
        f"{data.validation.rows} carved from the train split (fingerprint `{data.validation.fingerprint}`). "
        "The test split was not used for training or selection.",
        "",
        "## Training procedure",
        "",
        f"Learning rate {_field(train, 'learning_rate')}, epochs {_field(train, 'epochs')}, "
        f"max steps {_field(train, 'max_steps')}, batch size {_field(train, 'train_batch_size')}, "
        f"seed {_field(train, 'seed')}; the adapter of the best validation "
        "macro-F1 epoch was kept.",
        "",
        "## Metrics",
        "",
        "| split | accuracy | macro-F1 |",
        "|---|---|---|",
        f"| validation (best epoch {_field(best, 'epoch')}) | {_fmt(_field(best, 'accuracy'))} | {_fmt(_field(best, 'macro_f1'))} |",
    ]
    if test:
        lines += [
            f"| test, untuned baseline (N={test.n}) | {_fmt(test.baseline.accuracy)} | {_fmt(test.baseline.macro_f1)} |",
            f"| test, this adapter (N={test.n}) | {_fmt(test.lora.accuracy)} | {_fmt(test.lora.macro_f1)} |",
        ]
    cut = (
        "judged on their first and last tokens only (head+tail truncation)"
        if config and config.model.truncation == "head+tail"
        else "judged on their beginning only"
    )
    lines += [
        "",
        "## Limitations",
        "",
        "Neighbouring star levels (2 vs 3, 4 vs 5) are often confused: sentiment strength is subjective and reviewers "
        f"are inconsistent. Sarcasm, mixed reviews and very short texts are hard. Reviews longer than the token limit are "
        f"{cut}, unless predicted with --long-text chunk. Trained on Yelp reviews, so it inherits their domain and biases.",
        "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _field(record, name: str):
    """A field of a record that may be absent (None), as None."""
    return None if record is None else getattr(record, name)


def format_version_line(manifest: Manifest, aliases: list[str]) -> str:
    best = _field(manifest.metrics.validation_best, "macro_f1")
    return (
        f"{manifest.version:<5} {manifest.created}  base {manifest.base_model.id:<12} val macro-F1 {_fmt(best)}  "
        f"sha256 {manifest.adapter_sha256[:12]}"
        + (f"  name {manifest.name}" if manifest.name else "")
        + (f"  [{', '.join(aliases)}]" if aliases else "")
    )
