"""A registry version as a full transformers model directory (LoRA merged), for plain `pipeline(...)` users."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from yelp_lora.artifacts import read_adapter_meta
from yelp_lora.errors import RegistryError
from yelp_lora.modeling.base import load_adapter
from yelp_lora.registry.card import model_card
from yelp_lora.registry.store import CARD_FILE, Registry
from yelp_lora.util.atomic import atomic_dir, check_output_dir

log = logging.getLogger(__name__)


def export_merged(registry: Registry, ref: str, target: str | Path) -> Path:
    """A full transformers model directory (LoRA merged, head, id2label, tokenizer) for `pipeline(...)`."""
    target = Path(target)
    marker = "yelp_lora_export.json"
    check_output_dir(target, "--merged")
    if target.exists() and any(target.iterdir()) and not (target / marker).is_file():
        raise RegistryError(f"{target} exists and is not an earlier yelp-lora export; choose an empty or new directory")
    adapter_dir, manifest = registry.open(ref)
    meta = read_adapter_meta(adapter_dir)
    model, tokenizer = load_adapter(adapter_dir, merge=True)
    # pipeline(..., truncation=True) then cuts where the adapter was trained to cut.
    tokenizer.model_max_length = manifest.max_length
    with atomic_dir(target) as staging:
        model.save_pretrained(str(staging))  # safetensors
        tokenizer.save_pretrained(str(staging))
        dumped = manifest.model_dump(mode="json")
        # temperature: pipeline(...) gives softmax(logits); yelp-lora's probabilities are softmax(logits / temperature).
        keys = ("version", "name", "adapter_sha256", "base_model", "label_map", "max_length", "temperature")
        # How a longer review is cut: pipeline(truncation=True) keeps its head alone (docs/deploy.md reads head+tail).
        info = {**{k: dumped[k] for k in keys}, "truncation": meta.truncation, "kept_head": meta.kept_head}
        (staging / marker).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(
            model_card(manifest).replace("library_name: peft", "library_name: transformers"), encoding="utf-8"
        )
    if meta.truncation != "head":
        log.warning(
            "%s reads a review longer than %d tokens by its first %d and last %d tokens; pipeline(truncation=True) "
            "keeps the first %d alone, so for such reviews it answers otherwise: yelp_lora_export.json records the "
            "cut (docs/deploy.md shows it in plain transformers)", manifest.version, meta.max_length, meta.kept_head,
            meta.max_length - meta.kept_head, meta.max_length,
        )
    return target
