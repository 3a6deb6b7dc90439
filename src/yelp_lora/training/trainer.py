"""transformers' Trainer as this project runs it: step-sorted micro-batches, the step's mean loss,
checkpoints that appear only complete, and the callbacks that keep the best adapter.

Every private Trainer method this project overrides is overridden here and nowhere else
(`_get_train_sampler`, `_get_output_dir`, `_save_checkpoint`); tests/test_private_apis.py fails,
naming the method, if a transformers upgrade renames or re-signs one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from yelp_lora.artifacts import ADAPTER_DIRNAME, STAGING_PREFIX, AdapterMeta, save_adapter
from yelp_lora.util.atomic import publish_dir, save_errors


def keep_best_callback(output_dir: Path, tokenizer, meta: AdapterMeta):
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
                # The temperature fitted on this epoch's validation logits (metrics.fit_temperature), if any.
                temperature = (metrics or {}).get("eval_temperature", 1.0)
                save_adapter(model, tokenizer, output_dir / ADAPTER_DIRNAME, meta.model_copy(update={"temperature": temperature}))

    return KeepBestAdapter()


def save_every_epoch_callback():
    from transformers import TrainerCallback

    class SaveEveryEpoch(TrainerCallback):
        """With step checkpoints, also checkpoint at each epoch end (after its validation)."""

        def on_step_end(self, args, state, control, **kwargs):
            # A step that ends an epoch or the run is checkpointed by on_epoch_end, after its validation.
            # Saved here as well, before it, a run killed during that validation would resume past it:
            # the epoch would never be scored, nor its adapter kept.
            if float(state.epoch).is_integer() or control.should_training_stop:
                control.should_save = False

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

    def __init__(self, lengths: list[int], micro_batch_size: int, micro_batches_per_step: int, seed: int):
        self.lengths = list(lengths)
        self.micro_batch_size = micro_batch_size
        self.micro_batches_per_step = micro_batches_per_step
        self.seed = seed
        self.epoch = 0  # set by LoraTrainer's EpochToSampler before each epoch, a resumed one too

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        # The first epoch draws from torch's global generator, seeded with train.seed, as it always
        # has (so one-epoch runs, the demo's included, keep their bytes). Later epochs draw from a
        # generator of their own: the global one has by then served the dropout masks, and a run
        # resumed mid-epoch draws its epoch's order before the checkpoint's generator state is restored.
        generator = None
        if self.epoch:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
        return iter(get_length_grouped_indices(self.lengths, self.micro_batch_size, self.micro_batches_per_step, generator))


def step_mean_loss(class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0, ordinal_weight: float = 0.0):
    """The training loss, summed over a micro-batch and divided by the rows of its whole optimizer step.

    The Trainer counts the step's rows across its micro-batches. The model's own loss, a mean
    per micro-batch, would instead be summed over them, scaling the gradient by their number.
    Cross-entropy (optionally class-weighted and label-smoothed), plus `ordinal_weight` times the
    expected distance in stars, sum_k p(k) |k - label|, which costs a near miss less than a far one.
    """

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        weight = class_weights.to(logits.device) if class_weights is not None else None
        total = torch.nn.functional.cross_entropy(
            logits, labels, weight=weight, label_smoothing=label_smoothing, reduction="sum"
        )
        if ordinal_weight:
            stars = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
            distance = (stars[None, :] - labels[:, None].to(logits.dtype)).abs()
            total = total + ordinal_weight * (logits.softmax(-1) * distance).sum()
        return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return loss


def lora_trainer_class():
    """transformers' Trainer with step-sorted batches under group_by_length and atomic checkpoints."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    class EpochToSampler(TrainerCallback):
        """Tells the step-sorted sampler which epoch begins, from the Trainer's state (restored from the
        checkpoint on --resume). Not through `set_epoch`: accelerate's loader does not pass that down
        every nesting of its wrappers (under torchrun, resumed mid-epoch, it stops short of the sampler)."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_epoch_begin(self, args, state, control, **kwargs):
            if self.trainer.step_sampler is not None:
                self.trainer.step_sampler.epoch = int(state.epoch or 0)

    class LoraTrainer(Trainer):
        """A Trainer whose checkpoints appear only complete, and whose length grouping stays within a step.

        Its loss is a `step_mean_loss`, so accumulated micro-batches give the step's mean.
        Trainer writes checkpoint-N in place, so a kill mid-save would leave a partial
        checkpoint-N that `resume_from_checkpoint=True` picks as the latest. Here it is written
        under a hidden staging directory, fsynced, then renamed into place.
        """

        _staging_root: str | None = None

        def __init__(self, *args, loraplus_lr_ratio: float | None = None, **kwargs):
            kwargs.setdefault("compute_loss_func", step_mean_loss())
            self.loraplus_lr_ratio = loraplus_lr_ratio
            self.step_sampler: StepSortedSampler | None = None
            super().__init__(*args, **kwargs)
            self.add_callback(EpochToSampler(self))

        def create_optimizer(self, model=None):
            if self.loraplus_lr_ratio is None or self.optimizer is not None:
                return super().create_optimizer(model)
            from peft.optimizers import create_loraplus_optimizer

            # The optimizer Trainer would build (fused AdamW and its betas), with LoRA+'s parameter groups.
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs.pop("lr", None)
            self.optimizer = create_loraplus_optimizer(
                opt_model, optimizer_cls, lr=self.args.learning_rate, loraplus_lr_ratio=self.loraplus_lr_ratio,
                loraplus_weight_decay=self.args.weight_decay, **kwargs,
            )
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            # Under DDP the sharded loader deals consecutive micro-batches to the ranks in turn.
            per_step = self.args.gradient_accumulation_steps * max(1, self.args.world_size)
            # data.tokenize's length column; the loader's copy of the set has had it removed.
            lengths = self.train_dataset["length"]
            self.step_sampler = StepSortedSampler(lengths, self.args.per_device_train_batch_size, per_step, self.args.seed)
            return self.step_sampler

        def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args):
            trained = super()._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs, *args)
            # A resume may checkpoint at another interval: the restored state would keep the old one.
            self.state.save_steps = self.args.save_steps
            # Resumed from the checkpoint of a run that max_steps ended mid-epoch: the Trainer would take
            # (and validate) one step more before it checks max_steps. Nothing is left to train.
            if self.state.global_step >= max_steps:
                return num_train_epochs, 0
            return trained

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
