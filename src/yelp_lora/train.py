"""LoRA fine-tuning through transformers' Trainer: validation every epoch, only the best adapter kept."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from yelp_lora import data as data_stage
from yelp_lora import dropout as dropout_stage
from yelp_lora import model as model_stage
from yelp_lora.atomic import atomic_dir, atomic_write_text, publish_dir, save_errors
from yelp_lora.config import LABEL_NAMES, ConfigError, RunConfig, TrainConfig
from yelp_lora.metrics import headline, predictions_of
from yelp_lora.provenance import environment

log = logging.getLogger("yelp_lora.train")

ADAPTER_DIRNAME = "adapter"
CHECKPOINT_DIRNAME = "checkpoints"
RUN_FILE = "run.json"
# The config a checkpointed run started with, so --resume refuses to continue a different run.
RESUME_CONFIG_FILE = "run_config.json"
STAGING_PREFIX = ".staging-"
ADAPTER_META_FILE = "yelp_lora.json"


def adapter_meta(config: RunConfig, base_path: str, data_source: str) -> dict:
    """What a consumer of the adapter needs beyond PEFT's own files."""
    return {
        "base_model": config.model.name_or_path,
        "base_model_path": base_path,
        "data_source": data_source,
        "head_seed": config.train.seed,
        "max_length": config.model.max_length,
        "label_names": list(LABEL_NAMES),
    }


def save_adapter(peft_model, tokenizer, target: Path, meta: dict) -> None:
    """The adapter in standard PEFT format plus config.json (id2label) and the tokenizer, atomically."""
    with atomic_dir(target) as staging:
        peft_model.save_pretrained(str(staging))
        peft_model.get_base_model().config.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / ADAPTER_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _keep_best_callback(output_dir: Path, tokenizer, meta: dict):
    from transformers import TrainerCallback

    class KeepBestAdapter(TrainerCallback):
        """After each validation, save the adapter if its macro-F1 is the best so far.

        Selection lives here rather than in `load_best_model_at_end` so checkpoints (kept
        only for --resume) can follow their own schedule and be deleted at the end.
        """

        def __init__(self):
            self.best: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # On --resume, the restored history already holds the earlier epochs' scores.
            scores = [e["eval_macro_f1"] for e in state.log_history if "eval_macro_f1" in e]
            self.best = max(scores) if scores else None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            score = (metrics or {}).get("eval_macro_f1")
            if score is None or not args.should_save:
                return
            if self.best is None or score > self.best:
                self.best = score
                save_adapter(model, tokenizer, output_dir / ADAPTER_DIRNAME, meta)

    return KeepBestAdapter()


def _save_every_epoch_callback():
    from transformers import TrainerCallback

    class SaveEveryEpoch(TrainerCallback):
        """With step checkpoints, also checkpoint at each epoch end (after its validation)."""

        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_save = True

    return SaveEveryEpoch()


class StepSortedSampler(torch.utils.data.Sampler):
    """Every optimizer step's rows drawn at random, then sorted longest first within the step.

    The Trainer cuts the order into micro-batches and accumulates their gradients, so each
    micro-batch pads only to similar lengths while each step still learns from a random batch,
    as the usual way's does. (transformers' LengthGroupedSampler sorts mega-batches of up to 50
    steps instead, so its steps run from long reviews to short ones; with one seed that read
    lower validation macro-F1 than the usual way, docs/performance.md.) The longest row of the
    epoch is moved into the first micro-batch, so running out of memory shows at once.
    """

    def __init__(self, lengths: list[int], micro_batch_size: int, micro_batches_per_step: int):
        self.lengths = list(lengths)
        self.micro_batch_size = micro_batch_size
        self.micro_batches_per_step = micro_batches_per_step

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        # Drawn from torch's global generator, which the Trainer seeds with train.seed.
        return iter(get_length_grouped_indices(self.lengths, self.micro_batch_size, self.micro_batches_per_step))


