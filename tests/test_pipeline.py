"""The reference job end to end on the real MiniLM and real rows: train, evaluate, compare, predict."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from support import DEMO_CONFIG, MINILM_RUN, cli, read_json, run_cli

from yelp_lora.modeling import dropout

pytestmark = pytest.mark.slow


def test_train_writes_a_complete_run(minilm_run):
    adapter = minilm_run / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json", "yelp_lora.json",
                 "int8_calibration.safetensors"):
        assert (adapter / name).is_file(), name
    assert not (minilm_run / "checkpoints").exists(), "only the best adapter is kept"
    assert not list(adapter.glob("*.bin")) and not list(adapter.glob("*.pt"))
    config = read_json(adapter / "config.json")
    assert config["id2label"] == {"0": "strong_negative", "1": "negative", "2": "neutral", "3": "positive", "4": "strong_positive"}
    adapter_config = read_json(adapter / "adapter_config.json")
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    assert sorted(adapter_config["target_modules"]) == ["query", "value"]

    run = read_json(minilm_run / "run.json")
    assert run["adapter_sha256"] == hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert run["config"]["train"]["seed"] == MINILM_RUN["seed"] and run["config"]["model"]["name_or_path"] == "minilm"
    assert run["data"]["train"]["rows"] == MINILM_RUN["train_samples"]
    assert run["data"]["validation"]["rows"] == MINILM_RUN["val_samples"]
    assert len(run["data"]["train"]["fingerprint"]) == 64
    assert run["parameters"]["line"].startswith("trainable params: 75,653 || all params: 22,790,794")
    assert {"torch", "transformers", "peft"} <= set(run["environment"]["libraries"])
    assert run["environment"]["hardware"]["cpu_count"] >= 1
    assert [round(e["epoch"]) for e in run["validation"]] == [1, 2]
    assert all(0 <= e["macro_f1"] <= 1 for e in run["validation"])
    assert run["best_epoch"]["macro_f1"] == max(e["macro_f1"] for e in run["validation"])
    assert run["history"] and {"loss", "grad_norm", "learning_rate", "epoch"} <= set(run["history"][0])
    learning_rates = [h["learning_rate"] for h in run["history"]]
    assert learning_rates == sorted(learning_rates, reverse=True), "linear decay"
    assert run["train_samples_per_second"] > 0 and run["train_runtime"] > 0
    # config 'auto': on CPU eager attention (SDPA with attention dropout takes a slow path there)
    # with fast dropout masks, and each step of 16 rows sorted into micro-batches of 4.
    cuda = torch.cuda.is_available()
    assert run["resolved"]["attention"] == ("sdpa" if cuda else dropout.ATTENTION)
    assert (run["resolved"]["micro_batch_size"], run["resolved"]["gradient_accumulation_steps"]) == (
        (16, 1) if cuda else (4, 4)
    )


def test_the_kept_adapter_is_the_best_epoch(minilm_run, data_dir):
    """Evaluating the kept adapter on the validation rows reproduces the best epoch's score."""
    from yelp_lora.artifacts import resolve_adapter_dir
    from yelp_lora.data.sampling import train_val_split
    from yelp_lora.data.sources import load_split
    from yelp_lora.metrics import headline, predictions_of
    from yelp_lora.modeling.base import load_adapter
    from yelp_lora.modeling.forward import predict_logits

    run = read_json(minilm_run / "run.json")
    train = load_split(str(data_dir), "train")
    _, validation = train_val_split(train, MINILM_RUN["val_samples"], MINILM_RUN["train_samples"], seed=MINILM_RUN["seed"])
    assert validation.fingerprint() == run["data"]["validation"]["fingerprint"]
    model, tokenizer = load_adapter(resolve_adapter_dir(minilm_run), merge=False)
    logits, _ = predict_logits(model, tokenizer, validation.texts, bf16=run["resolved"]["bf16"])
    score = headline(validation.labels, predictions_of(logits))
    assert score["macro_f1"] == pytest.approx(run["best_epoch"]["macro_f1"], abs=0.03)


