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
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from yelp_lora.artifacts import (
    ADAPTER_DIRNAME,
    ADAPTER_WEIGHTS,
    COMPARE_FILE,
    MANIFEST_FILE,
    RUN_FILE,
    RunRecord,
    read_adapter_meta,
    read_compare,
    read_record,
    resolve_adapter_dir,
    run_dir_of,
)
from yelp_lora.errors import RegistryError
from yelp_lora.modeling.base import resolve_model_path
from yelp_lora.registry.card import model_card
from yelp_lora.registry.manifest import BaseModelRecord, Manifest, build_manifest
from yelp_lora.util.atomic import atomic_dir, atomic_write_text, exclusive
from yelp_lora.util.hashing import file_sha256

REGISTRY_ENV = "YELP_LORA_REGISTRY"
DEFAULT_REGISTRY = "registry"
CARD_FILE = "README.md"
ALIASES_FILE = "aliases.json"
LOCK_FILE = ".lock"
# Pickle-based weight formats run code when loaded; the registry never stores or reads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def default_root() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)


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


def local_base_dir(base_model_path: str) -> Path:
    """The directory a base model is read from: a local path, the packaged model, or a hub id's copy
    in the local cache (never downloaded here; an OSError-like failure when it is not there)."""
    path = Path(resolve_model_path(base_model_path))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), local_files_only=True))


