"""The training levers of the run config: extra training sources, head+tail truncation, the loss
options, and the softmax temperature fitted on validation, through the real code paths on the real
rows (a tiny seeded BERT where a model is needed; never a test split)."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import TINY_ENV, cli, read_json, run_cli, shared_rows, tiny_train_args

from yelp_lora.config import LABEL_NAMES, DataConfig, TrainSource, load_config, unused_settings
from yelp_lora.data.mixing import training_rows
from yelp_lora.data.tokenize import cut, encode, pad
from yelp_lora.errors import DataError
from yelp_lora.metrics import fit_temperature, predictions_of
from yelp_lora.training.recipe import class_weights
from yelp_lora.training.trainer import step_mean_loss

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLS, SEP = 101, 102  # bert-base-uncased's ids, the tiny BERT's vocabulary
EXTRA_ROWS = 20


@functools.cache
def _by_length() -> list[str]:
    """train.csv's reviews, shortest first."""
    return sorted((text for _, text in shared_rows()), key=len)


def _long_reviews(n: int) -> list[str]:
    """The n longest reviews of train.csv: each far over 64 tokens."""
    return _by_length()[-n:]


# ---------------------------------------------------------------- cutting a review


@EXAMPLES
@given(body=st.lists(st.integers(1000, 30000), max_size=120), max_length=st.integers(8, 64), data=st.data())
def test_cut_keeps_cls_first_sep_last_the_head_and_the_tail(body, max_length, data):
    ids = [CLS, *body, SEP]
    head = data.draw(st.integers(1, max_length - 1), label="head")
    kept = cut(ids, max_length, head)
    if len(ids) <= max_length:
        assert kept == ids
        return
    assert len(kept) == max_length
    assert kept[0] == CLS and kept[-1] == SEP
    assert kept[:head] == ids[:head]  # the text's first ids
    assert kept[head:] == ids[len(ids) - (max_length - head):]  # and its last


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from yelp_lora.modeling.base import load_tokenizer

    return load_tokenizer(str(tiny_bert_dir))


@EXAMPLES
@given(index=st.integers(0, 199), max_length=st.integers(8, 128), data=st.data())
def test_encode_head_is_the_tokenizers_own_truncation_and_head_tail_its_two_ends(tokenizer, index, max_length, data):
    text = _by_length()[::10][index]  # short to long
    full = tokenizer(text)["input_ids"]
    (head_only,), truncated = encode(tokenizer, [text], max_length)
    assert head_only == tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    assert bool(truncated[0]) == (len(full) > max_length)
    head = data.draw(st.integers(1, max_length - 1), label="head")
    (both,), _ = encode(tokenizer, [text], max_length, head)
    assert len(both) == min(len(full), max_length)
    assert both[0] == tokenizer.cls_token_id and both[-1] == tokenizer.sep_token_id
    if len(full) > max_length:
        assert both[:head] == full[:head] and both[head:] == full[len(full) - (max_length - head):]
    else:
        assert both == full


@EXAMPLES
@given(indices=st.lists(st.integers(0, 199), min_size=1, max_size=6), side=st.sampled_from(["right", "left"]))
def test_pad_builds_what_the_tokenizers_own_pad_builds(tokenizer, indices, side):
    rows, _ = encode(tokenizer, [_by_length()[::10][i] for i in indices], 64)
    tokenizer.padding_side = side
    try:
        theirs = tokenizer.pad({"input_ids": rows}, return_tensors="np")
    finally:
        tokenizer.padding_side = "right"
    ours = pad(rows, tokenizer.pad_token_id, side)
    assert ours.keys() == {"input_ids", "attention_mask"}
    for key, value in ours.items():
        assert value.dtype == np.int64 and np.array_equal(value, theirs[key]), key


# ---------------------------------------------------------------- one tiny run with every lever on