def test_scores_on_a_file_the_adapter_learnt_from_are_named_and_flagged(minilm_run, data_dir):
    result = run_cli("evaluate", "--adapter", str(minilm_run), "--data", str(data_dir / "train.csv"), "--n", "10")
    assert result.stdout.startswith(f"===== test: {data_dir / 'train.csv'} (N=10) =====\n")
    assert (f"note: {data_dir / 'train.csv'} is a file the adapter was trained or validated on (its run.json says "
            "so): these scores are not held-out") in result.stderr
    held_out = run_cli("evaluate", "--adapter", str(minilm_run), "--data", str(data_dir), "--n", "10")
    assert held_out.stdout.startswith(f"===== test: {data_dir / 'test.csv'} (N=10) =====\n")
    assert "not held-out" not in held_out.stderr


def test_compare_prints_the_reference_block(minilm_run, data_dir, tmp_path):
    out = tmp_path / "compare.json"
    result = run_cli("compare", "--adapter", str(minilm_run), "--data", str(data_dir), "--n", "60", "--json", str(out))
    lines = result.stdout.splitlines()
    assert lines[0] == "===== Evaluation Results (Yelp Test, N=60) ====="
    assert lines[1].startswith("Baseline Accuracy : 0.") and lines[2].startswith("LoRA Accuracy     : 0.")
    assert lines[4].startswith("Baseline Macro-F1 : ") and lines[5].startswith("LoRA Macro-F1     : ")
    assert lines[7] == "===== Summary =====" and lines[8].startswith("Accuracy Gain     : ")
    assert any(line.startswith("Extreme reversals") for line in lines)
    payload = json.loads(out.read_text())
    assert {"n", "seed", "baseline", "lora", "gain", "label_shift", "extreme_reversals"} <= set(payload)
    assert payload["n"] == 60 and payload["seed"] == 42
    assert payload["gain"]["accuracy"] == pytest.approx(payload["lora"]["accuracy"] - payload["baseline"]["accuracy"])
    shift_total = sum(row["count"] for row in payload["label_shift"])
    assert shift_total <= 60 and all(row["from"] != row["to"] for row in payload["label_shift"])
    counts = [row["count"] for row in payload["label_shift"]]
    assert counts == sorted(counts, reverse=True)
    # The shift table is exactly what the two models' predictions imply.
    base_cm = np.array(payload["detailed"]["baseline"]["confusion_matrix"])
    lora_cm = np.array(payload["detailed"]["lora"]["confusion_matrix"])
    assert base_cm.sum() == lora_cm.sum() == 60
    assert f"{payload['label_shift'][0]['from']} → {payload['label_shift'][0]['to']} : {counts[0]}" in result.stdout
    # The adapter's scores use its temperature; its calibration error is given without and with it.
    scaling = payload["temperature_scaling"]
    assert scaling["temperature"] == read_json(minilm_run / "adapter" / "yelp_lora.json")["temperature"]
    assert scaling["ece_calibrated"] == payload["ece"]["lora"] and 0 <= scaling["ece_raw"] <= 1
    assert f"LoRA ECE raw       : {scaling['ece_raw']:.4f}" in result.stdout
    assert f"(LoRA: softmax(logits / {scaling['temperature']:.4g}), fitted on validation)" in result.stdout
    # An adapter that carries no temperature (--no-calibrate) is not said to have one fitted.
    plain = tmp_path / "plain"
    shutil.copytree(minilm_run, plain)
    meta = read_json(plain / "adapter" / "yelp_lora.json")
    (plain / "adapter" / "yelp_lora.json").write_text(json.dumps({**meta, "temperature": 1.0}))
    unscaled = cli("compare", "--adapter", str(plain), "--data", str(data_dir), "--n", "10")
    assert "(LoRA: no temperature: trained with --no-calibrate, or before temperatures were fitted)" in unscaled.stdout
    # Reviews longer than the adapter's 256 tokens, scored apart from the rest: the two groups make up the sample.
    split = payload["long_reviews"]
    long, short = split["long"], split["short"]
    assert split["max_length"] == 256 and split["truncation"] == "head"
    assert long["n"] + short["n"] == 60 and long["n"] > 0
    for name in ("baseline", "lora"):
        overall = (long["n"] * long["scores"][name]["accuracy"] + short["n"] * short["scores"][name]["accuracy"]) / 60
        assert overall == pytest.approx(payload[name]["accuracy"])
    assert f"{long['n']} of 60 test reviews are longer than the adapter's 256 tokens; {short['n']} fit." in result.stdout