def base_model_fingerprint(base_id: str, base_model_path: str) -> BaseModelRecord:
    """sha256 over the base model's config.json and *.safetensors files, or why it could not be taken."""
    try:
        path = local_base_dir(base_model_path)
    except Exception as err:  # not in the local cache: record why, never download here
        return BaseModelRecord(
            id=base_id, path=base_model_path, sha256=None, files=[], note=f"not hashed: {type(err).__name__}"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        _refuse_pickles(path, sorted(p.name for p in path.iterdir()))
        raise RegistryError(f"base model {path} has no *.safetensors weights")
    digest = hashlib.sha256()
    files = [path / "config.json", *weights]
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return BaseModelRecord(id=base_id, path=base_model_path, sha256=digest.hexdigest(), files=[file.name for file in files])


class Registry:
    """One registry directory; every read verifies, every write is atomic."""

    def __init__(self, root: str | Path | None = None):
        if isinstance(root, str) and not root.strip():  # Path("") is the current directory: not what was meant
            raise RegistryError(f"--registry {root!r}: give a directory")
        self.root = Path(root) if root is not None else default_root()

    # ------------------------------------------------------------ reading

    def refuse_a_file_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is a file, not a registry directory")

    def versions(self) -> list[str]:
        self.refuse_a_file_root()
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
            raise RegistryError(f"the registry in {self.root}/ holds no versions yet (add one with `yelp-lora registry add RUN_DIR`)")
        if ref == "latest":
            return versions[-1]
        name = f"v{ref}" if ref.isdigit() else ref
        if name in versions:
            return name
        aliases = self.aliases()
        if ref in aliases:
            if aliases[ref] not in versions:
                raise RegistryError(f"alias '{ref}' points at {aliases[ref]}, which is not in the registry in {self.root}/")
            return aliases[ref]
        known = ", ".join(versions + sorted(aliases))
        raise RegistryError(f"the registry in {self.root}/ has no version or alias '{ref}' (known: {known})")

    def manifest(self, ref: str) -> Manifest:
        version = self.resolve(ref)
        file = self.root / version / MANIFEST_FILE
        try:
            return read_record(Manifest, file, RegistryError)
        except RegistryError as err:
            raise RegistryError(f"{err}: version {version} is damaged") from None

    def problems(self, ref: str, *, check_base: bool = True) -> list[str]:
        """Every way version `ref` differs from its manifest (empty when intact)."""
        version = self.resolve(ref)
        manifest = self.manifest(version)
        directory = self.root / version
        expected = manifest.files
        actual_names = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
        actual_names.discard(MANIFEST_FILE)
        found = [] if manifest.version == version else [f"{version}/{MANIFEST_FILE}: names version {manifest.version!r}"]
        for name in sorted(actual_names - set(expected)):
            kind = "pickled weights, refused" if name.lower().endswith(PICKLE_SUFFIXES) else "not in the manifest"
            found.append(f"{version}/{name}: unexpected file ({kind})")
        missing = self.missing_files(version, manifest)
        found += [f"{version}/{name}: missing" for name in missing]
        for name, sha in sorted(expected.items()):
            if name not in missing and file_sha256(directory / name) != sha:
                found.append(f"{version}/{name}: sha256 differs from the manifest (file changed after registration)")
        base = manifest.base_model
        if check_base and base.sha256:
            now = base_model_fingerprint(base.id, base.path)
            if now.sha256 is None:
                found.append(f"base model {base.id} at {base.path}: its recorded hash cannot be recomputed here "
                             f"({now.note}): nothing would check the weights that would be loaded")
            elif now.sha256 != base.sha256:
                found.append(f"base model {base.id} at {base.path}: weights or config changed since registration")
        return found

    def missing_files(self, version: str, manifest: Manifest) -> list[str]:
        """The manifest's files that are not in version's directory (there or not: `problems` hashes them)."""
        return [name for name in sorted(manifest.files) if not (self.root / version / name).is_file()]

    def verify(self, ref: str) -> Manifest:
        """The manifest of `ref` if every file matches it; else a RegistryError listing each problem.

        The reference is resolved once: an alias moved meanwhile does not change what is checked and returned."""
        version = self.resolve(ref)
        found = self.problems(version)
        if found:
            raise RegistryError("registry verification failed, refusing to load:\n  " + "\n  ".join(found))
        return self.manifest(version)

    def open(self, ref: str) -> tuple[Path, Manifest]:
        """(adapter directory, manifest) of a verified version, ready for `load_adapter` (with the base
        from `local_base_dir(manifest.base_model.path)`, the directory its hash was checked on)."""
        manifest = self.verify(ref)
        return self.root / manifest.version / ADAPTER_DIRNAME, manifest

    # ------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, so two concurrent `add`s never pick the same version number."""
        self.refuse_a_file_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RegistryError(f"cannot use {self.root} as a registry directory: {err.strerror}") from None
        with exclusive(self.root / LOCK_FILE):
            yield

    def add(self, run_dir: str | Path, name: str | None = None) -> Manifest:
        """Register the best adapter of a training run as the next version; returns its manifest."""
        if name is not None and not name.strip():
            raise RegistryError("--name: a version's name must not be empty")
        if name is not None and not name.isprintable():  # `registry list` shows one line per version
            raise RegistryError(f"--name {name!r}: a version's name is one line of printable characters")
        adapter_dir = resolve_adapter_dir(run_dir)
        run_root = run_dir_of(adapter_dir)
        run_file = run_root / RUN_FILE
        if not run_file.is_file():
            raise RegistryError(
                f"{run_root} has no {RUN_FILE}: the registry takes a run directory written by `yelp-lora train`"
            )
        entries = sorted(adapter_dir.rglob("*"))
        _refuse_pickles(adapter_dir, [path.name for path in entries])
        links = [path for path in entries if path.is_symlink()]
        if links:  # copied, the link's target would enter the version, whatever and wherever it is
            raise RegistryError(f"{links[0]} is a link (to {os.readlink(links[0])}): a registry version holds files "
                                "only; put the file itself there")
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
            raise RegistryError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}")
        run = read_record(RunRecord, run_file, RegistryError)
        sha256 = file_sha256(adapter_dir / ADAPTER_WEIGHTS)
        if run.adapter_sha256 not in (None, sha256):  # None in runs recorded before it was
            raise RegistryError(
                f"{run_file} records other adapter weights (sha256 {run.adapter_sha256[:12]}…, this adapter's "
                f"{sha256[:12]}…): they are not one run's (one stopped while `train --overwrite` replaced it?); "
                "train it again"
            )
        compare = read_compare(run_root)
        scored = compare.adapter_sha256 if compare else None  # None too in files written before it was recorded
        if scored and scored != sha256:
            raise RegistryError(
                f"{run_root / COMPARE_FILE} scored other adapter weights (sha256 {scored[:12]}…, "
                f"this adapter's {sha256[:12]}…): `yelp-lora compare --adapter {run_root} --json {run_root / COMPARE_FILE}` "
                "scores this one, or delete the file to register without test scores"
            )
        meta = read_adapter_meta(adapter_dir)
        base = base_model_fingerprint(meta.base_model, meta.base_model_path)
        id2label = json.loads((adapter_dir / "config.json").read_text(encoding="utf-8")).get("id2label")
        with self._locked():
            versions = self.versions()
            version = f"v{int(versions[-1][1:]) + 1 if versions else 1}"
            with atomic_dir(self.root / version) as staging:
                shutil.copytree(adapter_dir, staging / ADAPTER_DIRNAME)
                manifest = build_manifest(
                    version=version, name=name, run_root=run_root, run=run, compare=compare, meta=meta, base=base,
                    adapter_sha256=sha256, id2label=id2label,
                )
                (staging / CARD_FILE).write_text(model_card(manifest), encoding="utf-8")
                manifest.files = _tree_hashes(staging)
                (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        return manifest

    def promote(self, ref: str, alias: str) -> str:
        """Point `alias` at a verified version; the alias file is replaced atomically."""
        if not ALIAS_PATTERN.match(alias) or VERSION_PATTERN.match(alias) or alias == "latest":
            raise RegistryError(
                f"alias '{alias}' is not allowed: use a letter then letters, digits, '_', '.', '-' "
                "(and not a version name or 'latest')"
            )
        version = self.verify(ref).version
        with self._locked():
            aliases = self.aliases()
            aliases[alias] = version
            atomic_write_text(self.root / ALIASES_FILE, json.dumps(dict(sorted(aliases.items())), indent=2) + "\n")
        return version

    def aliases_of(self, version: str, aliases: dict[str, str] | None = None) -> list[str]:
        """The aliases naming `version`, from `aliases` where the caller has read them already."""
        return sorted(alias for alias, target in (self.aliases() if aliases is None else aliases).items() if target == version)
