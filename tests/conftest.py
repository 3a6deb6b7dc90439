"""The session's shared fixtures, built once and read by every module: the real data, one seeded
tiny BERT, one tiny-BERT training run, one small real MiniLM run, and a registry holding it.
Tests must not modify them; a test that damages a run or registry copies it first."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import DEMO_CONFIG, MINILM_RUN_ARGS, TINY_ENV, build_tiny_bert, cli, data_dir as find_data_dir
from support import run_cli, tiny_train_args


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """ONNX exports (what `--backend auto` runs on most CPUs) go to the session's own cache, never ~/.cache."""
    import os

    cache = tmp_path_factory.mktemp("onnx-cache")
    os.environ["YELP_LORA_CACHE"] = str(cache)  # also read by every CLI subprocess (support.cli_env)
    return cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return find_data_dir()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert_dir, data_dir) -> Path:
    """The tiny BERT's LoRA adapter, trained one step through the real train path."""
    out = tmp_path_factory.mktemp("tiny-run") / "run"
    run_cli(*tiny_train_args(tiny_bert_dir, data_dir, out, "--max-steps", "1"), env=TINY_ENV)
    return out


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory, data_dir) -> Path:
    """One small real training run of the packaged MiniLM on real rows (support.MINILM_RUN)."""
    out = tmp_path_factory.mktemp("minilm-run") / "run"
    run_cli("train", "--config", DEMO_CONFIG, "--data", str(data_dir), *MINILM_RUN_ARGS, "--output-dir", str(out))
    return out


@pytest.fixture(scope="session")
def registry(tmp_path_factory, minilm_run) -> Path:
    """A registry with the MiniLM run as v1, aliased 'production'."""
    root = tmp_path_factory.mktemp("registry")
    cli("registry", "add", str(minilm_run), "--name", "tiny", "--registry", str(root))
    cli("registry", "promote", "v1", "--alias", "production", "--registry", str(root))
    return root


@pytest.fixture(scope="session")
def predicted(registry) -> list[dict]:
    """What `yelp-lora predict --version v1 --json` answers for support.review_texts(), in order."""
    import json

    from support import review_texts

    result = run_cli("predict", "--version", "v1", "--registry", str(registry), "--json", *review_texts())
    return json.loads(result.stdout)
