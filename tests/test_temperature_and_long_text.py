"""What prediction gives for probabilities: softmax(logits / the adapter's temperature) on every path
(torch and ONNX, predict, batch files, the service, the MCP tool), and `--long-text chunk`, which reads
a review longer than max_length as overlapping windows and averages their probabilities.

The windows are computed here by hand from the tokenizer and run one at a time, unpadded, so the
test does not lean on the code it checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from scipy.special import softmax
from support import Server, cli, mcp_session, read_json, review_texts, run_cli, shared_rows

from yelp_lora.config import MAX_WINDOWS_PER_TEXT
from yelp_lora.errors import ConfigError
from yelp_lora.inference.predictor import Predictor
from yelp_lora.modeling.base import load_adapter
from yelp_lora.modeling.forward import predict_logits

pytestmark = pytest.mark.slow
TEMPERATURE = 0.4  # far enough from 1 (and from what training fits) that a missed division shows


def with_temperature(run: Path, target: Path, temperature: float) -> Path:
    """A copy of a run whose yelp_lora.json carries `temperature`."""
    shutil.copytree(run, target)
    meta_file = target / "adapter" / "yelp_lora.json"
    meta_file.write_text(json.dumps({**read_json(meta_file), "temperature": temperature}, indent=2))
    return target


@pytest.fixture(scope="module")
def scaled_run(minilm_run, tmp_path_factory) -> Path:
    return with_temperature(minilm_run, tmp_path_factory.mktemp("scaled") / "run", TEMPERATURE)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real reviews: ten that fit in 256 tokens, two longer (2 and 10 windows' worth, so the second is
    read in 8 spread-out windows), and two of the longest together (past 8 windows: gaps, truncated)."""
    longest = sorted((text for _, text in shared_rows()), key=len)[-2:]
    return review_texts() + [" ".join(longest)]


