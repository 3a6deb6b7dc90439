"""The training path's batching: each optimizer step is a random batch, sorted by length and run as
micro-batches whose accumulated gradient is the step's mean, as one unsorted batch would give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yelp_lora.config import load_config
from yelp_lora.data.sampling import sample_split
from yelp_lora.data.sources import load_split
from yelp_lora.data.tokenize import tokenize
from yelp_lora.errors import ConfigError
from yelp_lora.modeling.base import load_tokenizer
from yelp_lora.modeling.hardware import has_amx
from yelp_lora.training.recipe import build_training_model, pad_multiple, padding_collator, step_batches, training_arguments
from yelp_lora.training.trainer import StepSortedSampler, lora_trainer_class

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_each_step_holds_the_rows_a_random_order_would_give_it_sorted_by_length():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 257, (203,), generator=generator).tolist()
    micro, per_step = 4, 4
    step = micro * per_step
    torch.manual_seed(11)
    order = list(StepSortedSampler(lengths, micro, per_step, seed=42))  # the first epoch: the global generator
    torch.manual_seed(11)
    random_order = torch.randperm(len(lengths)).tolist()  # what the sampler draws from the same seed
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)  # the epoch's longest row first: out-of-memory shows at once
    differing = 0
    for start in range(0, len(order), step):
        ours, theirs = order[start : start + step], random_order[start : start + step]
        # Only the longest row's swap into the first step moves one row between two steps.
        differing += set(ours) != set(theirs)
        assert len(set(ours) ^ set(theirs)) in (0, 2)
        tail = [lengths[i] for i in ours[1:]]
        assert tail == sorted(tail, reverse=True)
    assert differing <= 2


@pytest.mark.parametrize(
    "overrides, device, expected",
    [
        ({}, CPU, (4, 4)),  # auto: batch 16, micro-batches of 4
        ({}, CUDA, (16, 4)),  # auto: batch 64
        ({"train.train_batch_size": 10}, CPU, (2, 5)),  # the largest auto size that divides the batch
        ({"train.micro_batch_size": 8}, CPU, (8, 2)),
        ({"train.group_by_length": False}, CPU, (16, 1)),
        ({"train.pad_to_max_length": True}, CPU, (16, 1)),  # fixed shapes: nothing to sort
    ],
)
def test_step_batches(overrides, device, expected):
    assert step_batches(load_config(None, overrides).train, device) == expected


def test_a_micro_batch_that_does_not_divide_the_step_is_refused():
    config = load_config(None, {"train.micro_batch_size": 5})
    with pytest.raises(ConfigError, match=r"train.micro_batch_size 5 must divide the training batch size 16"):
        step_batches(config.train, CPU)


def test_micro_batches_accumulate_to_the_steps_mean_loss_and_gradient(tiny_bert_dir, data_dir, tmp_path):
    """One step over the same 16 rows: 4 micro-batches of 4 against one batch of 16, dropout off."""
    rows = sample_split(load_split(str(data_dir), "train"), 16, seed=3)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    dataset = tokenize(rows, tokenizer, 64)
    from transformers import DataCollatorWithPadding

    logged = {}
    for micro in (4, 16):
        config = load_config(None, {
            "model.name_or_path": str(tiny_bert_dir), "model.attention_dropout": 0.0,
            "train.precision": "fp32", "train.micro_batch_size": micro, "train.max_steps": 1,
            "train.logging_steps": 1,
        })
        model = build_training_model(config, CPU)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        args = training_arguments(config, tmp_path / str(micro), CPU, resume_possible=False,
                                              eval_strategy="no", disable_tqdm=True)
        trainer = lora_trainer_class()(
            model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (micro, 16 // micro)
        logged[micro] = trainer.state.log_history[0]
    assert logged[4]["loss"] == pytest.approx(logged[16]["loss"], rel=1e-5)
    assert logged[4]["grad_norm"] == pytest.approx(logged[16]["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("ratio", [None, 8.0])
def test_loraplus_moves_lora_b_at_ratio_times_the_learning_rate(ratio, tiny_bert_dir, data_dir, tmp_path):
    """Adam's first step moves each weight by about the rate itself; LoRA's B starts at zero and its A gets
    no gradient until B moves, so one step shows each group's rate directly."""
    rows = sample_split(load_split(str(data_dir), "train"), 16, seed=3)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    from transformers import DataCollatorWithPadding

    lr = 1e-3
    config = load_config(None, {
        "model.name_or_path": str(tiny_bert_dir), "train.precision": "fp32", "train.max_steps": 1,
        "train.learning_rate": lr, "train.loraplus_lr_ratio": ratio,
    })
    model = build_training_model(config, CPU)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    args = training_arguments(config, tmp_path, CPU, resume_possible=False, eval_strategy="no", disable_tqdm=True)
    trainer = lora_trainer_class()(
        model=model, args=args, train_dataset=tokenize(rows, tokenizer, 64),
        data_collator=DataCollatorWithPadding(tokenizer), loraplus_lr_ratio=config.train.loraplus_lr_ratio,
    )
    trainer.train()
    moved = {name: (p.detach() - before[name]).abs().max().item()
             for name, p in model.named_parameters() if p.requires_grad}
    b_rate = lr * (ratio or 1.0)
    lora_b = [step for name, step in moved.items() if "lora_B" in name]
    head_weight = [step for name, step in moved.items() if "classifier" in name and name.endswith("weight")]
    assert lora_b and max(lora_b) == pytest.approx(b_rate, rel=0.05)
    assert head_weight and max(head_weight) == pytest.approx(lr, rel=0.05)


