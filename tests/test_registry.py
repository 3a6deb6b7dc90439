"""The adapter registry: versions, manifest, model card, aliases, verification, tamper refusal, merged export."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from support import cli, read_json, review_texts, run_cli

from yelp_lora.errors import RegistryError
from yelp_lora.registry.store import Registry

pytestmark = pytest.mark.slow


@pytest.fixture
def own_registry(registry, tmp_path):
    """A private copy of the shared registry that a test may change or damage."""
    root = tmp_path / "registry"
    shutil.copytree(registry, root)
    return root


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_add_writes_a_complete_version(registry, minilm_run):
    version_dir = registry / "v1"
    manifest = json.loads((version_dir / "manifest.json").read_text())
    run = json.loads((minilm_run / "run.json").read_text())

    assert manifest["version"] == "v1" and manifest["name"] == "tiny"
    assert manifest["source_run"] == str(minilm_run.resolve())
    assert manifest["created"].endswith("Z")
    # The adapter is stored in standard PEFT format, every file hashed, nothing pickled.
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"):
        assert (version_dir / "adapter" / name).is_file()
    listed = {p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == listed
    assert all(manifest["files"][name] == sha256(version_dir / name) for name in listed)
    assert manifest["adapter_sha256"] == sha256(minilm_run / "adapter" / "adapter_model.safetensors")
    assert not [p for p in version_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    # Base model identity, label map, config, data fingerprints and metrics come along.
    base = manifest["base_model"]
    assert base["id"] == "minilm" and len(base["sha256"]) == 64 and base["files"] == ["config.json", "model.safetensors"]
    assert manifest["label_map"] == {"0": "strong_negative", "1": "negative", "2": "neutral", "3": "positive", "4": "strong_positive"}
    assert manifest["training_config"] == run["config"]
    assert manifest["data"]["train"]["fingerprint"] == run["data"]["train"]["fingerprint"]
    assert manifest["data"]["validation"]["fingerprint"] == run["data"]["validation"]["fingerprint"]
    assert manifest["metrics"]["validation_best"] == run["best_epoch"]
    assert manifest["temperature"] == read_json(minilm_run / "adapter" / "yelp_lora.json")["temperature"]

    card = (version_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n")
    for section in ("## Intended use", "## Training data", "## Metrics", "## Limitations"):
        assert section in card
    assert manifest["adapter_sha256"] in card and run["data"]["train"]["fingerprint"] in card
    assert f"Softmax temperature: {manifest['temperature']:.4g}" in card


def test_versions_aliases_list_show_verify(own_registry, minilm_run, tmp_path):
    reg = ["--registry", str(own_registry)]
    out = cli("registry", "add", str(minilm_run / "adapter"), "--name", "second", *reg).stdout
    assert "as v2" in out and "note: same adapter weights as v1" in out
    cli("registry", "promote", "v2", "--alias", "staging", *reg)

    listing = cli("registry", "list", *reg).stdout.splitlines()
    assert [line.split()[0] for line in listing] == ["v1", "v2"]
    assert "[production]" in listing[0] and "[staging]" in listing[1] and "name second" in listing[1]
    shown = json.loads(cli("registry", "show", "production", *reg).stdout)
    assert shown["version"] == "v1" and shown["aliases"] == ["production"]
    assert json.loads(cli("registry", "show", "latest", *reg).stdout)["version"] == "v2"
    assert cli("registry", "verify", *reg).stdout.splitlines() == [
        "v1: ok, every file matches its sha256", "v2: ok, every file matches its sha256"
    ]
    assert json.loads((own_registry / "aliases.json").read_text()) == {"production": "v1", "staging": "v2"}

    linked = tmp_path / "linked-run"  # a run whose adapter directory links to a file outside it
    shutil.copytree(minilm_run, linked)
    (linked / "adapter" / "notes.txt").symlink_to("/etc/hostname")
    swapped = tmp_path / "swapped-run"  # another adapter beside this run.json (a run stopped mid-overwrite)
    shutil.copytree(minilm_run, swapped)
    weights = swapped / "adapter" / "adapter_model.safetensors"
    save_file({name: tensor * 1.5 for name, tensor in load_file(weights).items()}, weights)
    for args, problem in [
        (("show", "v9"), "has no version or alias 'v9' (known: v1, v2, production, staging)"),
        (("promote", "v9", "--alias", "x"), "has no version or alias 'v9'"),
        (("promote", "v1", "--alias", "v3"), "alias 'v3' is not allowed"),
        (("add", str(own_registry)), "holds no adapter"),
        (("add", str(linked)), f"{linked / 'adapter' / 'notes.txt'} is a link (to /etc/hostname): a registry version holds files only"),
        (("add", str(swapped)), f"{swapped / 'run.json'} records other adapter weights"),
    ]:
        result = cli("registry", *args, *reg, check=False)
        assert result.returncode == 2 and problem in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_damaged_versions_are_each_named_and_spoil_no_other_command(own_registry, minilm_run):
    reg = ["--registry", str(own_registry)]
    (own_registry / "v2").mkdir()  # a stray, half-deleted version: no manifest
    (own_registry / "aliases.json").write_text('{"production": "v1", "old": "v9"}')
    added = cli("registry", "add", str(minilm_run), *reg)
    assert "as v3" in added.stdout and "note: same adapter weights as v1" in added.stdout
    with open(own_registry / "v1" / "README.md", "a") as card:
        card.write("edited\n")

    listing = cli("registry", "list", *reg).stdout.splitlines()
    assert [line.split()[0] for line in listing[:3]] == ["v1", "v2", "v3"]
    assert listing[1].startswith(f"v2    damaged: {own_registry}/v2/manifest.json not found")
    assert listing[3] == "note: alias 'old' points at v9, which is not in this registry"
    verified = cli("registry", "verify", *reg, check=False)
    assert verified.returncode == 2
    assert verified.stdout == "v3: ok, every file matches its sha256\n"
    assert verified.stderr.splitlines() == [
        "v1: FAILED", "  v1/README.md: sha256 differs from the manifest (file changed after registration)",
        "v2: FAILED", f"  {own_registry}/v2/manifest.json not found: version v2 is damaged",
        "yelp-lora registry: error: 2 of 3 version(s) differ from their manifests: v1, v2",
    ]
    for args, problem in [
        (("add", str(minilm_run), "--name", " "), "--name: a version's name must not be empty"),
        (("add", str(minilm_run), "--name", "a\nb"), "--name 'a\\nb': a version's name is one line of printable characters"),
    ]:
        result = cli("registry", *args, *reg, check=False)
        assert result.returncode == 2 and problem in result.stderr, result.stderr
    missing = cli("registry", "list", "--registry", str(own_registry / "typo")).stdout
    assert missing.startswith(f"no registry in {own_registry / 'typo'}/ yet: no versions")
    # A damaged alias file hides the aliases, not the versions; promoting refuses to write over it.
    (own_registry / "aliases.json").write_text('{"production": "v1",')
    listing = cli("registry", "list", *reg).stdout.splitlines()
    assert [line.split()[0] for line in listing[:3]] == ["v1", "v2", "v3"]
    assert listing[3].startswith(f"note: aliases not shown: {own_registry}/aliases.json is not valid JSON")
    promoted = cli("registry", "promote", "v3", "--alias", "production", *reg, check=False)
    assert promoted.returncode == 2 and "aliases.json is not valid JSON" in promoted.stderr
    assert (own_registry / "aliases.json").read_text() == '{"production": "v1",'
    # A version whose files were deleted is listed as damaged, and a registry path that is a file is named.
    (own_registry / "v3" / "adapter" / "adapter_model.safetensors").unlink()
    listing = cli("registry", "list", *reg).stdout.splitlines()
    assert listing[2] == ("v3    damaged: 1 of its files are missing (adapter/adapter_model.safetensors) "
                          "(see `yelp-lora registry verify v3`)")
    not_a_dir = cli("registry", "list", "--registry", str(own_registry / "aliases.json"), check=False)
    assert not_a_dir.returncode == 2 and "is a file, not a registry directory" in not_a_dir.stderr
    # A version copied under another name, and a manifest whose files leave the version's directory.
    shutil.copytree(own_registry / "v1", own_registry / "v4")
    shutil.copytree(own_registry / "v1", own_registry / "v5")
    manifest = json.loads((own_registry / "v5" / "manifest.json").read_text())
    manifest.update(version="v5", files={**manifest["files"], "../v1/manifest.json": "0" * 64})
    (own_registry / "v5" / "manifest.json").write_text(json.dumps(manifest))
    listing = cli("registry", "list", *reg).stdout.splitlines()
    assert listing[3] == "v4    damaged: v4/manifest.json names version 'v1' (see `yelp-lora registry verify v4`)"
    assert listing[4].startswith(f"v5    damaged: {own_registry}/v5/manifest.json is not a valid Manifest (files: "
                                 "Value error, '../v1/manifest.json' is not a path inside the version's directory")


def test_concurrent_adds_get_distinct_versions(own_registry, minilm_run):
    registry = Registry(own_registry)
    versions = []
    threads = [threading.Thread(target=lambda: versions.append(registry.add(minilm_run).version)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == ["v2", "v3", "v4"]
    assert [registry.verify(v).version for v in registry.versions()] == ["v1", "v2", "v3", "v4"]


def test_a_crash_while_adding_leaves_no_version(own_registry, minilm_run, monkeypatch):
    import yelp_lora.registry.store as registry_module

    def crash(manifest):
        raise KeyboardInterrupt  # as if the process died halfway through writing the version

    monkeypatch.setattr(registry_module, "model_card", crash)
    with pytest.raises(KeyboardInterrupt):
        Registry(own_registry).add(minilm_run)
    assert sorted(p.name for p in own_registry.iterdir()) == [".lock", "aliases.json", "v1"]
    assert Registry(own_registry).versions() == ["v1"]


def test_tampered_file_is_refused(own_registry):
    weights = own_registry / "v1" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))

    result = cli("registry", "verify", "v1", "--registry", str(own_registry), check=False)
    assert result.returncode == 2
    assert "v1/adapter/adapter_model.safetensors: sha256 differs from the manifest" in result.stderr
    result = run_cli("predict", "--alias", "production", "--registry", str(own_registry), "great food", check=False)
    assert result.returncode == 2 and "refusing to load" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(RegistryError, match="adapter_model.safetensors: sha256 differs"):
        Registry(own_registry).open("v1")


def test_pickled_weights_are_refused(own_registry, minilm_run, tmp_path):
    (own_registry / "v1" / "adapter" / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(RegistryError, match=r"v1/adapter/adapter_model.bin: unexpected file \(pickled weights, refused\)"):
        Registry(own_registry).open("v1")

    pickled_run = tmp_path / "pickled-run"
    shutil.copytree(minilm_run, pickled_run)
    (pickled_run / "adapter" / "adapter_model.safetensors").rename(pickled_run / "adapter" / "adapter_model.bin")
    result = cli("registry", "add", str(pickled_run), "--registry", str(own_registry), check=False)
    assert result.returncode == 2 and "holds pickled weights (adapter_model.bin); only safetensors" in result.stderr


def test_predict_from_registry_equals_predict_from_adapter(predicted, minilm_run):
    from_adapter = json.loads(cli("predict", "--adapter", str(minilm_run), "--json", *review_texts()).stdout)
    for by_version, by_adapter in zip(predicted, from_adapter, strict=True):
        assert by_version["label"] == by_adapter["label"]
        assert by_version["probabilities"] == pytest.approx(by_adapter["probabilities"], abs=1e-6)


def test_merged_export_loads_in_a_plain_pipeline_with_equal_logits(registry, tmp_path):
    import torch
    from transformers import pipeline

    from yelp_lora.modeling.base import load_adapter
    from yelp_lora.data.tokenize import encode
    from yelp_lora.modeling.forward import predict_logits

    target = tmp_path / "merged"
    out = cli("export", "production", "--merged", str(target), "--registry", str(registry)).stdout
    assert "Merged model written" in out
    assert (target / "model.safetensors").is_file() and not list(target.glob("adapter_*"))
    # The pipeline gives softmax(logits); the export says which temperature yelp-lora divides them by.
    temperature = read_json(registry / "v1" / "adapter" / "yelp_lora.json")["temperature"]
    assert read_json(target / "yelp_lora_export.json")["temperature"] == temperature

    texts = review_texts(8)
    classifier = pipeline("text-classification", model=str(target), top_k=None, truncation=True)
    assert classifier.model.config.id2label == {0: "strong_negative", 1: "negative", 2: "neutral", 3: "positive", 4: "strong_positive"}
    # The adapter itself, unmerged: base weights plus the LoRA delta at run time.
    adapter, tokenizer = load_adapter(registry / "v1" / "adapter", merge=False)
    expected, truncated = predict_logits(adapter, tokenizer, texts, max_length=256, batch_size=4)
    assert truncated.any(), "the longest review exercises truncation"
    ids, _ = encode(classifier.tokenizer, texts, 256)
    with torch.inference_mode():
        for text_ids, want in zip(ids, expected):
            got = classifier.model(input_ids=torch.tensor([text_ids])).logits[0].numpy()
            np.testing.assert_allclose(got, want, atol=1e-4)
    # And what the plain pipeline reports is the softmax of those logits.
    for scores, want in zip(classifier(texts), expected):
        probabilities = np.exp(want - want.max()) / np.exp(want - want.max()).sum()
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[name] for name in classifier.model.config.id2label.values()] == pytest.approx(probabilities, abs=1e-4)

    result = cli("export", "v1", "--merged", str(tmp_path), "--registry", str(registry), check=False)
    assert result.returncode == 2 and "is not an earlier yelp-lora export" in result.stderr


def test_a_head_tail_adapters_export_records_its_cut_and_the_documented_recipe_reads_as_predict(minilm_run, tmp_path, caplog):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path / "run"  # the session's run, as if trained with head+tail (what the demo's config says)
    shutil.copytree(minilm_run, run)
    meta_file = run / "adapter" / "yelp_lora.json"
    meta_file.write_text(json.dumps({**read_json(meta_file), "truncation": "head+tail", "head_tokens": 48}))
    registry, target = tmp_path / "registry", tmp_path / "merged"
    cli("registry", "add", str(run), "--registry", str(registry))
    cli("export", "v1", "--merged", str(target), "--registry", str(registry))
    assert "v1 reads a review longer than 256 tokens by its first 48 and last 208 tokens" in caplog.text
    info = read_json(target / "yelp_lora_export.json")
    assert (info["truncation"], info["kept_head"], info["max_length"]) == ("head+tail", 48, 256)

    texts = review_texts(8)
    answers = json.loads(cli("predict", "--version", "v1", "--registry", str(registry), "--backend", "torch", "--json", *texts).stdout)
    # docs/deploy.md's recipe, as written there.
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = AutoModelForSequenceClassification.from_pretrained(target).eval()
    cut = 0
    for text, answer in zip(texts, answers):
        ids = tokenizer(text)["input_ids"]
        if len(ids) > info["max_length"]:
            ids = ids[: info["kept_head"]] + ids[len(ids) - (info["max_length"] - info["kept_head"]):]
            cut += 1
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        got = torch.softmax(logits / info["temperature"], dim=-1).tolist()
        assert got == pytest.approx([answer["probabilities"][name] for name in model.config.id2label.values()], abs=1e-4)
    assert cut, "a review longer than 256 tokens exercises the cut"


def test_a_base_whose_recorded_hash_cannot_be_recomputed_is_refused(own_registry):
    manifest_file = own_registry / "v1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["base_model"]["path"] = "someone/base-not-in-the-local-cache"  # e.g. the registry moved machines
    manifest_file.write_text(json.dumps(manifest))
    result = cli("registry", "verify", "v1", "--registry", str(own_registry), check=False)
    assert result.returncode == 2 and "its recorded hash cannot be recomputed here" in result.stderr
