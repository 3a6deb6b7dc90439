"""The training recipe: a RunConfig in, the best epoch's adapter and run.json out, through transformers' Trainer.

Validation every epoch, model selection by macro-F1, only the best adapter kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from yelp_lora.artifacts import (
    ADAPTER_DIRNAME,
    ADAPTER_WEIGHTS,
    CHECKPOINT_DIRNAME,
    COMPARE_FILE,
    INT8_CALIBRATION_FILE,
    MANIFEST_FILE,
    REPORT_DIRNAME,
    RESUME_CONFIG_FILE,
    RESUME_DATA_FILE,
    RUN_FILE,
    STAGING_PREFIX,
    AdapterMeta,
    EpochScore,
    Parameters,
    Resolved,
    RunData,
    RunRecord,
    StepLog,
    read_run,
    write_record,
)
from yelp_lora.config import NUM_LABELS, RunConfig, TrainConfig, changed_fields
from yelp_lora.data.mixing import run_training_rows, training_rows
from yelp_lora.data.sources import resolve_source
from yelp_lora.data.tokenize import tokenize
from yelp_lora.errors import ConfigError, ModelError
from yelp_lora.metrics import calibration, fit_temperature, headline, predictions_of
from yelp_lora.modeling import dropout as dropout_stage
from yelp_lora.modeling.forward import softmax
from yelp_lora.modeling.base import build_classifier, load_adapter, load_tokenizer, resolve_model_path
from yelp_lora.modeling.calibration import CALIBRATION_ROWS, activation_ranges, save_activation_ranges
from yelp_lora.modeling.hardware import (
    AUTO_MICRO_BATCH, AUTO_TRAIN_BATCH, attention_implementation, attention_kernel, auto_pad_multiple, bf16_supported,
    pick_device,
)
from yelp_lora.modeling.lora import apply_lora, parameter_line
from yelp_lora.training.tracking import require as require_tracking, tracked
from yelp_lora.training.trainer import keep_best_callback, lora_trainer_class, save_every_epoch_callback, step_mean_loss
from yelp_lora.util.atomic import atomic_write_text, check_output_dir
from yelp_lora.util.hashing import file_sha256
from yelp_lora.util.provenance import environment


def interrupted_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints an interrupted run left in output_dir, oldest first (a finished run deletes them)."""
    return sorted((output_dir / CHECKPOINT_DIRNAME).glob("checkpoint-*"), key=lambda path: path.stat().st_mtime)


def _check_resume_config(config: RunConfig, checkpoints: Path, resume: bool, is_main: bool) -> None:
    """Record the config of a checkpointed run; on --resume, refuse a config that differs from it."""
    recorded = checkpoints / RESUME_CONFIG_FILE
    current = config.model_dump()
    if resume:
        if recorded.is_file():
            before = json.loads(recorded.read_text(encoding="utf-8"))
            # How often checkpoints are written changes nothing the run learns: a resume may change it.
            changed = [change for change in changed_fields(before, current) if not change.startswith("train.save_steps:")]
            if changed:
                raise ConfigError(f"--resume: the settings differ from the interrupted run's: {'; '.join(changed)}")
        if is_main:  # a kill mid-save leaves only a hidden staging directory behind
            for stale in checkpoints.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
    elif is_main:
        atomic_write_text(recorded, json.dumps(current, indent=2) + "\n")


def _check_resume_data(splits: dict, checkpoints: Path, resume: bool, is_main: bool) -> None:
    """Record the fingerprints of a checkpointed run's rows; on --resume, refuse rows that differ
    (the checkpoint's epochs learnt from the old ones, and run.json would record the new)."""
    recorded = checkpoints / RESUME_DATA_FILE
    current = {name: split.fingerprint() for name, split in splits.items()}
    if resume and recorded.is_file():
        before = json.loads(recorded.read_text(encoding="utf-8"))
        changed = [f"{name} rows {before.get(name, '?')[:12]}… -> {value[:12]}…" for name, value in current.items()
                   if before.get(name) != value]
        if changed:
            raise ConfigError(f"--resume: the data differ from the interrupted run's ({'; '.join(changed)}, "
                              f"fingerprints): restore it, or delete {checkpoints} to start over")
    elif not resume and is_main:
        atomic_write_text(recorded, json.dumps(current, indent=2) + "\n")