def test_evaluate_reports_per_class_scores_and_confusion(minilm_run, data_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--adapter", str(minilm_run / "adapter"), "--data", str(data_dir), "--n", "50", "--json", str(out))
    payload = json.loads(out.read_text())
    assert payload["n"] == 50 and set(payload["per_class"]) == {"strong_negative", "negative", "neutral", "positive", "strong_positive"}
    assert np.array(payload["confusion_matrix"]).sum() == 50
    assert "Confusion matrix" in result.stdout and "Macro-F1" in result.stdout


def test_predict_text_and_every_input_format(minilm_run, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["Absolutely wonderful, best meal of my life!", "Cold food, rude staff, never coming back."]
    direct = json.loads(run_cli("predict", "--adapter", str(minilm_run), *texts, "--json").stdout)
    assert [row["text"] for row in direct] == texts
    for row in direct:
        assert row["stars"] == row["label_id"] + 1 and set(row["probabilities"]) == {
            "strong_negative", "negative", "neutral", "positive", "strong_positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["confidence"] == max(row["probabilities"].values())
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "in.csv").write_text("text\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet")
    for name in ("in.txt", "in.csv", "in.jsonl", "in.parquet"):  # in this process: the file formats are what differs
        rows = json.loads(cli("predict", "--adapter", str(minilm_run), "--input", str(tmp_path / name), "--json").stdout)
        assert [r["label"] for r in rows] == [r["label"] for r in direct], name
        for got, want in zip(rows, direct):
            assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    plain = cli("predict", "--adapter", str(minilm_run), texts[0]).stdout
    assert "★" in plain and "confidence" in plain


def test_the_adapter_deploys_with_plain_transformers_and_peft(minilm_run):
    """No yelp_lora import: the classic failure is a head that is not saved or comes back random."""
    texts = ["Best tacos in town, friendly staff.", "Meh. Okay but overpriced.", "Terrible, I got sick."]
    ours = json.loads(run_cli("predict", "--adapter", str(minilm_run), *texts, "--json").stdout)
    # What the README tells a plain user: the logits are raw; divide them by yelp_lora.json's temperature.
    script = f"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
adapter = {str(minilm_run / "adapter")!r}
base = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=5), adapter).eval()
tok = AutoTokenizer.from_pretrained(adapter)
texts = {texts!r}
temperature = json.load(open(adapter + "/yelp_lora.json"))["temperature"]
with torch.no_grad():
    logits = model(**tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")).logits
probs = torch.softmax(logits / temperature, -1)
assert "yelp_lora" not in sys.modules
print(json.dumps(probs.tolist()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    plain = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    names = ["strong_negative", "negative", "neutral", "positive", "strong_positive"]
    ours_probs = np.array([[row["probabilities"][n] for n in names] for row in ours])
    np.testing.assert_allclose(plain, ours_probs, atol=1e-4)
    assert plain.argmax(1).tolist() == [row["label_id"] for row in ours]


def test_training_again_from_run_json_gives_byte_identical_adapter(minilm_run, tmp_path):
    again = tmp_path / "again"  # the run's own record as the config: every setting the command gave is in it
    run_cli("train", "--config", str(minilm_run / "run.json"), "--output-dir", str(again))
    # Every file, adapter_config.json included (PEFT writes its target_modules set in hash order).
    files = sorted(p.name for p in (minilm_run / "adapter").iterdir())
    assert files == sorted(p.name for p in (again / "adapter").iterdir())
    for name in files:
        assert (minilm_run / "adapter" / name).read_bytes() == (again / "adapter" / name).read_bytes(), name
    a, b = read_json(minilm_run / "run.json"), read_json(again / "run.json")
    assert a["validation"] == [{**e} for e in b["validation"]]
    assert a["data"]["train"]["fingerprint"] == b["data"]["train"]["fingerprint"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_user_mistakes_get_one_clear_line(tmp_path, minilm_run, data_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    version = tmp_path / "registry" / "v3"  # a registry version, taken for a run directory
    version.mkdir(parents=True)
    (version / "manifest.json").write_text("{}")
    not_a_model = tmp_path / "reviews"  # a data directory given as --model
    not_a_model.mkdir()
    (not_a_model / "train.csv").write_text("label,text\n1,fine\n")
    edited = tmp_path / "edited"  # an adapter whose yelp_lora.json was edited by hand past what BERT reads
    shutil.copytree(minilm_run / "adapter", edited)
    (edited / "yelp_lora.json").write_text(json.dumps({**read_json(edited / "yelp_lora.json"), "max_length": 100000}))
    unfinished = tmp_path / "unfinished"  # a run stopped before its run.json: the adapter is an epoch's
    shutil.copytree(minilm_run / "adapter", unfinished / "adapter")
    overwritten = tmp_path / "overwritten"  # a `train --overwrite` stopped after an epoch: the old run's run.json
    shutil.copytree(minilm_run / "adapter", overwritten / "adapter")
    (overwritten / "run.json").write_text(json.dumps({**read_json(minilm_run / "run.json"), "adapter_sha256": "0" * 64}))
    cases = [
        (("train", "--data", "./missing-dir", "--output-dir", str(tmp_path / "x")), "data path not found: ./missing-dir"),
        (("predict", "--adapter", str(unfinished), "Great tacos."),
         f"{unfinished} holds no finished run (no run.json): its training is still going or was stopped, and "
         f"{unfinished / 'adapter'} is the best epoch's so far"),
        (("compare", "--adapter", str(overwritten)),
         f"{overwritten / 'run.json'} records other adapter weights (sha256 000000000000…) than "
         f"{overwritten / 'adapter' / 'adapter_model.safetensors'}: they changed after the run (a `train --overwrite` "
         f"into {overwritten} still going or stopped, or a damaged copy)"),
        (("train", "--config", "nope.yaml", "--output-dir", str(tmp_path / "x")), "config file not found"),
        (("train", "--model", "./no-model", "--max-steps", "1", "--output-dir", str(tmp_path / "x")), "model directory not found"),
        (("train", "--batch-size", "16", "--micro-batch-size", "5", "--output-dir", str(tmp_path / "x")),
         "train.micro_batch_size 5 must divide the training batch size 16"),
        (("bench", "--quick", "--micro-batch-size", "3"), "--micro-batch-size 3: must divide the training batch of 16"),
        (("bench", "--quick", "--skip", "onnx-int9"), "--skip onnx-int9: no such path (training: usual, ours-fp32, ours; prediction: "),
        (("bench", "--quick", "--adapter", str(tmp_path / "none")), f"adapter not found: {tmp_path / 'none'}"),
        (("train", "--pad-to-multiple-of", "24", "--max-length", "512", "--output-dir", str(tmp_path / "x")),
         "config: train.pad_to_multiple_of 24 pads max_length 512 to 528 tokens, past BERT's 512"),
        (("compare", "--adapter", str(tmp_path / "none")), "adapter not found"),
        (("predict", "--adapter", str(minilm_run)), "nothing to predict"),
        (("predict", "--adapter", str(minilm_run), "   "), "argument 1: whitespace-only text"),
        (("predict", "--adapter", str(minilm_run), "--input", str(tmp_path)), f"input {tmp_path} is a directory"),
        (("predict", "--adapter", str(minilm_run), "--input", str(empty)), f"nothing to predict: {empty} holds no review texts"),
        (("predict", "--adapter", str(minilm_run), "--batch-size", "-3", "Great tacos."),
         "batch size -3: at least 1 text per forward pass"),
        (("train", "--config", str(tmp_path), "--output-dir", str(tmp_path / "x")), f"cannot read config file {tmp_path}: Is a directory"),
        (("train", "--output-dir", str(empty)), f"--output-dir {empty} exists and is not a directory"),
        (("train", "--output-dir", str(empty / "run")), f"--output-dir {empty / 'run'} cannot be created: {empty} is a file"),
        (("tune", "--output-dir", str(empty)), f"--output-dir {empty} exists and is not a directory"),
        (("export", "v1", "--registry", str(tmp_path / "registry"), "--merged", str(empty)), f"--merged {empty} exists and is not a directory"),
        (("train", "--max-steps", "0", "--output-dir", str(tmp_path / "x")), "train.max_steps: must be at least 1, or -1 for all epochs"),
        # Another record given as a config: five of its problems named, the rest counted, each value cut short.
        (("train", "--config", str(minilm_run / "adapter" / "config.json"), "--output-dir", str(tmp_path / "x")),
         f"config {minilm_run / 'adapter' / 'config.json'}: "),
        (("train", "--set", "train.lr_scheduler=bogus", "--output-dir", str(tmp_path / "x")),
         "train.lr_scheduler: Input should be 'linear', 'cosine', 'cosine_with_restarts', 'polynomial', 'constant'"),
        (("train", "--seed", "-1", "--output-dir", str(tmp_path / "x")), "train.seed: Input should be greater than or equal to 0"),
        (("evaluate", "--adapter", str(minilm_run), "--seed", "-1"), "--seed must be at least 0 (got -1)"),
        (("tune", "--seed", str(2**32), "--output-dir", str(tmp_path / "t")), "--seed 4294967296: Input should be less than or equal to 4294967295"),
        (("train", "--set", "train.seed=3", "--seed", "4", "--output-dir", str(tmp_path / "x")),
         "train.seed set twice, by a flag and by --set: give one"),
        (("predict", "--adapter", str(minilm_run), "--input", str(empty), "--output", str(empty)),
         f"--output {empty} is the --input file: it would be written over"),
        (("predict", "--adapter", str(minilm_run), "--input", str(empty), "--output", str(tmp_path / "o.csv"), "--json-summary", str(tmp_path)),
         f"--json-summary {tmp_path} is a directory: name a file"),
        (("predict", "--adapter", str(minilm_run), "--input", "/dev/null"), "input /dev/null is not a regular file"),
        (("predict", "--adapter", str(minilm_run), "--resume", "--skip-bad-rows", "Great tacos."),
         "--resume, --skip-bad-rows need --output"),
        (("predict", "--adapter", str(minilm_run), "--chunk-size", "5", "Great tacos."),
         "--chunk-size needs --output: it applies to predicting a whole --input FILE into OUT"),
        (("predict", "--adapter", str(minilm_run), "--input", str(empty), "--output", str(tmp_path / "o.jsonl"), "--json"),
         "--json prints the predictions of review texts given here; with --output they go to OUT"),
        (("serve", "--adapter", str(minilm_run), "--registry", str(tmp_path / "registry")),
         "--registry names where --version and --alias are looked up: with --adapter it would not be used"),
        (("train", "--extra-train", "nope.csv:10", "--output-dir", str(tmp_path / "x")),
         "extra training source nope.csv (--extra-train, data.extra_train): not found in "),
        (("train", "--output-dir", str(minilm_run)), f"{minilm_run} holds a finished run (run.json): pass --overwrite to "
         "replace it, or choose another --output-dir"),
        (("predict", "--adapter", str(edited), "Great tacos."),
         f"{edited / 'yelp_lora.json'} is not a valid AdapterMeta (max_length: Input should be less than or equal to 512)"),
        (("train", "--config", DEMO_CONFIG, "--set", "lora.target_modules=[query,vlaue]", "--output-dir", str(tmp_path / "x")),
         "lora.target_modules: no module of the base model is named 'vlaue' (its linear layers: classifier, dense, key, query, value)"),
        (("train", "--set", "lora.target_modules=[]", "--output-dir", str(tmp_path / "x")),
         "lora.target_modules: List should have at least 1 item"),
        (("train", "--model", str(not_a_model), "--output-dir", str(tmp_path / "x")),
         f"cannot load the tokenizer of '{not_a_model}': no tokenizer files in it"),
        (("evaluate", "--adapter", str(minilm_run), "--json", str(tmp_path)), f"--json {tmp_path} is a directory: name a file"),
        (("report", str(minilm_run), "--compare-json", str(minilm_run / "run.json")),
         f"--compare-json {minilm_run / 'run.json'} would write over a run's or an adapter's own record: name another file"),
        (("evaluate", "--adapter", str(minilm_run), "--json", str(minilm_run / "adapter" / "scores.json")),
         "would write over a run's or an adapter's own record"),
        (("train", "--data", "/dev/null", "--output-dir", str(tmp_path / "x")), "data path /dev/null is not a regular file or a directory"),
        (("train", "--compare-n", "10", "--output-dir", str(tmp_path / "x")), "--compare-n is the test sample of a seed sweep: it needs --seeds K"),
        (("train", "--seeds", "2", "--compare-n", "0", "--output-dir", str(tmp_path / "x")), "--compare-n must be at least 1 (got 0)"),
        (("train", "--seeds", "2", "--data", str(data_dir / "train.csv"), "--output-dir", str(tmp_path / "x")),
         f"--seeds compares every seed on the data's test split, and {data_dir / 'train.csv'} is one file"),
        (("report", str(minilm_run), "--compare-json", str(tmp_path)), f"--compare-json {tmp_path} is a directory: name a file"),
        (("train", "--output-dir", str(version), "--overwrite"),
         f"{version} is a registry version (it holds manifest.json), and a registered version never changes"),
        (("tune", "--output-dir", str(version)), f"{version} is a registry version (it holds manifest.json)"),
        (("train", "--seeds", "2", "--output-dir", str(version)), f"{version} is a registry version (it holds manifest.json)"),
    ]
    for number, (args, message) in enumerate(cases):
        # The first as a user runs it, in its own process; the rest through the same entry point in this one.
        result = run_cli(*args, check=False) if number == 0 else cli(*args, check=False)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and len(result.stderr) < 1500, (args, result.stderr[-2000:])
    # A flag given twice is refused as argparse refuses any flag it cannot take (usage, then the error line).
    twice = run_cli("train", "--lr", "1e-3", "--lr", "2e-3", "--output-dir", str(tmp_path / "x"), check=False)
    assert twice.returncode == 2 and twice.stderr.endswith("yelp-lora train: error: --lr given twice: give it once\n")
    # Named itself, a stopped run's adapter is taken as it is.
    assert "strong_positive" in cli("predict", "--adapter", str(unfinished / "adapter"), "Great tacos.").stdout


def test_overwrite_replaces_a_finished_run_and_every_score_of_it(tiny_run, tiny_bert_dir, data_dir, tmp_path):
    from support import TINY_ENV, tiny_train_args

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "compare.json").write_text("{}")  # the old adapter's test scores
    (run / "report").mkdir()
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    # A mistake found before training starts leaves the old run as it was.
    typo = run_cli(*tiny_train_args(tiny_bert_dir, tmp_path / "typo", run, "--overwrite"), env=TINY_ENV, check=False)
    assert typo.returncode == 2 and "data path not found" in typo.stderr
    assert sorted(path.name for path in run.iterdir()) == ["adapter", "compare.json", "report", "run.json"]
    run_cli(*tiny_train_args(tiny_bert_dir, data_dir, run, "--max-steps", "2", "--seed", "7", "--overwrite"), env=TINY_ENV)
    assert sorted(path.name for path in run.iterdir()) == ["adapter", "run.json"]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() != before
    assert read_json(run / "run.json")["config"]["train"]["seed"] == 7
