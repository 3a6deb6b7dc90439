"""The training paths: the usual way (the tutorials' Trainer) against ours, one pass over the same rows."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from yelp_lora.bench.flops import training_flops
from yelp_lora.bench.harness import PathProcess, path_processes, take_turns
from yelp_lora.bench.peaks import peak_memory
from yelp_lora.artifacts import AdapterMeta, save_adapter
from yelp_lora.config import BenchSettings, load_config
from yelp_lora.data.tokenize import tokenize
from yelp_lora.metrics import headline, predictions_of
from yelp_lora.modeling.base import build_classifier, load_tokenizer, quiet_upstream_warnings, resolve_model_path
from yelp_lora.modeling.forward import predict_logits
from yelp_lora.modeling.hardware import attention_kernel, pick_device
from yelp_lora.modeling.lora import apply_lora


TRAIN_PATHS = {
    "usual": "usual: Trainer, pad to 256, fp32",
    "ours-fp32": "ours fp32: sorted micro-batches",
    "ours": "ours: + bf16 autocast",
}
# Sweep paths: "ours" once more with one setting changed, named prefix + value (ours-mb2, ours-pad16):
# prefix -> (the BenchSettings field listing the values, the run config setting, the path's label).
SWEEP_PATHS = {
    "ours-mb": ("micro_batch_sizes", "train.micro_batch_size", "ours: micro-batches of {}".format),
    "ours-pad": ("pad_multiples", "train.pad_to_multiple_of",
                 lambda multiple: "ours: padded to the longest text" if multiple == 1
                 else f"ours: lengths padded to multiples of {multiple}"),
}


def sweep_setting(path: str) -> tuple[str, int, str] | None:
    """(setting, value, label) of a sweep path, None for the named paths."""
    for prefix, (_, setting, label) in SWEEP_PATHS.items():
        if path.startswith(prefix) and path.removeprefix(prefix).isdigit():
            value = int(path.removeprefix(prefix))
            return setting, value, label(value)
    return None


def sweep_paths(settings: BenchSettings) -> list[str]:
    """The sweep paths `bench --micro-batch-size` / `--pad-multiple` ask for, each value once."""
    return [f"{prefix}{value}" for prefix, (field, _, _) in SWEEP_PATHS.items()
            for value in dict.fromkeys(getattr(settings, field))]


def train_path_label(path: str) -> str:
    sweep = sweep_setting(path)
    return sweep[2] if sweep else TRAIN_PATHS[path]


def _train_worker(
    connection, *, path: str, base: str, train_split, val_split, settings: BenchSettings, workdir: str
) -> None:
    """One training path: build it and tell the parent its step count; run the steps each turn
    asks for (timing only those steps); once told to close, score it and send the result."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    from yelp_lora.training.recipe import (
        build_training_model, pad_multiple, padding_collator, save_int8_calibration, training_arguments,
    )
    from yelp_lora.training.trainer import lora_trainer_class

    quiet_upstream_warnings()
    usual = path == "usual"
    config = load_config(
        None,
        {
            "model.name_or_path": base,
            "model.max_length": settings.max_length,
            "train.train_batch_size": settings.batch_size,
            "train.seed": settings.seed,
            "train.precision": "fp32" if path == "ours-fp32" else "auto",
            **({sweep[0]: sweep[1]} if (sweep := sweep_setting(path)) else {}),
        },
    )
    tokenizer = load_tokenizer(base)
    dataset = tokenize(train_split, tokenizer, settings.max_length, pad_to_max_length=usual)
    device = pick_device()
    if usual:  # the tutorials' model: the library's default attention kernel
        model = apply_lora(build_classifier(base, settings.seed), config.lora)
    else:
        model = build_training_model(config, device)
    short_run = dict(
        max_steps=math.ceil(len(train_split) / settings.batch_size),  # exactly one pass over the rows
        eval_strategy="no", save_strategy="no", logging_strategy="no", disable_tqdm=True,
    )
    output = Path(workdir) / f"train-{path}"
    if usual:
        # The tutorials' form: fixed 256-token rows, fp32, random order, the Trainer's defaults otherwise.
        args = TrainingArguments(
            output_dir=str(output), per_device_train_batch_size=settings.batch_size,
            learning_rate=config.train.learning_rate, seed=settings.seed, use_cpu=device.type != "cuda",
            report_to=[], **short_run,
        )
        collate = default_data_collator
    else:
        args = training_arguments(config, output, device, resume_possible=False, **short_run)
        collate = padding_collator(tokenizer, config.train, device)
    batches: list[tuple[int, int]] = []  # (real tokens, computed tokens) of each batch

    def counting_collator(features):
        batch = collate(features)
        batches.append((int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel())))
        return batch

    class Turns(TrainerCallback):
        """Waits for the parent's next turn before a step; times each turn's steps."""

        started = None
        steps_left = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started is None:
                self.steps_left = connection.recv()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps_left -= 1
            if self.steps_left == 0 or state.global_step == state.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                connection.send((time.perf_counter() - self.started, None))
                self.started = None

    trainer_class = Trainer if usual else lora_trainer_class()
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=counting_collator, callbacks=[Turns()])
    trainer.remove_callback(PrinterCallback)  # its closing train_runtime would count the waits between turns
    connection.send({"steps": short_run["max_steps"]})
    trainer.train()
    connection.recv()  # the parent's close
    model.eval()
    logits, _ = predict_logits(model, tokenizer, val_split.texts, max_length=settings.max_length, batch_size=64)
    if path == "ours":  # the adapter the prediction bench uses when none is given
        meta = AdapterMeta(
            base_model=base, base_model_path=resolve_model_path(base), data_source=settings.data,
            head_seed=settings.seed, max_length=settings.max_length,
        )
        save_adapter(model, tokenizer, Path(workdir) / "adapter", meta)
        save_int8_calibration(Path(workdir) / "adapter", train_split, config)  # as `train` saves it
    connection.send({
        "path": path,
        "label": train_path_label(path),
        "precision": "bf16" if args.bf16 else "fp32",
        "micro_batch_size": args.per_device_train_batch_size,
        "pad_multiple": 1 if usual else pad_multiple(config.train, device),  # the usual way pads to 256
        "rows": len(train_split),
        "steps": trainer.state.global_step,
        "real_tokens": sum(real for real, _ in batches),
        "computed_tokens": sum(computed for _, computed in batches),
        "model_flops": training_flops(model.get_base_model().config, np.asarray(dataset["length"]), config.lora),
        "val_macro_f1": headline(val_split.labels, predictions_of(logits))["macro_f1"],
        "attention": attention_kernel(model.get_base_model().config),
        **peak_memory(),
    })