def step_batches(train: TrainConfig, device: torch.device) -> tuple[int, int]:
    """(rows per forward pass, forward passes per optimizer step) for this config on this device."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    batch = train.train_batch_size or AUTO_TRAIN_BATCH[kind][0]
    if not train.group_by_length or train.pad_to_max_length:
        return batch, 1  # nothing to sort: one random batch per step, as the usual way runs it
    if train.micro_batch_size is None:
        micro = math.gcd(batch, AUTO_MICRO_BATCH[kind])
    elif batch % train.micro_batch_size:
        raise ConfigError(
            f"train.micro_batch_size {train.micro_batch_size} must divide the training batch size {batch} "
            f"(train.train_batch_size{'' if train.train_batch_size else ', auto on ' + kind})"
        )
    else:
        micro = train.micro_batch_size
    return micro, batch // micro


def build_training_model(config: RunConfig, device: torch.device):
    """The untuned classifier wrapped in LoRA, set up to train with the config's attention and dropout kernels."""
    attention = attention_implementation(config.model.attention, device)
    fast = config.model.dropout_kernel == "fast" or (config.model.dropout_kernel == "auto" and device.type != "cuda")
    if fast and attention == "eager":
        dropout_stage.register_attention()
        attention = dropout_stage.ATTENTION
    classifier = build_classifier(
        config.model.name_or_path, config.train.seed, attention=attention,
        attention_dropout=config.model.attention_dropout,
    )
    model = apply_lora(classifier, config.lora)
    if fast:
        dropout_stage.use_fast_dropout(model)
    return model


def pad_multiple(train: TrainConfig, device: torch.device) -> int:
    """What each batch's length is padded up to a multiple of: the config's, or the device's auto."""
    return train.pad_to_multiple_of or auto_pad_multiple(device)


