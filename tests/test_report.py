"""The report, the classical baseline and the seed sweep, on one tiny real MiniLM run.

One adapter is trained per module (64 reviews, 8 steps) and one report is built from it
on a small test sample; the page is then opened in headless Chromium.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from support import DEMO_CONFIG, MINILM_RUN

from yelp_lora import cli
from yelp_lora.artifacts import finished_run, read_run
from yelp_lora.config import RunConfig
from yelp_lora.data.mixing import run_training_rows
from yelp_lora.data.sampling import sample_split
from yelp_lora.data.sources import load_split
from yelp_lora.data.tokenize import tokenize
from yelp_lora.errors import DataError
from yelp_lora.evaluation.classical import fit_classical
from yelp_lora.evaluation.report import REPORT_HTML, REPORT_JSON, REPORT_MD, Block, render_html, render_markdown
from yelp_lora.modeling.base import load_tokenizer
from yelp_lora.util.hashing import file_sha256

pytestmark = pytest.mark.slow
TEST_N = 40


@pytest.fixture(scope="module")
def run_dir(minilm_run, tmp_path_factory) -> Path:
    """A copy of the session's MiniLM run: the report and compare.json are written into it."""
    copy = tmp_path_factory.mktemp("report-run") / "run"
    shutil.copytree(minilm_run, copy)
    return copy


@pytest.fixture(scope="module")
def report_dir(run_dir) -> Path:
    command = ["report", str(run_dir), "--n", str(TEST_N), "--resamples", "200", "--compare-json", str(run_dir / "compare.json")]
    assert cli.main(command) == 0
    return run_dir / "report"


def test_report_writes_the_comparison_compare_writes(report_dir, run_dir, tmp_path, capsys):
    # What `make demo` relies on: one scoring pass gives the report and compare's own JSON.
    alone = tmp_path / "compare.json"
    assert cli.main(["compare", "--adapter", str(run_dir), "--with-classical", "--n", str(TEST_N), "--json", str(alone)]) == 0
    assert "LoRA Macro-F1" in capsys.readouterr().out
    from_report = json.loads((run_dir / "compare.json").read_text())
    assert from_report == json.loads(alone.read_text())
    assert from_report["n"] == TEST_N and "classical" in from_report


def test_report_files_and_figures(report_dir):
    from PIL import Image

    figures = sorted(p.name for p in report_dir.glob("*.png"))
    assert len(figures) == 7
    for name in figures:
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [1, 2]) > 2, f"{name} is blank"
    page, twin = (report_dir / REPORT_HTML).read_text(), (report_dir / REPORT_MD).read_text()
    for name in figures:
        assert f'src="{name}"' in page and f"]({name})" in twin
    for text in (page, twin):
        for heading in ("Scores on the test sample", "McNemar", "Long reviews", "Calibration", "Label shift",
                        "What the adapter gets wrong"):
            assert heading in text
        assert "before: softmax(logits)" in text and "after: softmax(logits / T)" in text
    assert "TF-IDF + logistic regression" in page and "QWK" in page


def test_report_numbers_are_consistent(report_dir, run_dir, data_dir):
    numbers = json.loads((report_dir / REPORT_JSON).read_text())
    assert numbers["n"] == TEST_N and set(numbers["ordinal"]) == {"baseline", "lora", "classical"}
    for name in ("baseline", "lora", "classical"):
        ci = numbers["bootstrap"][name]
        assert ci["accuracy"]["value"] == numbers[name]["accuracy"]
        assert ci["accuracy"]["low"] <= numbers[name]["accuracy"] <= ci["accuracy"]["high"]
        assert numbers["calibration"][name]["ece"] == numbers["ece"][name]
        assert sum(b["count"] for b in numbers["calibration"][name]["bins"]) == TEST_N
    assert numbers["classical_fit"]["train_fingerprint"] == read_run(run_dir)[1].data.train.fingerprint
    # The adapter's reliability before its temperature too: the ECE compare.json gives as raw.
    raw = numbers["calibration"]["lora_raw"]
    assert raw["ece"] == numbers["temperature_scaling"]["ece_raw"] and sum(b["count"] for b in raw["bins"]) == TEST_N
    assert numbers["temperature_scaling"]["ece_calibrated"] == numbers["ece"]["lora"]
    # The long reviews are the test reviews the adapter's tokenizer makes longer than its max_length.
    test_rows = sample_split(load_split(str(data_dir), "test"), TEST_N, 42)
    tokenizer = load_tokenizer(str(run_dir / "adapter"))
    long = sum(len(ids) > 256 for ids in tokenizer(test_rows.texts)["input_ids"])
    assert (numbers["long_reviews"]["long"]["n"], numbers["long_reviews"]["short"]["n"]) == (long, TEST_N - long)
    # report.json carries numbers only: no review of the sample is quoted in it
    raw = (report_dir / REPORT_JSON).read_text()
    assert not any(text[:60] in raw for text in test_rows.texts)


def test_report_quotes_real_misclassified_reviews(report_dir):
    page = (report_dir / REPORT_HTML).read_text()
    assert page.count("<blockquote>") >= 1 and "LoRA confidence" in page


def test_pages_escape_review_text():
    blocks = [Block("h1", "t"), Block("quote", '<script>alert("x")</script> **bold** & [link](http://x)', source="row 1")]
    page, twin = render_html("t", blocks), render_markdown(blocks)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<script>" not in twin and r"\*\*bold\*\*" in twin and r"\[link\]" in twin


