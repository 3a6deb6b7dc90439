"""A versioned adapter registry on disk: v1, v2, ... each with a manifest of hashes and a model card.

Layout of a registry directory:

    registry/
      aliases.json          {"production": "v2", ...}
      v1/
        adapter/            the run's best adapter, standard PEFT format (safetensors only)
        manifest.json       version, sha256 of every file, base model hash, label map, config, data, metrics
        README.md           the Hugging Face style model card

A version is written through `atomic_dir`, so a crash never leaves a half-written one, and is
read back only after every file's hash matches its manifest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from yelp_lora import model as model_stage
from yelp_lora.atomic import atomic_dir, atomic_write_text
from yelp_lora.config import LABEL_NAMES
from yelp_lora.evaluate import read_adapter_meta, resolve_adapter_dir
from yelp_lora.train import ADAPTER_DIRNAME, RUN_FILE

REGISTRY_ENV = "YELP_LORA_REGISTRY"
DEFAULT_REGISTRY = "registry"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
COMPARE_FILE = "compare.json"  # written by `make demo` beside run.json, if present
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST_FORMAT = 1
HUB_IDS = {model_stage.MINILM_ALIAS: "sentence-transformers/all-MiniLM-L6-v2"}  # for the card's base_model field
# Pickle-based weight formats run code when loaded; the registry never stores or reads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class RegistryError(model_stage.ModelError):
    """A registry request that cannot be honoured: unknown version, tampered file, pickled weights..."""


def default_root() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_hashes(root: Path) -> dict[str, str]:
    """{relative posix path: sha256} of every file under root, in sorted order."""
    return {path.relative_to(root).as_posix(): file_sha256(path) for path in sorted(root.rglob("*")) if path.is_file()}


def _refuse_pickles(where: Path, names: list[str]) -> None:
    pickled = [name for name in names if name.lower().endswith(PICKLE_SUFFIXES)]
    if pickled:
        raise RegistryError(
            f"{where} holds pickled weights ({', '.join(pickled)}); only safetensors are accepted, "
            "since loading a pickle can run arbitrary code"
        )


def base_model_fingerprint(base_model_path: str) -> dict:
    """sha256 over the base model's config.json and *.safetensors files, or why it could not be taken."""
    path = Path(model_stage.resolve_model_path(base_model_path))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(path), local_files_only=True))
        except Exception as err:  # not in the local cache: record why, never download here
            return {"sha256": None, "files": [], "note": f"not hashed: {type(err).__name__}"}
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        _refuse_pickles(path, sorted(p.name for p in path.iterdir()))
        raise RegistryError(f"base model {path} has no *.safetensors weights")
    digest = hashlib.sha256()
    files = [path / "config.json", *weights]
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return {"sha256": digest.hexdigest(), "files": [file.name for file in files]}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Registry:
    """One registry directory; every read verifies, every write is atomic."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()

    # ------------------------------------------------------------ reading

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def aliases(self) -> dict[str, str]:
        file = self.root / ALIASES_FILE
        if not file.is_file():
            return {}
        try:
            aliases = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{file} is not valid JSON: {err}") from None
        if not isinstance(aliases, dict):
            raise RegistryError(f"{file} must hold an object of alias -> version")
        return aliases

    def resolve(self, ref: str) -> str:
        """A version name ('v3', '3', 'latest') or an alias -> the version name."""
        versions = self.versions()
        if not versions:
            raise RegistryError(f"registry {self.root} holds no versions yet (add one with `yelp-lora registry add RUN_DIR`)")
        if ref == "latest":
            return versions[-1]
        name = f"v{ref}" if ref.isdigit() else ref
        if name in versions:
            return name
        aliases = self.aliases()
        if ref in aliases:
            if aliases[ref] not in versions:
                raise RegistryError(f"alias '{ref}' points at {aliases[ref]}, which is not in registry {self.root}")
            return aliases[ref]
        known = ", ".join(versions + sorted(aliases))
        raise RegistryError(f"registry {self.root} has no version or alias '{ref}' (known: {known})")

    def manifest(self, ref: str) -> dict:
        version = self.resolve(ref)
        file = self.root / version / MANIFEST_FILE
        try:
            manifest = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"{file} is missing: version {version} is damaged") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{file} is not valid JSON ({err}): version {version} is damaged") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise RegistryError(f"{file} is not a yelp-lora manifest (no 'files' map): version {version} is damaged")
        return manifest

    def problems(self, ref: str, *, check_base: bool = True) -> list[str]:
        """Every way version `ref` differs from its manifest (empty when intact)."""
        version = self.resolve(ref)
        manifest = self.manifest(version)
        directory = self.root / version
        expected: dict[str, str] = manifest["files"]
        actual_names = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        actual_names.discard(MANIFEST_FILE)
        found = [] if manifest.get("version") == version else [f"{version}/{MANIFEST_FILE}: names version {manifest.get('version')!r}"]
        for name in sorted(actual_names - set(expected)):
            kind = "pickled weights, refused" if name.lower().endswith(PICKLE_SUFFIXES) else "not in the manifest"
            found.append(f"{version}/{name}: unexpected file ({kind})")
        for name, sha in sorted(expected.items()):
            path = directory / name
            if not path.is_file():
                found.append(f"{version}/{name}: missing")
            elif file_sha256(path) != sha:
                found.append(f"{version}/{name}: sha256 differs from the manifest (file changed after registration)")
        base = manifest.get("base_model", {})
        if check_base and base.get("sha256"):
            now = base_model_fingerprint(base["path"]).get("sha256")
            if now and now != base["sha256"]:
                found.append(f"base model {base['id']} at {base['path']}: weights or config changed since registration")
        return found

    def verify(self, ref: str) -> dict:
        """The manifest of `ref` if every file matches it; else a RegistryError listing each problem."""
        found = self.problems(ref)
        if found:
            raise RegistryError("registry verification failed, refusing to load:\n  " + "\n  ".join(found))
        return self.manifest(ref)

    def open(self, ref: str) -> tuple[Path, dict]:
        """(adapter directory, manifest) of a verified version, ready for `load_adapter`."""
        manifest = self.verify(ref)
        return self.root / manifest["version"] / ADAPTER_DIRNAME, manifest

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, so two concurrent `add`s never pick the same version number."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RegistryError(f"cannot use {self.root} as a registry directory: {err.strerror}") from None
        with open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, run_dir: str | Path, name: str | None = None) -> dict:
        """Register the best adapter of a training run as the next version; returns its manifest."""
        run_dir = Path(run_dir)
        adapter_dir = resolve_adapter_dir(run_dir)
        run_root = adapter_dir.parent if adapter_dir.name == ADAPTER_DIRNAME else run_dir
        run_file = run_root / RUN_FILE
        if not run_file.is_file():
            raise RegistryError(
                f"{run_root} has no {RUN_FILE}: the registry takes a run directory written by `yelp-lora train`"
            )
        _refuse_pickles(adapter_dir, sorted(p.name for p in adapter_dir.rglob("*")))
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
            raise RegistryError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
        run = json.loads(run_file.read_text(encoding="utf-8"))
        compare_file = run_root / COMPARE_FILE
        compare = json.loads(compare_file.read_text(encoding="utf-8")) if compare_file.is_file() else None
        meta = read_adapter_meta(adapter_dir)
        base = {"id": meta["base_model"], "path": meta["base_model_path"], **base_model_fingerprint(meta["base_model_path"])}
        with self._locked():
            versions = self.versions()
            version = f"v{int(versions[-1][1:]) + 1 if versions else 1}"
            with atomic_dir(self.root / version) as staging:
                shutil.copytree(adapter_dir, staging / ADAPTER_DIRNAME)
                manifest = _manifest(version, name, run_root, run, compare, meta, base, adapter_dir)
                (staging / CARD_FILE).write_text(model_card(manifest), encoding="utf-8")
                manifest["files"] = _tree_hashes(staging)
                (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return manifest

    def promote(self, ref: str, alias: str) -> str:
        """Point `alias` at a verified version; the alias file is replaced atomically."""
        if not ALIAS_PATTERN.match(alias) or VERSION_PATTERN.match(alias) or alias == "latest":
            raise RegistryError(
                f"alias '{alias}' is not allowed: use a letter then letters, digits, '_', '.', '-' "
                "(and not a version name or 'latest')"
            )
        version = self.verify(ref)["version"]
        with self._locked():
            aliases = self.aliases()
            aliases[alias] = version
            atomic_write_text(self.root / ALIASES_FILE, json.dumps(dict(sorted(aliases.items())), indent=2) + "\n")
        return version

    def aliases_of(self, version: str) -> list[str]:
        return sorted(alias for alias, target in self.aliases().items() if target == version)


def _manifest(version, name, run_root: Path, run: dict, compare: dict | None, meta: dict, base: dict, adapter_dir: Path) -> dict:
    config = json.loads((adapter_dir / "config.json").read_text(encoding="utf-8"))
    data = run.get("data", {})
    metrics = {
        "validation_best": run.get("best_epoch"),
        "validation_per_epoch": run.get("validation", []),
        "train_runtime_s": run.get("train_runtime"),
        "train_samples_per_second": run.get("train_samples_per_second"),
    }
    if compare:
        metrics["test_compare"] = {k: compare.get(k) for k in ("n", "seed", "baseline", "lora", "gain", "extreme_reversals")}
    return {
        "format": MANIFEST_FORMAT,
        "version": version,
        "name": name,
        "created": _now(),
        "source_run": str(run_root.resolve()),
        "adapter_sha256": file_sha256(adapter_dir / ADAPTER_WEIGHTS),
        "base_model": base,
        "max_length": meta["max_length"],
        "label_map": {str(k): v for k, v in config.get("id2label", dict(enumerate(LABEL_NAMES))).items()},
        "training_config": run.get("config"),
        "data": {
            "source": meta.get("data_source"),
            "train": {k: data.get("train", {}).get(k) for k in ("rows", "label_counts", "fingerprint")},
            "validation": {k: data.get("validation", {}).get(k) for k in ("rows", "label_counts", "fingerprint")},
        },
        "metrics": metrics,
        "environment": run.get("environment"),
    }


def model_card(manifest: dict) -> str:
    """A Hugging Face style model card (YAML front matter + sections) from a manifest."""
    base = manifest["base_model"]
    config = manifest.get("training_config") or {}
    lora, train = config.get("lora", {}), config.get("train", {})
    data, metrics = manifest["data"], manifest["metrics"]
    best = metrics.get("validation_best") or {}
    test = metrics.get("test_compare")
    labels = ", ".join(f"{k} = {v} ({int(k) + 1} star{'s' if k != '0' else ''})" for k, v in manifest["label_map"].items())
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {HUB_IDS.get(base['id'], base['id'])}",
        "pipeline_tag: text-classification",
        "tags: [lora, sentiment-analysis, yelp, yelp-lora]",
        "language: [en]",
        "---",
        "",
        f"# yelp-lora sentiment adapter {manifest['version']}" + (f" ({manifest['name']})" if manifest.get("name") else ""),
        "",
        f"A LoRA adapter (r={lora.get('r')}, alpha={lora.get('alpha')}, modules {lora.get('target_modules')}) with a "
        f"5-way classification head on the frozen base `{base['id']}`. It reads the strength of sentiment in an English "
        "restaurant or business review and predicts its star rating.",
        "",
        f"- Adapter sha256: `{manifest['adapter_sha256']}`",
        f"- Base model hash (config + safetensors): `{base.get('sha256')}`",
        f"- Registered: {manifest['created']} from `{manifest['source_run']}`",
        f"- Labels: {labels}",
        f"- Max tokens per review: {manifest['max_length']} (longer reviews are cut and flagged `truncated`)",
        "",
        "## Intended use",
        "",
        "Scoring the sentiment strength of English Yelp-style reviews (1-5 stars), e.g. to triage feedback or track "
        "satisfaction over time. Serve it with `yelp-lora serve --version "
        f"{manifest['version']}` or query it with `yelp-lora predict --version {manifest['version']} TEXT`.",
        "",
        "Out of scope: other languages, non-review text, decisions about individual people, and any use where a "
        "wrong star rating causes harm without human review.",
        "",
        "## Training data",
        "",
        f"Source: `{data.get('source')}`. Train rows: {data['train'].get('rows')} (label counts "
        f"{data['train'].get('label_counts')}, fingerprint `{data['train'].get('fingerprint')}`); validation rows: "
        f"{data['validation'].get('rows')} carved from the train split (fingerprint `{data['validation'].get('fingerprint')}`). "
        "The test split was not used for training or selection.",
        "",
        "## Training procedure",
        "",
        f"Learning rate {train.get('learning_rate')}, epochs {train.get('epochs')}, max steps {train.get('max_steps')}, "
        f"batch size {train.get('train_batch_size')}, seed {train.get('seed')}; the adapter of the best validation "
        "macro-F1 epoch was kept.",
        "",
        "## Metrics",
        "",
        "| split | accuracy | macro-F1 |",
        "|---|---|---|",
        f"| validation (best epoch {best.get('epoch')}) | {_fmt(best.get('accuracy'))} | {_fmt(best.get('macro_f1'))} |",
    ]
    if test:
        lines += [
            f"| test, untuned baseline (N={test.get('n')}) | {_fmt(test['baseline']['accuracy'])} | {_fmt(test['baseline']['macro_f1'])} |",
            f"| test, this adapter (N={test.get('n')}) | {_fmt(test['lora']['accuracy'])} | {_fmt(test['lora']['macro_f1'])} |",
        ]
    lines += [
        "",
        "## Limitations",
        "",
        "Neighbouring star levels (2 vs 3, 4 vs 5) are often confused: sentiment strength is subjective and reviewers "
        "are inconsistent. Sarcasm, mixed reviews and very short texts are hard. Reviews longer than the token limit are "
        "judged on their beginning only. Trained on Yelp reviews, so it inherits their domain and biases.",
        "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_version_line(registry: Registry, version: str) -> str:
    manifest = registry.manifest(version)
    best = (manifest["metrics"].get("validation_best") or {}).get("macro_f1")
    aliases = registry.aliases_of(version)
    return (
        f"{version:<5} {manifest['created']}  base {manifest['base_model']['id']:<12} val macro-F1 {_fmt(best)}  "
        f"sha256 {manifest['adapter_sha256'][:12]}"
        + (f"  name {manifest['name']}" if manifest.get("name") else "")
        + (f"  [{', '.join(aliases)}]" if aliases else "")
    )


def export_merged(registry: Registry, ref: str, target: str | Path) -> Path:
    """A full transformers model directory (LoRA merged, head, id2label, tokenizer) for `pipeline(...)`."""
    target = Path(target)
    marker = "yelp_lora_export.json"
    if target.exists() and any(target.iterdir()) and not (target / marker).is_file():
        raise RegistryError(f"{target} exists and is not an earlier yelp-lora export; choose an empty or new directory")
    adapter_dir, manifest = registry.open(ref)
    model, tokenizer = model_stage.load_adapter(adapter_dir, merge=True)
    # pipeline(..., truncation=True) then cuts where the adapter was trained to cut.
    tokenizer.model_max_length = int(manifest["max_length"])
    with atomic_dir(target) as staging:
        model.save_pretrained(str(staging))  # safetensors
        tokenizer.save_pretrained(str(staging))
        info = {k: manifest[k] for k in ("version", "name", "adapter_sha256", "base_model", "label_map", "max_length")}
        (staging / marker).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / CARD_FILE).write_text(
            model_card(manifest).replace("library_name: peft", "library_name: transformers"), encoding="utf-8"
        )
    return target