def padding_collator(tokenizer, train: TrainConfig, device: torch.device):
    """Pads each batch up to a multiple of `pad_multiple` (1: to its longest text)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(train, device))


def training_arguments(config: RunConfig, output_dir: Path, device: torch.device, resume_possible: bool, **overrides):
    """The Trainer's arguments for this config on this device; `overrides` replace any of them (the bench's short runs)."""
    from transformers import TrainingArguments

    train = config.train
    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and bf16_supported(device))
    cuda = device.type == "cuda"
    auto_eval_batch = AUTO_TRAIN_BATCH["cuda" if cuda else "cpu"][1]
    micro_batch, accumulation = step_batches(train, device)
    arguments = dict(
        output_dir=str(output_dir / CHECKPOINT_DIRNAME),
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=train.eval_batch_size or auto_eval_batch,
        weight_decay=train.weight_decay,
        seed=train.seed,
        data_seed=train.seed,
        bf16=use_bf16,
        use_cpu=not cuda,
        tf32=True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        eval_strategy="epoch",
        save_strategy="steps" if train.save_steps else ("epoch" if resume_possible else "no"),
        save_steps=train.save_steps or 500,
        save_total_limit=1,
        logging_strategy="steps",
        logging_steps=train.logging_steps,
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        # Under torchrun/accelerate on CPUs: gloo (NCCL needs GPUs). Single-process runs name no backend.
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        # The classifier's loss is already a per-example mean; left on, Trainer scales it by the
        # number of processes (meant for token-summed LM losses), doubling loss and gradients under DDP.
        average_tokens_across_devices=False,
        # Every trainable weight (LoRA's and the head's) gets a gradient each step: DDP need not
        # search the graph for unused ones (and warn that it found none).
        ddp_find_unused_parameters=False,
        # On CUDA, tokenised batches are collated by workers into pinned memory while the GPU works.
        dataloader_pin_memory=cuda,
        dataloader_num_workers=2 if cuda else 0,
        report_to=[] if train.report_to == "none" else [train.report_to],
        disable_tqdm=not sys.stderr.isatty(),
    )
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def _epoch_history(log_history: list[dict]) -> tuple[list[StepLog], list[EpochScore]]:
    steps, epochs = [], []
    for entry in log_history:
        if "loss" in entry:
            steps.append(StepLog(**{k: entry.get(k) for k in ("step", "epoch", "loss", "grad_norm", "learning_rate")}))
        elif "eval_macro_f1" in entry:
            epochs.append(EpochScore(
                epoch=entry.get("epoch"), step=entry.get("step"), accuracy=entry["eval_accuracy"],
                macro_f1=entry["eval_macro_f1"], loss=entry.get("eval_loss"), temperature=entry.get("eval_temperature"),
                ece=entry.get("eval_ece"), ece_calibrated=entry.get("eval_ece_calibrated"),
            ))
    return steps, epochs


def validation_metrics(calibrate: bool):
    """Trainer's compute_metrics: accuracy and macro-F1 and, when calibrating, the temperature fitted
    on these logits with the calibration error before and after it."""

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        scores = headline(labels, predictions_of(logits))
        if calibrate:
            temperature = fit_temperature(logits, labels)
            scores.update(
                temperature=temperature,
                ece=calibration(labels, softmax(logits))["ece"],
                ece_calibrated=calibration(labels, softmax(logits, temperature))["ece"],
            )
        return scores

    return compute


def class_weights(labels: list[int]) -> torch.Tensor:
    """Inverse label frequency among the training rows, scaled so the weights average 1 per row; a label
    absent from them gets 0 (no row is weighted by it; its share of label smoothing is dropped)."""
    counts = np.bincount(labels, minlength=NUM_LABELS).astype(np.float64)
    present = int((counts > 0).sum())
    weights = np.where(counts > 0, len(labels) / (present * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def refuse_registry_version(output_dir: Path) -> None:
    if (output_dir / MANIFEST_FILE).is_file():
        raise ConfigError(f"{output_dir} is a registry version (it holds {MANIFEST_FILE}), and a registered version "
                          "never changes: write into another --output-dir")


# A finished run's scores of its adapter, removed by `train --overwrite` as training starts; the adapter and
# run.json are replaced as the new run writes them (atomically: a failed save leaves the old ones whole).
SCORES_OF_A_RUN = (COMPARE_FILE, REPORT_DIRNAME)


def _remove_scores(output_dir: Path) -> None:
    for name in SCORES_OF_A_RUN:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def train(
    config: RunConfig, output_dir: str | Path, *, resume: bool = False, overwrite: bool = False, callbacks: list | None = None,
) -> RunRecord | None:
    """Run one training job; returns the run record also written to OUTPUT_DIR/run.json (None on ranks > 0).

    `overwrite` replaces a finished run in OUTPUT_DIR (else refused); `callbacks` are further
    TrainerCallbacks (tune's pruning); they see each epoch's validation metrics.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, "--output-dir")
    refuse_registry_version(output_dir)
    replacing = (output_dir / RUN_FILE).is_file() and not resume
    if replacing and not overwrite:
        raise ConfigError(
            f"{output_dir} holds a finished run ({RUN_FILE}): pass --overwrite to replace it, or choose another "
            "--output-dir"
        )
    checkpoints = output_dir / CHECKPOINT_DIRNAME
    left = interrupted_checkpoints(output_dir)
    if resume and not left:
        raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoints}")
    if left and not resume:  # starting over would delete an interrupted run's progress
        raise ConfigError(
            f"{output_dir} holds an interrupted run's {left[-1].name}: pass --resume to continue it, "
            f"or delete {checkpoints} to start over"
        )
    checkpointing = bool(config.train.save_steps) or resume
    is_main = int(os.environ.get("RANK", "0")) == 0
    if checkpointing:
        _check_resume_config(config, checkpoints, resume, is_main)
    device = pick_device()
    require_tracking(config.train)  # a tracking integration not installed fails first
    args = training_arguments(config, output_dir, device, resume_possible=checkpointing)  # bad settings fail here
    # The model before the data: a model mistake (a misspelt LoRA target, no tokenizer) fails in seconds.
    base_path = resolve_model_path(config.model.name_or_path)
    tokenizer = load_tokenizer(config.model.name_or_path)
    model = build_training_model(config, device)  # seeded itself: what ran before does not change it
    line = parameter_line(model)
    print(line, flush=True)
    trainable, total = model.get_nb_trainable_parameters()

    rows = training_rows(config.data, config.train.seed)
    train_split, val_split, full_train = rows.train, rows.validation, rows.primary
    if checkpointing:
        _check_resume_data({"train": train_split, "validation": val_split}, checkpoints, resume, is_main)
    source = resolve_source(config.data.source)
    pad, head = config.train.pad_to_max_length, config.model.kept_head
    train_set = tokenize(train_split, tokenizer, config.model.max_length, head, pad)
    val_set = tokenize(val_split, tokenizer, config.model.max_length, head, pad)

    meta = AdapterMeta(
        base_model=config.model.name_or_path, base_model_path=base_path, data_source=source,
        head_seed=config.train.seed, max_length=config.model.max_length, truncation=config.model.truncation,
        head_tokens=config.model.kept_head if config.model.truncation != "head" else None,
    )
    # With disable_tqdm (output not a terminal) the Trainer prints plain log lines instead of bars.
    callbacks = [keep_best_callback(output_dir, tokenizer, meta), *(callbacks or [])]
    if config.train.save_steps:
        callbacks.append(save_every_epoch_callback())
    train_config = config.train
    weights = class_weights(train_split.labels) if train_config.class_weights == "auto" else None
    with tracked(config, output_dir) as log_final:
        trainer = lora_trainer_class()(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=val_set,
            processing_class=tokenizer,
            data_collator=padding_collator(tokenizer, train_config, device),
            compute_metrics=validation_metrics(train_config.calibrate),
            compute_loss_func=step_mean_loss(weights, train_config.label_smoothing, train_config.ordinal_weight),
            loraplus_lr_ratio=train_config.loraplus_lr_ratio,
            callbacks=callbacks,
        )
        if replacing and trainer.is_world_process_zero():  # everything checked: no score outlives its adapter
            _remove_scores(output_dir)
        started = time.time()
        result = trainer.train(resume_from_checkpoint=True if resume else None)
        wall = time.time() - started
        if not trainer.is_world_process_zero():
            return None
        steps, epochs = _epoch_history(trainer.state.log_history)
        samples_per_second = result.metrics.get("train_samples_per_second")
        mean_tokens = float(np.mean(train_set["length"]))
        adapter_dir = output_dir / ADAPTER_DIRNAME
        kept = adapter_dir / ADAPTER_WEIGHTS  # absent when no validation ran, so no adapter was kept
        record = RunRecord(
            config=config,
            resolved=Resolved(
                data_source=source, base_model_path=base_path, device=str(device), bf16=args.bf16,
                attention=attention_kernel(model.get_base_model().config),
                micro_batch_size=args.per_device_train_batch_size,
                pad_to_multiple_of=pad_multiple(train_config, device),
                gradient_accumulation_steps=args.gradient_accumulation_steps,
            ),
            data=RunData(
                train_file_rows=len(full_train),
                skipped_bad_rows=len(full_train.skipped),
                skipped_examples=full_train.skipped[:10],
                duplicates_dropped=full_train.duplicates_dropped,
                train=train_split.summary(),
                validation=val_split.summary(),
                sources=rows.sources,
            ),
            parameters=Parameters(trainable=trainable, total=total, line=line),
            environment=environment(),
            history=steps,
            validation=epochs,
            best_epoch=max(epochs, key=lambda e: e.macro_f1) if epochs else None,
            train_runtime=result.metrics.get("train_runtime", wall),
            train_samples_per_second=samples_per_second,
            train_steps_per_second=result.metrics.get("train_steps_per_second"),
            train_tokens_per_second=mean_tokens * samples_per_second,
            mean_tokens_per_sample=mean_tokens,
            global_step=result.global_step,
            world_size=args.world_size,
            adapter_sha256=file_sha256(kept) if kept.is_file() else None,
        )
        write_record(output_dir / RUN_FILE, record)
        if kept.is_file():
            save_int8_calibration(adapter_dir, train_split, config)
        shutil.rmtree(checkpoints, ignore_errors=True)  # only the best adapter is kept
        best = record.best_epoch
        log_final({"best_macro_f1": best.macro_f1 if best else None, "best_accuracy": best.accuracy if best else None})
    return record


