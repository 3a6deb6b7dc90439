"""Issue 15.4: `auto` chooses per machine, from one probe, and says why; `predict`, `serve` and the batch
job take the same prediction backend; every choice can be overridden.

The machine is what it is: these tests read the real probe, so on an AMX CPU or one without ONNX
Runtime they check that machine's choice (torch) and the fallback test has nothing to fall back from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import cli, review_texts

from yelp_lora.errors import ConfigError
from yelp_lora.inference.predictor import Predictor
from yelp_lora.modeling.hardware import auto_choices, auto_pad_multiple, has_amx, prediction_backend

CPU = torch.device("cpu")


def test_every_auto_setting_is_named_with_its_value_and_reason(monkeypatch):
    monkeypatch.delenv("YELP_LORA_INT8_ATTENTION", raising=False)  # what this machine gets without being asked
    choices = auto_choices(CPU)
    assert [c.setting for c in choices] == [
        "train.precision", "model.attention", "model.dropout_kernel", "train micro-batch", "train pad multiple",
        "prediction backend", "prediction batch", "int8 attention",
    ]
    assert all(c.value and len(c.why) > 20 for c in choices)
    backend = next(c for c in choices if c.setting == "prediction backend")
    assert backend == prediction_backend("auto", CPU)
    import importlib.util

    onnx_installed = importlib.util.find_spec("onnxruntime") is not None
    # ONNX Runtime fp32 measured faster than torch fp32 with the same answers on both CPU kinds.
    assert backend.value == ("onnx" if onnx_installed else "torch"), backend
    assert ("AMX" in backend.why) == has_amx(), backend
    batch = next(c for c in choices if c.setting == "prediction batch")
    assert batch.value == ("1" if backend.value == "onnx" else "16")
    # Padding multiples measured per CPU kind: 16 on AMX (its tiles' rows), 8 on the AVX-512 CPU.
    pad = next(c for c in choices if c.setting == "train pad multiple")
    assert pad.value == ("16" if has_amx() else "8"), pad
    assert auto_pad_multiple(torch.device("cuda")) == 1
    # The int8 graph's attention: ONNX's standard node where measured faster (AMX), QAttention elsewhere.
    attention = next(c for c in choices if c.setting == "int8 attention")
    assert attention.value == ("standard" if has_amx() else "fused"), attention


def test_the_int8_attention_form_can_be_asked_for_by_name(monkeypatch):
    for form in ("fused", "standard"):
        monkeypatch.setenv("YELP_LORA_INT8_ATTENTION", form)
        assert next(c for c in auto_choices(CPU) if c.setting == "int8 attention")[1:] == (
            form, "as asked ($YELP_LORA_INT8_ATTENTION)")
    monkeypatch.setenv("YELP_LORA_INT8_ATTENTION", "qattention")
    with pytest.raises(ConfigError, match=r"\$YELP_LORA_INT8_ATTENTION 'qattention': expected one of fused, standard"):
        auto_choices(CPU)


def test_a_named_backend_or_bf16_overrides_auto_and_an_unknown_one_is_refused():
    for backend in ("torch", "onnx", "onnx-int8", "openvino"):
        assert tuple(prediction_backend(backend, CPU)) == ("prediction backend", backend, "as asked")
    assert prediction_backend("auto", CPU, bf16=True).value == "torch"
    with pytest.raises(ConfigError, match="backend 'onxx': expected one of auto, torch, onnx, onnx-int8, openvino"):
        prediction_backend("onxx", CPU)


def test_bf16_with_an_onnx_backend_is_refused_rather_than_ignored(tiny_run):
    for backend, precision in (("onnx", "fp32"), ("onnx-int8", "int8")):
        result = cli("predict", "--adapter", str(tiny_run), "--backend", backend, "--bf16", "Great tacos.", check=False)
        assert result.returncode == 2, result.stderr
        assert f"bf16 weights with backend {backend}: ONNX Runtime runs its export in {precision}" in result.stderr
        assert "Traceback" not in result.stderr


def test_predict_serves_with_the_auto_backend_and_says_which(tiny_run):
    chosen = prediction_backend("auto", CPU).value
    predictor = Predictor(tiny_run)
    assert (predictor.backend, predictor.info.backend) == (chosen, chosen)
    torch_predictor = Predictor(tiny_run, backend="torch")
    assert torch_predictor.info.backend == "torch"
    texts = review_texts(6)
    np.testing.assert_allclose(
        predictor.probabilities(texts).probabilities, torch_predictor.probabilities(texts).probabilities, atol=1e-4,
        err_msg="auto never trades answers for speed: its fp32 backend answers as torch does",
    )
    result = cli("predict", "--adapter", str(tiny_run), "--json", *texts)
    assert [p["label"] for p in json.loads(result.stdout)] == [p.label for p in torch_predictor.predict(texts)]


@pytest.fixture
def blocked_cache(tmp_path, monkeypatch):
    """$YELP_LORA_CACHE names a file, so no ONNX export can be written."""
    if prediction_backend("auto", CPU).value == "torch":
        pytest.skip("auto picks torch on this machine: there is no ONNX Runtime to fall back from")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the export cache would go")
    monkeypatch.setenv("YELP_LORA_CACHE", str(blocked))
    return blocked


def test_auto_falls_back_to_torch_when_onnx_cannot_be_set_up(tiny_run, blocked_cache):
    predictor = Predictor(tiny_run)
    assert predictor.backend == "torch" and "could not be set up" in predictor.backend_reason
    assert predictor.predict(["Great tacos."])[0].stars in range(1, 6)
    asked = cli("predict", "--adapter", str(tiny_run), "--backend", "onnx", "Great tacos.", check=False)
    assert asked.returncode == 2 and f"cannot write {blocked_cache}" in asked.stderr, asked.stderr


def test_a_batch_job_falls_back_too_and_records_the_backend_that_answered(tiny_run, blocked_cache, tmp_path):
    source, output = tmp_path / "reviews.txt", tmp_path / "out.jsonl"
    source.write_text("Great tacos.\nCold fries, rude staff.\n")
    summary = tmp_path / "summary.json"
    result = cli("predict", "--adapter", str(tiny_run), "--input", str(source), "--output", str(output),
                 "--json-summary", str(summary))
    assert json.loads(summary.read_text())["backend"] == "torch" and " on torch" in result.stderr, result.stderr
    assert [json.loads(line)["row"] for line in output.read_text().splitlines()] == [0, 1]


def stopped_job(adapter, tmp_path) -> list[str]:
    """A batch job of three reviews in chunks of one, stopped by the blank second one: its args."""
    source = tmp_path / "reviews.csv"
    source.write_text('text\nGreat tacos.\n"   "\n"Cold fries, rude staff."\n')
    args = ["predict", "--adapter", str(adapter), "--input", str(source), "--output", str(tmp_path / "out.jsonl"),
            "--chunk-size", "1"]
    stopped = cli(*args, check=False)
    assert stopped.returncode == 2 and "line 3: whitespace-only text" in stopped.stderr, stopped.stderr
    return args


def test_auto_resumes_a_batch_job_on_the_backend_it_fell_back_to(tiny_run, blocked_cache, tmp_path, monkeypatch):
    args = stopped_job(tiny_run, tmp_path)  # on torch: the export cache is blocked
    monkeypatch.setenv("YELP_LORA_CACHE", str(tmp_path / "cache"))  # ONNX Runtime could be set up now
    summary = tmp_path / "summary.json"
    resumed = cli(*args, "--resume", "--skip-bad-rows", "--json-summary", str(summary))
    assert json.loads(summary.read_text())["backend"] == "torch", resumed.stderr
    assert json.loads(summary.read_text())["resumed_chunks"] == 1
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [record["error"] for record in records] == [None, "whitespace-only text", None]


def test_a_resumed_auto_job_whose_backend_cannot_run_says_so(tiny_run, blocked_cache, tmp_path, monkeypatch):
    chosen = prediction_backend("auto", CPU).value
    monkeypatch.setenv("YELP_LORA_CACHE", str(tmp_path / "cache"))
    args = stopped_job(tiny_run, tmp_path)  # on what auto chose
    monkeypatch.setenv("YELP_LORA_CACHE", str(blocked_cache))  # which cannot be set up now
    resumed = cli(*args, "--resume", "--skip-bad-rows", check=False)
    assert resumed.returncode == 2, resumed.stderr
    assert f"--resume: this job began on backend {chosen} (" in resumed.stderr and "cannot run here now" in resumed.stderr


def test_a_plain_peft_adapter_is_read_with_defaults_that_are_named(tiny_run, tmp_path, caplog):
    import shutil

    plain = tmp_path / "plain"  # no yelp_lora.json: how it was trained is unknown
    shutil.copytree(tiny_run / "adapter", plain)
    (plain / "yelp_lora.json").unlink()
    predictor = Predictor(plain, backend="torch")
    assert (predictor.meta.max_length, predictor.meta.temperature) == (256, 1.0)
    assert (f"{plain} has no yelp_lora.json: reading reviews up to 256 tokens cut at their head, temperature 1"
            in caplog.text)