def bench_training(
    paths: list[str], base: str, train_split, val_split, *, settings: BenchSettings, workdir: str, measure_round_peak,
    progress,
) -> list[dict]:
    """Every training path over the same rows, one pass, in rounds (a share of the steps each per round)."""
    results = []
    with path_processes() as processes:
        for path in paths:
            progress(f"training: building {train_path_label(path)} ...")
            processes.append(PathProcess(
                _train_worker, path=path, base=base, train_split=train_split, val_split=val_split,
                settings=settings, workdir=workdir,
            ))
        steps = processes[0].info["steps"]
        turns = [len(chunk) for chunk in np.array_split(np.arange(steps), min(settings.rounds, steps))]

        def before_round(number: int) -> None:
            measure_round_peak()
            progress(f"training round {number + 1}/{len(turns)}: {turns[number]} steps on each path ...")

        take_turns(processes, turns, before_round)
        # Rows per turn: whole batches, but the pass's last batch may be short.
        turn_rows = np.diff(np.minimum(np.cumsum([0, *turns]) * settings.batch_size, len(train_split)))
        for handle in processes:
            result = handle.close()  # scores validation macro-F1, untimed
            seconds = sum(handle.seconds)
            result.update(
                seconds=seconds, samples_per_s=result["rows"] / seconds, tokens_per_s=result["real_tokens"] / seconds,
                flops_per_s=result["model_flops"] / seconds,
                round_samples_per_s=[int(rows) / spent for rows, spent in zip(turn_rows, handle.seconds)],
            )
            results.append(result)
            progress(f"  {result['label']}: {result['samples_per_s']:.2f} samples/s, val macro-F1 {result['val_macro_f1']:.4f}")
    return results