def save_int8_calibration(adapter_dir: Path, rows, config: RunConfig) -> None:
    """Save the kept adapter's activation ranges for int8 (modeling.calibration), observed on a
    seeded sample of its training rows, cut as training cut them."""
    model, tokenizer = load_adapter(adapter_dir, merge=True)
    picked = sorted(np.random.default_rng(config.train.seed).permutation(len(rows))[:CALIBRATION_ROWS])
    ranges = activation_ranges(model, tokenizer, [rows.texts[i] for i in picked],
                               max_length=config.model.max_length, head=config.model.kept_head)
    save_activation_ranges(adapter_dir, ranges)


def calibrate_run(run_or_adapter: str | Path, data: str | None = None) -> Path:
    """Write a finished run's int8 activation ranges, the file `train` writes beside the adapter since
    2026-12-07, for an adapter trained before. Returns its path.

    The same seeded rows (read from `data` if the run's data has moved since) and the thread count
    the run recorded (sums split across other threads round differently), so on the same machine
    and library versions, the same bytes as `train`.
    """
    run_dir, record = read_run(run_or_adapter)
    adapter_dir = run_dir / record.adapter_dir
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{adapter_dir / ADAPTER_WEIGHTS} not found: the run kept no adapter to calibrate")
    if record.adapter_sha256 not in (None, file_sha256(adapter_dir / ADAPTER_WEIGHTS)):  # None: recorded before it was
        raise ModelError(f"{run_dir / RUN_FILE} records other adapter weights than {adapter_dir}'s: its rows are "
                         "not the ones this adapter learnt from")
    train_split, _ = run_training_rows(record, data)
    threads = torch.get_num_threads()
    torch.set_num_threads(record.environment.hardware.torch_threads)
    try:
        save_int8_calibration(adapter_dir, train_split, record.config)
    finally:
        torch.set_num_threads(threads)
    return adapter_dir / INT8_CALIBRATION_FILE


def format_run_summary(record: RunRecord) -> str:
    lines = ["Validation (carved from train):"]
    for epoch in record.validation:
        lines.append(f"  epoch {epoch.epoch:.2f}: accuracy {epoch.accuracy:.4f}  macro-F1 {epoch.macro_f1:.4f}")
    best = record.best_epoch
    if best:
        lines.append(f"Best epoch {best.epoch:.2f} (macro-F1 {best.macro_f1:.4f}) kept in {record.adapter_dir}/")
    lines.append(
        f"train_runtime {record.train_runtime:.1f}s, {record.train_samples_per_second:.2f} samples/s, "
        f"{record.train_tokens_per_second:.0f} tokens/s"
    )
    return "\n".join(lines)