@pytest.mark.parametrize("multiple", [None, 1, 16, 64])
def test_each_batch_is_padded_to_its_longest_text_or_up_to_the_multiple(multiple, data_dir):
    tokenizer = load_tokenizer("minilm")
    rows = tokenize(sample_split(load_split(str(data_dir), "train"), 12, seed=5), tokenizer, 192)
    config = load_config(None, {"train.pad_to_multiple_of": multiple})
    collate = padding_collator(tokenizer, config.train, CPU)
    expected_multiple = multiple or (16 if has_amx() else 8)  # auto: measured per CPU kind
    assert pad_multiple(config.train, CPU) == expected_multiple
    for start in range(0, 12, 4):
        features = [{key: rows[i][key] for key in ("input_ids", "attention_mask")} for i in range(start, start + 4)]
        batch = collate(features)
        longest = max(len(feature["input_ids"]) for feature in features)
        width = -(-longest // expected_multiple) * expected_multiple
        assert tuple(batch["input_ids"].shape) == (4, width)
        # Padding adds only masked [PAD] positions: every text's own ids and mask are unchanged.
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
            assert batch["attention_mask"][row].sum().item() == n
            assert set(batch["input_ids"][row, n:].tolist()) <= {tokenizer.pad_token_id}


def test_a_multiple_that_pads_past_512_positions_is_refused_naming_both_settings():
    with pytest.raises(ConfigError, match="train.pad_to_multiple_of 24 pads max_length 512 to 528 tokens"):
        load_config(None, {"train.pad_to_multiple_of": 24, "model.max_length": 512})


def test_later_epochs_draw_their_order_from_the_seed_and_epoch_alone():
    """A resumed run draws its epoch's order before the checkpoint's generator state is restored, so
    epochs after the first must not depend on what the global generator served before them."""
    lengths = torch.randint(5, 257, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = StepSortedSampler(lengths, 4, 4, seed=42)
    orders = {}
    for epoch in (1, 2):
        sampler.epoch = epoch
        torch.manual_seed(0)
        orders[epoch] = list(sampler)
        torch.rand(1000)  # what dropout would have drawn
        assert list(sampler) == orders[epoch]
    assert orders[1] != orders[2] and sorted(orders[1]) == list(range(len(lengths)))
    other_seed = StepSortedSampler(lengths, 4, 4, seed=7)
    other_seed.epoch = 1
    assert list(other_seed) != orders[1]