def step_mean_cross_entropy(outputs, labels, num_items_in_batch=None):
    """Cross-entropy summed over a micro-batch, divided by the rows of its whole optimizer step.

    The Trainer counts the step's rows across its micro-batches. The model's own loss, a mean
    per micro-batch, would instead be summed over them, scaling the gradient by their number.
    """
    total = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def lora_trainer_class():
    """transformers' Trainer with step-sorted batches under group_by_length and atomic checkpoints."""
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class LoraTrainer(Trainer):
        """A Trainer whose checkpoints appear only complete, and whose length grouping stays within a step.

        Its loss is `step_mean_cross_entropy`, so accumulated micro-batches give the step's mean.
        Trainer writes checkpoint-N in place, so a kill mid-save would leave a partial
        checkpoint-N that `resume_from_checkpoint=True` picks as the latest. Here it is written
        under a hidden staging directory, fsynced, then renamed into place.
        """

        _staging_root: str | None = None

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("compute_loss_func", step_mean_cross_entropy)
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            # Under DDP the sharded loader deals consecutive micro-batches to the ranks in turn.
            per_step = self.args.gradient_accumulation_steps * max(1, self.args.world_size)
            # data.tokenize's length column; the loader's copy of the set has had it removed.
            lengths = self.train_dataset["length"]
            return StepSortedSampler(lengths, self.args.per_device_train_batch_size, per_step)

        def _get_output_dir(self, trial):
            return self._staging_root or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            root = Path(self.args.output_dir)
            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            staging = root / f"{STAGING_PREFIX}{name}"
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self.accelerator.wait_for_everyone()  # every rank writes its own RNG state into staging
            self._staging_root = str(staging)
            try:
                with save_errors(root / name):
                    super()._save_checkpoint(model, trial)
            finally:
                self._staging_root = None
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                with save_errors(root / name):
                    publish_dir(staging / name, root / name)
                shutil.rmtree(staging, ignore_errors=True)
                rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit, use_mtime=False)
            self.accelerator.wait_for_everyone()

    return LoraTrainer


def _check_resume_config(config: RunConfig, checkpoints: Path, resume: bool, is_main: bool) -> None:
    """Record the config of a checkpointed run; on --resume, refuse a config that differs from it."""
    recorded = checkpoints / RESUME_CONFIG_FILE
    current = config.model_dump()
    if resume:
        if not any(checkpoints.glob("checkpoint-*")):
            raise ConfigError(f"--resume: no checkpoint to resume from in {checkpoints}")
        if recorded.is_file():
            before = json.loads(recorded.read_text(encoding="utf-8"))
            changed = [
                f"{section}.{key}: {before[section].get(key)!r} -> {value!r}"
                for section, values in current.items()
                for key, value in values.items()
                if before.get(section, {}).get(key) != value
            ]
            if changed:
                raise ConfigError(f"--resume: the settings differ from the interrupted run's: {'; '.join(changed)}")
        if is_main:  # a kill mid-save leaves only a hidden staging directory behind
            for stale in checkpoints.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
    elif is_main:
        atomic_write_text(recorded, json.dumps(current, indent=2) + "\n")


# Per-device batches when the config leaves them to the device (null).
AUTO_BATCH = {"cpu": (16, 16), "cuda": (64, 128)}
# Rows per forward pass under group_by_length when micro_batch_size is null. CPU: measured
# (docs/performance.md); CUDA: the same quarter of its step, not yet measured on a GPU.
AUTO_MICRO_BATCH = {"cpu": 4, "cuda": 16}


