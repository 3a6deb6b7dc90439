"""yelp_lora.modeling.dropout: the same Bernoulli masking as torch's dropout, drawn 16 bits at a time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.models.bert.modeling_bert import eager_attention_forward

from yelp_lora.config import load_config
from yelp_lora.modeling import dropout as dropout_stage
from yelp_lora.modeling.base import load_tokenizer
from yelp_lora.modeling.forward import predict_logits
from yelp_lora.training.recipe import build_training_model

DROP = round(0.1 * 65536) / 65536  # the rate 0.1 becomes: 6554 of 65536 levels


def test_masks_drop_at_the_rate_in_every_lane_and_keep_the_expectation():
    n = 4_000_000
    torch.manual_seed(0)
    out = dropout_stage.fast_dropout(torch.ones(n), 0.1, training=True)
    kept = out != 0
    tolerance = 5 * math.sqrt(DROP * (1 - DROP) / n)
    assert abs((1 - kept.float().mean().item()) - DROP) < tolerance
    # Each 64-bit draw feeds four consecutive elements: every lane must drop at the rate on its own.
    for lane_rate in 1 - kept.view(-1, 4).float().mean(0):
        assert abs(lane_rate.item() - DROP) < 2 * tolerance
    assert torch.all(out[kept] == 1 / (1 - DROP))  # scaled by the exact inverse of the keep rate
    assert abs(out.mean().item() - 1) < 2 * tolerance / (1 - DROP)


def test_masks_follow_the_seed_and_gradients_follow_the_mask():
    x = torch.randn(3, 7, 11, requires_grad=True)
    torch.manual_seed(5)
    first = dropout_stage.fast_dropout(x, 0.5, training=True)
    torch.manual_seed(5)
    again = dropout_stage.fast_dropout(x, 0.5, training=True)
    assert torch.equal(first, again) and first.shape == x.shape
    first.sum().backward()
    scale = 65536 / (65536 - 32768)
    assert torch.equal(x.grad, (first != 0).float() * scale)
    assert dropout_stage.fast_dropout(x, 0.5, training=False) is x
    assert dropout_stage.fast_dropout(x, 0.0, training=True) is x


def test_the_attention_kernel_is_transformers_eager_attention_with_fast_masks():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 9, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 9, 9)
    mask[1, :, :, 6:] = torch.finfo(torch.float32).min  # the second text is 6 tokens long
    module = nn.Module()
    module.eval()
    ours, ours_weights = dropout_stage.eager_attention_fast_dropout(module, query, key, value, mask, dropout=0.5)
    theirs, theirs_weights = eager_attention_forward(module, query, key, value, mask, dropout=0.5)
    assert torch.equal(ours, theirs) and torch.equal(ours_weights, theirs_weights)
    module.train()
    _, dropped = dropout_stage.eager_attention_fast_dropout(module, query, key, value, mask, dropout=0.5)
    survivors = dropped != 0
    assert 0.3 < survivors[0].float().mean().item() < 0.7
    assert torch.allclose(dropped[survivors], 2 * theirs_weights[survivors])


@pytest.mark.parametrize("kernel, swapped", [("auto", True), ("fast", True), ("torch", False)])
def test_the_training_model_swaps_every_dropout_on_cpu(tiny_bert_dir, kernel, swapped):
    config = load_config(None, {"model.name_or_path": str(tiny_bert_dir), "model.dropout_kernel": kernel})
    model = build_training_model(config, torch.device("cpu"))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    fast = [m for m in dropouts if isinstance(m, dropout_stage.FastDropout)]
    # embeddings 1; per layer (2 here) attention probabilities, attention output, FFN output, LoRA on
    # query and value; the head 1
    assert len(dropouts) == 1 + 2 * 5 + 1
    assert len(fast) == (len(dropouts) if swapped else 0)
    expected_kernel = dropout_stage.ATTENTION if swapped else "eager"
    assert model.get_base_model().config._attn_implementation == expected_kernel
    # Only how masks are drawn changes: without dropout the model computes exactly what torch's does.
    reference = build_training_model(
        load_config(None, {"model.name_or_path": str(tiny_bert_dir), "model.dropout_kernel": "torch"}),
        torch.device("cpu"),
    )
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts = ["Great tacos, slow service.", "Never again."]
    ours, _ = predict_logits(model.eval(), tokenizer, texts)
    theirs, _ = predict_logits(reference.eval(), tokenizer, texts)
    assert (ours == theirs).all()