@pytest.fixture(scope="module")
def levers_run(tmp_path_factory, tiny_bert_dir, data_dir) -> Path:
    """Two epochs of the tiny BERT on 64 train.csv rows plus 20 balanced open-dataset rows, cut head+tail."""
    out = tmp_path_factory.mktemp("levers") / "run"
    run_cli(*tiny_train_args(
        tiny_bert_dir, data_dir, out, "--epochs", "2", "--logging-steps", "1",
        "--extra-train", f"{data_dir / 'open_dataset_train.csv'}:{EXTRA_ROWS}:balanced",
        "--truncation", "head+tail", "--head-tokens", "16", "--class-weights", "auto",
        "--label-smoothing", "0.1", "--ordinal-weight", "0.5",
    ), env=TINY_ENV)
    return out


def test_each_training_source_is_recorded_and_the_balanced_draw_is_balanced(levers_run, data_dir):
    data = read_json(levers_run / "run.json")["data"]
    primary, extra = data["sources"]
    assert primary["source"] == str(data_dir / "train.csv") and primary["rows"] == 64
    assert primary["file_rows"] == 1999 and primary["overlap_dropped"] == 0
    assert extra["source"] == str(data_dir / "open_dataset_train.csv")
    assert extra["file_rows"] == 19779 and extra["rows"] == EXTRA_ROWS
    assert extra["label_counts"] == [EXTRA_ROWS // 5] * 5  # balanced, though the file leans to 5 stars
    assert extra["overlap_dropped"] == 0  # no text is in both files (SOURCE.md)
    assert len({primary["fingerprint"], extra["fingerprint"], data["train"]["fingerprint"]}) == 3
    assert data["train"]["rows"] == 64 + EXTRA_ROWS
    assert data["train"]["label_counts"] == [a + b for a, b in zip(primary["label_counts"], extra["label_counts"])]


def test_the_classical_baseline_is_fitted_on_every_source_the_adapter_trained_on(levers_run):
    from yelp_lora.evaluation.classical import fit_classical

    fitted = fit_classical(levers_run).summary
    recorded = read_json(levers_run / "run.json")["data"]["train"]
    assert fitted.train_rows == 64 + EXTRA_ROWS == recorded["rows"]
    assert fitted.train_fingerprint == recorded["fingerprint"]


def test_validation_rows_are_the_same_with_and_without_extra_sources(levers_run, data_dir):
    config = read_json(levers_run / "run.json")["config"]
    with_extra = training_rows(DataConfig(**config["data"]), config["train"]["seed"])
    without = training_rows(DataConfig(**{**config["data"], "extra_train": []}), config["train"]["seed"])
    assert with_extra.validation.fingerprint() == without.validation.fingerprint()
    assert read_json(levers_run / "run.json")["data"]["validation"]["fingerprint"] == without.validation.fingerprint()
    assert without.train.fingerprint() == with_extra.sources[0].fingerprint  # data.source's own rows, unchanged
    assert not set(with_extra.validation.texts) & set(with_extra.train.texts)


def test_the_kept_adapter_carries_the_truncation_and_the_kept_epochs_temperature(levers_run):
    run = read_json(levers_run / "run.json")
    meta = read_json(levers_run / "adapter" / "yelp_lora.json")
    assert (meta["truncation"], meta["head_tokens"], meta["max_length"]) == ("head+tail", 16, 64)
    epochs = run["validation"]
    assert len(epochs) == 2 and all({"temperature", "ece", "ece_calibrated"} <= epoch.keys() for epoch in epochs)
    kept = max(epochs, key=lambda e: e["macro_f1"])  # the first best, as the callback keeps it
    assert run["best_epoch"] == kept
    assert meta["temperature"] == kept["temperature"] > 0


def test_predict_and_evaluation_cut_reviews_as_the_adapter_was_trained(levers_run, tmp_path):
    from yelp_lora.config import EvalSettings
    from yelp_lora.evaluation.evaluate import score_test_sample
    from yelp_lora.modeling.base import load_adapter
    from yelp_lora.modeling.forward import predict_logits, softmax

    model, tokenizer = load_adapter(levers_run / "adapter")
    temperature = read_json(levers_run / "adapter" / "yelp_lora.json")["temperature"]  # applied by predict and compare
    texts = _long_reviews(60)
    head_tail, _ = predict_logits(model, tokenizer, texts, max_length=64, head=16)
    head_only, truncated = predict_logits(model, tokenizer, texts, max_length=64)
    assert truncated.all() and not np.allclose(head_tail, head_only)

    # The tiny random BERT barely tells reviews apart, so `predict` is checked to the bit against each
    # cut of the same one review, in the same process (one text, no padding: the same arithmetic).
    answered = json.loads(cli("predict", "--adapter", str(levers_run), "--json", texts[-1]).stdout)[0]
    probabilities = np.array([answered["probabilities"][name] for name in LABEL_NAMES], dtype=np.float32)
    assert answered["truncated"]
    for head, expected in ((16, True), (None, False)):
        logits, _ = predict_logits(model, tokenizer, texts[-1:], max_length=64, head=head, batch_size=16)
        assert np.array_equal(probabilities, softmax(logits, temperature)[0]) is expected

    # compare / report score a sample through evaluate's path: the adapter's cut, to the bit
    labels = dict((text, label) for label, text in shared_rows())
    rows = tmp_path / "long.csv"
    with open(rows, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows((labels[text], text) for text in texts)
    scored = score_test_sample(levers_run, EvalSettings(data=str(rows), n=None))
    assert sorted(scored.rows.texts) == sorted(texts)
    for head, expected in ((16, True), (None, False)):
        logits, _ = predict_logits(model, tokenizer, scored.rows.texts, max_length=64, head=head, batch_size=64)
        assert np.array_equal(scored.probabilities["lora"], softmax(logits, temperature)) is expected
    result = tmp_path / "evaluation.json"
    cli("evaluate", "--adapter", str(levers_run), "--data", str(rows), "--json", str(result))
    predicted = scored.predictions("lora")
    matrix = np.zeros((5, 5), dtype=int)
    np.add.at(matrix, (scored.rows.labels, predicted), 1)
    assert read_json(result)["confusion_matrix"] == matrix.tolist()


# ---------------------------------------------------------------- extra sources: edge cases


def test_an_extra_source_named_like_a_test_split_is_refused_and_nothing_is_trained(tiny_bert_dir, data_dir, tmp_path):
    out = tmp_path / "run"
    linked = tmp_path / "more_reviews.csv"
    linked.symlink_to(data_dir / "test.csv")  # a link is judged by its target's name too
    for source in (data_dir / "open_dataset_test.csv", data_dir / "test.csv", linked):
        result = cli(*tiny_train_args(tiny_bert_dir, data_dir, out, "--extra-train", f"{source}:20"), check=False)
        assert result.returncode == 2, result.stderr
        assert f"extra training source {source}: its name says it is a test split" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (out / "run.json").exists() and not (out / "adapter").exists()
    # The main source too: one file named as a test split is not trained on.
    result = cli(*tiny_train_args(tiny_bert_dir, linked, out), check=False)
    assert result.returncode == 2 and f"data source {linked}: its name says it is a test split" in result.stderr


def test_an_adapter_trained_on_one_file_is_not_scored_on_its_own_rows_by_default(tiny_run, data_dir, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"  # as if trained with --data train.csv, one file
    shutil.copytree(tiny_run, run)
    meta = run / "adapter" / "yelp_lora.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "data_source": str(data_dir / "train.csv")}))
    for command in ("evaluate", "compare"):
        refused = cli(command, "--adapter", str(run), "--n", "10", check=False)
        assert refused.returncode == 2, refused.stderr
        assert f"the adapter was trained on one file, {data_dir / 'train.csv'}, which holds no test rows" in refused.stderr
    assert cli("evaluate", "--adapter", str(run), "--n", "10", "--data", str(data_dir)).returncode == 0


@pytest.mark.parametrize("value, why", [
    (":20", "the source is empty"),
    ("x.csv:0", "N is a number of rows, at least 1"),
    ("x.csv:1.5", "FRACTION is a share of the rows, above 0 and at most 1.0"),
    ("x.csv:nan", "FRACTION is a share of the rows"),
    ("x.csv:20:0.5", "'0.5' repeats a size"),
    ("x.csv:20:30", "'30' repeats a size"),
    ("x.csv:balanced:balanced", "'balanced' repeats a size or 'balanced' already given"),
    ("x.csv:lots", "'lots' is none of those"),
])
def test_extra_train_parse_errors_are_argparse_errors(value, why, capsys):
    from yelp_lora.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--extra-train", value, "--output-dir", "unused"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --extra-train: {value!r}: expected SOURCE[:N|:FRACTION][:balanced]; {why}" in err


def test_extra_train_parses_sizes_fractions_and_balance():
    from yelp_lora.cli import build_parser

    args = build_parser().parse_args([
        "train", "--extra-train", "a.csv:20:balanced", "--extra-train", "b.csv:0.25", "--extra-train", "c.csv:1.0",
        "--extra-train", "d.csv", "--output-dir", "unused",
    ])
    assert getattr(args, "data.extra_train") == [
        {"source": "a.csv", "samples": 20, "balance": True}, {"source": "b.csv", "fraction": 0.25},
        {"source": "c.csv", "fraction": 1.0}, {"source": "d.csv"},
    ]


def _rows(data_dir: Path, *extra: TrainSource, **options) -> object:
    return training_rows(DataConfig(source=str(data_dir), val_samples=32, extra_train=list(extra), **options), seed=7)


def test_the_same_file_as_data_source_adds_only_rows_not_already_there(data_dir):
    same = TrainSource(source=str(data_dir / "train.csv"), samples=20, balance=True)
    with pytest.raises(DataError, match=r"adds no rows: all 1999 of its rows are validation or training rows already"):
        _rows(data_dir, same)
    rows = _rows(data_dir, same, train_samples=64)
    primary, extra = rows.sources
    assert extra.overlap_dropped == 64 + 32 and extra.rows == 20
    assert extra.label_counts == [4] * 5  # still balanced: the draw came after the overlap was left out
    assert len(set(rows.train.texts)) == len(rows.train) == 84
    assert not set(rows.train.texts) & set(rows.validation.texts)


def test_a_balanced_draw_of_fewer_rows_than_labels_is_refused_naming_the_source(data_dir):
    source = str(data_dir / "open_dataset_train.csv")
    with pytest.raises(DataError, match=rf"extra training source {source}: a balanced draw of 3 rows over 5 labels "
                       r"leaves none per label: ask for at least 5"):
        _rows(data_dir, TrainSource(source=source, samples=3, balance=True))


@pytest.mark.parametrize("fraction", [0.001, 0.0001, 0.00002])
def test_a_fraction_is_of_the_sources_rows_rounded_and_never_zero(data_dir, fraction):
    rows = _rows(data_dir, TrainSource(source=str(data_dir / "open_dataset_train.csv"), fraction=fraction))
    assert rows.sources[1].rows == max(1, round(fraction * 19779))  # 20, 2, 1


def test_a_bad_row_in_an_extra_source_stops_the_run_or_is_skipped_and_counted(data_dir, tmp_path):
    with open(data_dir / "open_dataset_train.csv", newline="", encoding="utf-8") as handle:
        good = [(row["label"], row["text"]) for row, _ in zip(csv.DictReader(handle), range(30))]
    extra = tmp_path / "more.csv"
    with open(extra, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "text"])
        writer.writerows(good[:10] + [("9", "A made-up review with a label out of range.")] + good[10:] + [good[0]])
    source = TrainSource(source=str(extra))
    with pytest.raises(DataError, match=r"(?s)1 bad row\(s\) in .*more.csv.*line 12: label 9 is out of range 0-4"):
        _rows(data_dir, source)
    rows = _rows(data_dir, source, skip_bad_rows=True)
    primary, added = rows.sources
    assert (added.rows, added.file_rows, added.skipped_bad_rows, added.duplicates_dropped) == (30, 30, 1, 1)
    assert "line 12: label 9 is out of range 0-4" in added.skipped_examples[0]
    assert (primary.skipped_bad_rows, primary.duplicates_dropped, primary.file_rows) == (0, 0, 1999)


def test_head_tokens_not_below_max_length_is_refused_naming_the_field(tiny_bert_dir, data_dir, tmp_path):
    result = cli(*tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "run", "--truncation", "head+tail",
                                  "--head-tokens", "64"), check=False)
    assert result.returncode == 2
    assert "model.head_tokens: must be below model.max_length (64): the tail needs at least [SEP] (got 64)" in result.stderr
    assert not (tmp_path / "run").exists()
    assert load_config(None, {"model.truncation": "head+tail", "model.max_length": 64}).model.kept_head == 16


@pytest.mark.parametrize("flags, message", [
    (("--head-tokens", "16"), "model.head_tokens is set but unused: it counts only with model.truncation head+tail, "
     "and this config cuts reviews at their head"),
    (("--pad-to-max-length", "--pad-to-multiple-of", "16"), "train.pad_to_multiple_of is set but unused: "
     "train.pad_to_max_length pads every text to model.max_length already"),
    (("--epochs", "1", "--max-steps", "12"), "train.epochs is set but unused: train.max_steps sets how many steps the "
     "run takes"),
    (("--set", "train.group_by_length=false", "--micro-batch-size", "2"), "train.micro_batch_size is set but unused: "
     "micro-batches are how train.group_by_length runs a step, and this config runs each step as one batch"),
])
def test_a_setting_the_run_would_not_use_is_refused(tiny_bert_dir, data_dir, tmp_path, flags, message):
    result = cli(*tiny_train_args(tiny_bert_dir, data_dir, tmp_path / "run", *flags), check=False)
    assert result.returncode == 2 and result.stderr.startswith(f"yelp-lora train: error: {message}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_only_what_the_command_line_set_is_checked_for_use():
    """A preset may hold a value its other settings leave idle (a tune trial may draw what makes it count)."""
    config = load_config(None, {"model.truncation": "head", "model.head_tokens": 16})
    assert unused_settings(config, {"model.truncation"}) == []
    assert unused_settings(config, {"model.head_tokens"}) == [
        "model.head_tokens is set but unused: it counts only with model.truncation head+tail, and this config cuts "
        "reviews at their head"]


# ---------------------------------------------------------------- the loss


def _output(logits: torch.Tensor):
    from transformers.modeling_outputs import SequenceClassifierOutput

    return SequenceClassifierOutput(logits=logits)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator) * 2
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    return logits, labels


def test_the_default_loss_is_plain_cross_entropy_over_the_steps_rows(batch):
    logits, labels = batch
    loss = step_mean_loss()
    torch.testing.assert_close(loss(_output(logits), labels), torch.nn.functional.cross_entropy(logits, labels))
    # A micro-batch of a 12-row step: its sum over the step's rows.
    by_hand = -torch.log_softmax(logits, -1)[torch.arange(6), labels].sum() / 12
    torch.testing.assert_close(loss(_output(logits), labels, num_items_in_batch=12), by_hand)


def test_weights_smoothing_and_the_ordinal_term_match_a_hand_computation(batch):
    logits, labels = batch
    weights, smoothing, ordinal = torch.tensor([0.5, 2.0, 1.0, 1.5, 0.25]), 0.1, 0.7
    log_p = torch.log_softmax(logits.double(), -1).tolist()
    total = 0.0
    for row, label in zip(log_p, labels.tolist()):
        # cross-entropy against (1 - e) on the label plus e / 5 on every label, each label's term weighted
        total += -(1 - smoothing) * weights[label].item() * row[label]
        total += -(smoothing / 5) * sum(weights[k].item() * row[k] for k in range(5))
        # the expected distance in stars
        total += ordinal * sum(math.exp(row[k]) * abs(k - label) for k in range(5))
    loss = step_mean_loss(weights, smoothing, ordinal)(_output(logits), labels, num_items_in_batch=8)
    assert loss.item() == pytest.approx(total / 8, rel=1e-5)


def test_the_ordinal_term_costs_a_near_miss_less_than_a_far_one():
    loss = step_mean_loss(ordinal_weight=1.0)
    confident = torch.full((1, 5), -10.0)
    near, far = confident.clone(), confident.clone()
    near[0, 3], far[0, 0] = 10.0, 10.0  # 4 stars or 1 star for a 5-star review
    assert loss(_output(near), torch.tensor([4])) < loss(_output(far), torch.tensor([4]))


def test_class_weights_are_inverse_frequency_averaging_one_per_row_and_zero_for_an_absent_label():
    labels = [0] * 6 + [1] * 3 + [2] * 2 + [3] * 1  # no 5-star row
    weights = class_weights(labels)
    assert weights[4] == 0
    assert weights[labels].mean().item() == pytest.approx(1.0)
    counts = np.bincount(labels, minlength=5)
    assert weights[:4].tolist() == pytest.approx((len(labels) / (4 * counts[:4])).tolist())
    loss = step_mean_loss(weights, label_smoothing=0.1)(_output(torch.randn(12, 5)), torch.tensor(labels))
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- the temperature


def _calibrated_sample(temperature: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z / temperature): temperature is the one that calibrates z."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 5)) * 3
    scaled = logits / temperature
    probabilities = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = (probabilities.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_fit_temperature_recovers_the_temperature_that_calibrates_the_logits(temperature):
    logits, labels = _calibrated_sample(temperature, 20_000, seed=int(temperature * 10))
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(temperature, rel=0.05)
    assert (predictions_of(logits / fitted) == predictions_of(logits)).all()  # one positive number: argmax kept


def test_fit_temperature_on_degenerate_logits_keeps_them_as_they_are():
    labels = np.arange(20) % 5
    assert fit_temperature(np.zeros((20, 5)), labels) == 1.0  # all equal: every T fits as well
    assert fit_temperature(np.eye(5)[labels] * 60, labels) == 1.0  # all right by a huge margin
    assert fit_temperature(np.zeros((0, 5)), labels[:0]) == 1.0  # no rows
    broken = np.zeros((20, 5))
    broken[3, 2] = np.nan
    assert fit_temperature(broken, labels) == 1.0
    wrong = np.eye(5)[(labels + 1) % 5] * 60  # all wrong, all sure: as soft as the bound allows
    assert fit_temperature(wrong, labels) == pytest.approx(math.exp(3), rel=1e-3)


def test_a_relative_file_name_is_found_beside_data_sources_train_split(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here: it is data.source's directory that holds it
    rows = _rows(data_dir, TrainSource(source="open_dataset_train.csv", samples=50, balance=True))
    assert rows.sources[1].source == str(data_dir / "open_dataset_train.csv") and rows.sources[1].rows == 50
    with pytest.raises(DataError, match="not found"):
        _rows(data_dir, TrainSource(source="no_such_file.csv", samples=50))


def test_the_training_rows_are_rebuilt_from_a_moved_copy_of_the_data(tmp_path, tiny_bert_dir, data_dir):
    """An extra source named beside the data (as configs/demo.yaml names open_dataset_train.csv) has its
    path in its rows' ids: `calibrate --data` on a moved copy must still find the rows recorded."""
    import shutil

    from yelp_lora.artifacts import read_run
    from yelp_lora.data.mixing import run_training_rows

    trained_on, moved = tmp_path / "trained-on", tmp_path / "moved"
    trained_on.mkdir()
    for name in ("train.csv", "open_dataset_train.csv"):
        shutil.copy(data_dir / name, trained_on / name)
    run = tmp_path / "run"
    cli(*tiny_train_args(tiny_bert_dir, trained_on, run, "--max-steps", "1", "--extra-train", "open_dataset_train.csv:20"))
    trained_on.rename(moved)
    _, record = read_run(run)
    train, _ = run_training_rows(record, str(moved))
    assert train.fingerprint() == record.data.train.fingerprint and len(train) == 64 + 20
    with pytest.raises(DataError, match="data path not found"):
        run_training_rows(record)  # where run.json says it was: gone