def test_report_renders_in_headless_chromium(report_dir):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="yelp-lora-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1200,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get((report_dir / REPORT_HTML).as_uri())
        driver.implicitly_wait(5)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        assert len(images) == len(list(report_dir.glob("*.png")))
        assert all(complete and width > 0 for _, complete, width in images), images
        shot = report_dir.parent / "report-screenshot.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert (pixels < 200).mean() > 0.01, "the screenshot is (nearly) blank"


def test_classical_baseline_trains_on_the_adapters_rows(run_dir):
    _, record = read_run(run_dir)
    train, validation = run_training_rows(record)
    rows = MINILM_RUN["train_samples"]
    assert train.fingerprint() == record.data.train.fingerprint and len(train) == rows
    assert validation.fingerprint() == record.data.validation.fingerprint
    assert not set(train.row_ids) & set(validation.row_ids)
    fitted = fit_classical(run_dir / "adapter")  # the adapter directory finds its run too
    assert fitted.summary.train_rows == rows and fitted.summary.train_fingerprint == train.fingerprint()
    probabilities = fitted.probabilities(validation.texts[:5])
    assert probabilities.shape == (5, 5) and np.allclose(probabilities.sum(axis=1), 1)


def test_classical_refuses_when_rows_differ(run_dir, tmp_path, capsys):
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["data"]["train_samples"] = MINILM_RUN["train_samples"] - 1  # run.json no longer describes the rows it fingerprinted
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="fingerprint"):
        fit_classical(tmp_path)
    shutil.copytree(run_dir / "adapter", tmp_path / "adapter")
    assert cli.main(["compare", "--adapter", str(tmp_path), "--n", "5", "--with-classical"]) == 2
    assert "cannot rebuild the adapter's training rows" in capsys.readouterr().err


def test_bad_report_and_sweep_requests_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "run.json not found" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path), "--resamples", "0"]) == 2
    assert "--resamples must be at least 1" in capsys.readouterr().err
    assert cli.main(["train", "--config", DEMO_CONFIG, "--seeds", "0", "--output-dir", str(tmp_path)]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


def test_compare_with_classical(run_dir, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert cli.main(["compare", "--adapter", str(run_dir), "--n", str(TEST_N), "--with-classical", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Classical Accuracy" in printed and "LoRA − Classical" in printed and "McNemar" in printed
    result = json.loads(out.read_text())
    assert result["classical"] == {k: result["detailed"]["classical"][k] for k in ("accuracy", "macro_f1")}
    assert set(result["mcnemar"]) == {"lora_vs_baseline", "lora_vs_classical"}


def test_long_steps_print_plain_lines_off_a_terminal(run_dir, data_dir, capsys):
    from yelp_lora.modeling.base import load_adapter
    from yelp_lora.modeling.forward import predict_logits

    model, tokenizer = load_adapter(run_dir / "adapter")
    rows = sample_split(load_split(str(data_dir), "train"), 10, 0)
    tokenize(rows, tokenizer, 64)
    predict_logits(model, tokenizer, rows.texts, batch_size=4, progress=True, desc="Scoring")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "Tokenising train: 100% 10/10" in err and "Scoring: 100% 3/3" in err


def test_seed_sweep(data_dir, tmp_path, capsys):
    args = ["train", "--config", DEMO_CONFIG, "--data", str(data_dir), "--train-samples", "32", "--val-samples", "20",
            "--max-steps", "2", "--seeds", "2", "--compare-n", "10", "--set", "data.extra_train=[]",
            "--output-dir", str(tmp_path)]
    assert cli.main(args) == 0
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["seeds"] == [42, 43]
    assert [json.loads((tmp_path / f"seed-{s}" / "run.json").read_text())["config"]["train"]["seed"] for s in (42, 43)] == [42, 43]
    accuracy = summary["metrics"]["lora_accuracy"]
    assert accuracy["values"] == [run["lora_accuracy"] for run in summary["runs"]]
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["values"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["values"], ddof=1))
    assert "lora_accuracy" in capsys.readouterr().out


def test_sweep_reuses_only_a_seed_finished_with_the_same_config(run_dir):
    record = json.loads((run_dir / "run.json").read_text())
    config = RunConfig.model_validate(record["config"])
    assert finished_run(run_dir, config).model_dump(mode="json") == record
    other_seed = config.model_copy(update={"train": config.train.model_copy(update={"seed": config.train.seed + 1})})
    assert finished_run(run_dir, other_seed) is None


def test_report_never_replaces_a_foreign_directory(run_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is not a report directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_registry_add_refuses_test_scores_of_other_weights(report_dir, run_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    assert json.loads((run_dir / "compare.json").read_text())["adapter_sha256"] == file_sha256(
        run_dir / "adapter" / "adapter_model.safetensors")
    stale = tmp_path / "run"  # its compare.json scored the weights before these
    shutil.copytree(run_dir, stale)
    weights = stale / "adapter" / "adapter_model.safetensors"
    save_file({name: tensor * 1.5 for name, tensor in load_file(weights).items()}, weights)
    record = json.loads((stale / "run.json").read_text())  # a run trained again, its record and adapter one run's
    (stale / "run.json").write_text(json.dumps({**record, "adapter_sha256": file_sha256(weights)}))
    capsys.readouterr()
    assert cli.main(["registry", "add", str(stale), "--registry", str(tmp_path / "registry")]) == 2
    assert f"{stale / 'compare.json'} scored other adapter weights" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "v1").exists()