def step_batches(train: TrainConfig, device: torch.device) -> tuple[int, int]:
    """(rows per forward pass, forward passes per optimizer step) for this config on this device."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    batch = train.train_batch_size or AUTO_BATCH[kind][0]
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
    attention = model_stage.attention_implementation(config.model.attention, device)
    fast = config.model.dropout_kernel == "fast" or (config.model.dropout_kernel == "auto" and device.type != "cuda")
    if fast and attention == "eager":
        dropout_stage.register_attention()
        attention = dropout_stage.ATTENTION
    classifier = model_stage.build_classifier(
        config.model.name_or_path, config.train.seed, attention=attention,
        attention_dropout=config.model.attention_dropout,
    )
    model = model_stage.apply_lora(classifier, config.lora)
    if fast:
        dropout_stage.use_fast_dropout(model)
    return model


def training_arguments(config: RunConfig, output_dir: Path, device: torch.device, resume_possible: bool, **overrides):
    """The Trainer's arguments for this config on this device; `overrides` replace any of them (the bench's short runs)."""
    from transformers import TrainingArguments

    train = config.train
    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and model_stage.bf16_supported(device))
    cuda = device.type == "cuda"
    auto_eval_batch = AUTO_BATCH["cuda" if cuda else "cpu"][1]
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
        # On CUDA, tokenised batches are collated by workers into pinned memory while the GPU works.
        dataloader_pin_memory=cuda,
        dataloader_num_workers=2 if cuda else 0,
        report_to=[],
        disable_tqdm=not sys.stderr.isatty(),
    )
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def _epoch_history(log_history: list[dict]) -> tuple[list[dict], list[dict]]:
    steps, epochs = [], []
    for entry in log_history:
        if "loss" in entry:
            steps.append(
                {k: entry.get(k) for k in ("step", "epoch", "loss", "grad_norm", "learning_rate")}
            )
        elif "eval_macro_f1" in entry:
            epochs.append(
                {
                    "epoch": entry.get("epoch"),
                    "step": entry.get("step"),
                    "accuracy": entry["eval_accuracy"],
                    "macro_f1": entry["eval_macro_f1"],
                    "loss": entry.get("eval_loss"),
                }
            )
    return steps, epochs


def train(config: RunConfig, output_dir: str | Path, *, resume: bool = False) -> dict:
    """Run one training job; returns the run record also written to OUTPUT_DIR/run.json."""
    output_dir = Path(output_dir)
    checkpoints = output_dir / CHECKPOINT_DIRNAME
    checkpointing = bool(config.train.save_steps) or resume
    if checkpointing:
        _check_resume_config(config, checkpoints, resume, is_main=int(os.environ.get("RANK", "0")) == 0)
    device = model_stage.pick_device()
    args = training_arguments(config, output_dir, device, resume_possible=checkpointing)  # bad settings fail here
    source = data_stage.resolve_source(config.data.source)
    full_train = data_stage.load_split(source, "train", skip_bad_rows=config.data.skip_bad_rows)
    train_split, val_split = data_stage.train_val_split(
        full_train, config.data.val_samples, config.data.train_samples, config.train.seed
    )
    base_path = model_stage.resolve_model_path(config.model.name_or_path)
    tokenizer = model_stage.load_tokenizer(config.model.name_or_path)
    pad = config.train.pad_to_max_length
    train_set = data_stage.tokenize(train_split, tokenizer, config.model.max_length, pad)
    val_set = data_stage.tokenize(val_split, tokenizer, config.model.max_length, pad)

    from transformers import DataCollatorWithPadding  # after the data checks: bad data fails fast

    model = build_training_model(config, device)
    parameter_line = model_stage.parameter_line(model)
    print(parameter_line, flush=True)
    trainable, total = model.get_nb_trainable_parameters()

    meta = adapter_meta(config, base_path, source)
    # With disable_tqdm (output not a terminal) the Trainer prints plain log lines instead of bars.
    callbacks = [_keep_best_callback(output_dir, tokenizer, meta)]
    if config.train.save_steps:
        callbacks.append(_save_every_epoch_callback())
    trainer = lora_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda eval_pred: headline(eval_pred.label_ids, predictions_of(eval_pred.predictions)),
        callbacks=callbacks,
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    wall = time.time() - started
    if not trainer.is_world_process_zero():
        return {}

    steps, epochs = _epoch_history(trainer.state.log_history)
    best = max(epochs, key=lambda e: e["macro_f1"]) if epochs else None
    samples_per_second = result.metrics.get("train_samples_per_second")
    mean_tokens = float(np.mean(train_set["length"]))
    record = {
        "config": config.model_dump(),
        "resolved": {
            "data_source": source, "base_model_path": base_path, "device": str(device), "bf16": args.bf16,
            "attention": model.get_base_model().config._attn_implementation,
            "micro_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        },
        "data": {
            "train_file_rows": len(full_train),
            "skipped_bad_rows": len(full_train.skipped),
            "skipped_examples": full_train.skipped[:10],
            "duplicates_dropped": full_train.duplicates_dropped,
            "train": train_split.summary(),
            "validation": val_split.summary(),
        },
        "parameters": {"trainable": trainable, "total": total, "line": parameter_line},
        "environment": environment(),
        "history": steps,
        "validation": epochs,
        "best_epoch": best,
        "train_runtime": result.metrics.get("train_runtime", wall),
        "train_samples_per_second": samples_per_second,
        "train_steps_per_second": result.metrics.get("train_steps_per_second"),
        # Real (unpadded) tokens: what the model had to read, whatever the padding.
        "train_tokens_per_second": mean_tokens * samples_per_second,
        "mean_tokens_per_sample": mean_tokens,
        "global_step": result.global_step,
        "world_size": args.world_size,
        "adapter_dir": ADAPTER_DIRNAME,
    }
    atomic_write_text(output_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)  # only the best adapter is kept
    return record


def format_summary(record: dict) -> str:
    lines = ["Validation (carved from train):"]
    for epoch in record["validation"]:
        lines.append(f"  epoch {epoch['epoch']:.2f}: accuracy {epoch['accuracy']:.4f}  macro-F1 {epoch['macro_f1']:.4f}")
    best = record["best_epoch"]
    if best:
        lines.append(f"Best epoch {best['epoch']:.2f} (macro-F1 {best['macro_f1']:.4f}) kept in {record['adapter_dir']}/")
    lines.append(
        f"train_runtime {record['train_runtime']:.1f}s, {record['train_samples_per_second']:.2f} samples/s, "
        f"{record['train_tokens_per_second']:.0f} tokens/s"
    )
    return "\n".join(lines)