def hand_windows(ids: list[int], max_length: int) -> list[list[int]]:
    """The windows the README describes: [CLS] + max_length - 2 ids + [SEP], the fewest (at most 8)
    whose neighbours overlap by half a window or more, evenly spread from the text's start to its end."""
    if len(ids) <= max_length:
        return [ids]
    body, span = ids[1:-1], max_length - 2
    last = len(body) - span
    count = min(MAX_WINDOWS_PER_TEXT, 1 + int(np.ceil(last / (span // 2))))
    return [[ids[0], *body[round(i * last / (count - 1)) :][:span], ids[-1]] for i in range(count)]


def test_probabilities_are_the_softmax_of_the_logits_over_the_adapters_temperature(scaled_run, texts, capsys):
    adapter, tokenizer = load_adapter(scaled_run / "adapter", merge=False)  # unmerged: not the predictor's own model
    logits, cut = predict_logits(adapter, tokenizer, texts, max_length=256, batch_size=4)
    predictor = Predictor(scaled_run, backend="torch")
    scored = predictor.probabilities(texts)
    np.testing.assert_allclose(scored.probabilities, softmax(logits / TEMPERATURE, axis=1), atol=1e-5)
    assert np.abs(scored.probabilities - softmax(logits, axis=1)).max() > 0.01, "the temperature changed them"
    assert (scored.probabilities.argmax(1) == logits.argmax(1)).all(), "and never the label"
    assert (scored.truncated == cut).all() and (scored.windows == 1).all()
    assert (predictor.info.temperature, predictor.info.long_text) == (TEMPERATURE, "truncate")
    # The CLI prints the same, batch or one by one.
    printed = json.loads(cli("predict", "--adapter", str(scaled_run), "--backend", "torch", "--json", *texts).stdout)
    for row, expected in zip(printed, scored.probabilities, strict=True):
        assert list(row["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
        assert row["confidence"] == pytest.approx(expected.max(), abs=1e-5) and row["windows"] == 1


def test_chunk_mode_averages_the_windows_and_leaves_short_reviews_alone(scaled_run, texts):
    truncating, chunking = Predictor(scaled_run, backend="torch"), Predictor(scaled_run, backend="torch", long_text="chunk")
    cut, windowed = truncating.probabilities(texts), chunking.probabilities(texts)
    ids = truncating.tokenizer(texts)["input_ids"]
    expected_windows = []
    for index, text_ids in enumerate(ids):
        windows = hand_windows(text_ids, 256)
        expected_windows.append(len(windows))
        with torch.inference_mode():
            window_logits = [chunking.model(input_ids=torch.tensor([w])).logits[0].numpy() for w in windows]
        expected = softmax(np.array(window_logits) / TEMPERATURE, axis=1).mean(axis=0)
        np.testing.assert_allclose(windowed.probabilities[index], expected, atol=1e-5, err_msg=f"text {index}")
    lengths = np.array([len(text_ids) for text_ids in ids])
    assert windowed.windows.tolist() == expected_windows
    assert expected_windows[-3:] == [2, MAX_WINDOWS_PER_TEXT, MAX_WINDOWS_PER_TEXT] and lengths[-1] > 8 * 254
    assert windowed.truncated.tolist() == [False] * (len(texts) - 1) + [True], "only the 2-review text has gaps"
    short = lengths <= 256
    assert short.sum() == len(texts) - 3
    np.testing.assert_allclose(windowed.probabilities[short], cut.probabilities[short], atol=1e-6)
    assert chunking.info.long_text == "chunk" and chunking.max_windows == MAX_WINDOWS_PER_TEXT


def test_onnx_applies_the_temperature_and_reads_windows_as_torch_does(tiny_run, texts, tmp_path, monkeypatch):
    monkeypatch.setenv("YELP_LORA_CACHE", str(tmp_path / "cache"))
    # The tiny model's logits are small: a small temperature makes them count.
    run = with_temperature(tiny_run, tmp_path / "run", 0.05)
    adapter, tokenizer = load_adapter(run / "adapter", merge=False)
    logits, _ = predict_logits(adapter, tokenizer, texts, max_length=64, batch_size=4)
    for long_text in ("truncate", "chunk"):
        torch_scored = Predictor(run, backend="torch", long_text=long_text).probabilities(texts)
        onnx_scored = Predictor(run, backend="onnx", long_text=long_text).probabilities(texts)
        if long_text == "truncate":
            np.testing.assert_allclose(onnx_scored.probabilities, softmax(logits / 0.05, axis=1), atol=1e-4)
        np.testing.assert_allclose(onnx_scored.probabilities, torch_scored.probabilities, atol=1e-4, err_msg=long_text)
        assert (onnx_scored.windows == torch_scored.windows).all() and (onnx_scored.truncated == torch_scored.truncated).all()
    assert onnx_scored.windows.max() == MAX_WINDOWS_PER_TEXT  # max length 64: most reviews take several windows


def test_batch_files_in_chunk_mode_say_how_each_review_was_read(tiny_run, texts, tmp_path):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    cli("predict", "--adapter", str(tiny_run), "--input", str(source), "--output", str(output), "--long-text", "chunk")
    records = [json.loads(line) for line in output.read_text().splitlines()]
    expected = Predictor(tiny_run, long_text="chunk").predict(texts)
    assert [r["windows"] for r in records] == [p.windows for p in expected] and max(r["windows"] for r in records) > 1
    for record, prediction in zip(records, expected, strict=True):
        assert record["label"] == prediction.label and record["truncated"] == prediction.truncated
        assert record["confidence"] == pytest.approx(prediction.confidence, abs=1e-6)


def test_served_and_agent_answers_in_chunk_mode_equal_predict(registry, texts, tmp_path):
    chunked = ["--version", "v1", "--registry", str(registry), "--long-text", "chunk"]
    predicted = json.loads(cli("predict", *chunked, "--json", *texts).stdout)
    assert [row["windows"] for row in predicted][-3:] == [2, MAX_WINDOWS_PER_TEXT, MAX_WINDOWS_PER_TEXT]
    temperature = read_json(registry / "v1" / "adapter" / "yelp_lora.json")["temperature"]

    def same_answers(results: list[dict]) -> None:
        for got, want in zip(results, predicted, strict=True):
            assert (got["label"], got["windows"], got["truncated"]) == (want["label"], want["windows"], want["truncated"])
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)

    server = Server(*chunked, log=tmp_path / "serve.log").wait_ready()
    try:
        body = httpx.post(f"{server.url}/v1/classify", json={"texts": texts}, timeout=300).json()
        limits = httpx.get(f"{server.url}/v1/model").json()["limits"]
    finally:
        server.stop()
    assert (body["model"]["temperature"], body["model"]["long_text"]) == (temperature, "chunk")
    assert limits["max_windows_per_text"] == MAX_WINDOWS_PER_TEXT
    same_answers(body["results"])

    async def call(client):
        return await client.call_tool("classify_review_sentiment", {"texts": texts})

    answer = mcp_session(registry, call, "--long-text", "chunk")
    assert not answer.is_error and answer.structured_content["model"] == body["model"]
    same_answers(answer.structured_content["results"])


def test_an_unknown_long_text_mode_is_one_clear_error(tiny_run):
    result = run_cli("predict", "--adapter", str(tiny_run), "--long-text", "sideways", "great", check=False)
    assert result.returncode == 2 and "invalid choice: 'sideways'" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="long_text 'sideways': expected one of truncate, chunk"):
        Predictor(tiny_run, long_text="sideways")
