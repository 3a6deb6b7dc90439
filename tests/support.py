"""What the tests share: the real data, the CLI run as a user runs it, a seeded tiny BERT, real
review texts, and a real `yelp-lora serve` on a loopback port. Fixtures built on these (the
session's one MiniLM run, one tiny-BERT run, one registry) are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from yelp_lora.bench.service import ServeProcess

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEMO_CONFIG = str(REPO / "configs" / "demo.yaml")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The session's one small real MiniLM run (conftest.minilm_run): 64 reviews, 40 validation rows,
# 8 steps of 16 (two epochs), a loss logged every 2 steps.
MINILM_RUN = dict(train_samples=64, val_samples=40, seed=7)
MINILM_RUN_ARGS = (
    "--train-samples", str(MINILM_RUN["train_samples"]), "--val-samples", str(MINILM_RUN["val_samples"]),
    "--seed", str(MINILM_RUN["seed"]), "--max-steps", "8", "--logging-steps", "2",
    # The demo config on 64 train.csv rows alone (run.json's row counts are the fixture's), cut at 256
    # tokens by head as the tests of long reviews, exports and limits expect.
    "--set", "data.extra_train=[]", "--max-length", "256", "--truncation", "head",
)
# Tiny-BERT subprocesses run one thread each: two of them share the 2 cores under torchrun.
TINY_ENV = {"OMP_NUM_THREADS": "1"}


def data_dir() -> Path:
    """The real Yelp rows: $YELP_LORA_DATA or ../shared/data/yelp_review_full beside the repository."""
    found = Path(os.environ.get("YELP_LORA_DATA") or REPO.parent / "shared" / "data" / "yelp_review_full")
    if not (found / "train.csv").is_file():
        raise AssertionError(f"real data not found at {found}: set YELP_LORA_DATA or lay ../shared beside the repo")
    return found


def shared_rows(limit: int | None = None) -> list[tuple[int, str]]:
    """(label 0-4, text) from the shared train.csv (never test.csv), in file order."""
    with open(data_dir() / "train.csv", newline="", encoding="utf-8") as handle:
        rows = [(int(r["label"]), r["text"]) for r in csv.DictReader(handle)]
    return rows[:limit] if limit else rows


def review_texts(n: int = 12) -> list[str]:
    """Real reviews from train.csv, of varied lengths, the longest one cut off by the model."""
    texts = sorted((text for _, text in shared_rows()), key=len)
    step = max(1, len(texts) // n)
    return texts[::step][: n - 1] + [texts[-1]]


def auto_backend() -> str:
    """The prediction backend `--backend auto` (the default) picks on this machine."""
    import torch

    from yelp_lora.modeling.hardware import prediction_backend

    return prediction_backend("auto", torch.device("cpu")).value


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a CLI subprocess gets: this checkout's source first, offline hubs."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


def run_cli(*args: str, check: bool = True, timeout: float = 900, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """`python -m yelp_lora ARGS` in a real subprocess, as a user runs it; `env` adds to cli_env()."""
    result = subprocess.run(
        [PYTHON, "-m", "yelp_lora", *args], capture_output=True, text=True, timeout=timeout,
        env=cli_env(**(env or {})), cwd=popen.pop("cwd", REPO), **popen,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"yelp-lora {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`yelp-lora ARGS` through the real CLI entry point, in this process (no interpreter start-up)."""
    from yelp_lora.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if check and code != 0:
        raise AssertionError(f"yelp-lora {' '.join(args)} failed ({code}):\n{err.getvalue()[-4000:]}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def build_tiny_bert(directory: Path) -> Path:
    """A seeded random 2-layer, hidden-32 BERT with bert-base-uncased's vocabulary, saved as a base
    model directory (the bench's "tiny" shape): the real code paths at a fraction of the cost."""
    from yelp_lora.bench.run import random_base

    return random_base("tiny", directory, seed=0)


def tiny_train_args(base: Path, data: Path | str, output: Path, *extra: str) -> list[str]:
    """`train` on the tiny BERT: 64 rows, 32 validation rows, batch 8, fp32."""
    return [
        "train", "--model", str(base), "--data", str(data), "--max-length", "64", "--train-samples", "64",
        "--val-samples", "32", "--batch-size", "8", "--precision", "fp32", "--output-dir", str(output), *extra,
    ]


def Server(*args: str, log: Path) -> ServeProcess:
    """`yelp-lora serve ARGS` from this checkout on a free loopback port (call .wait_ready(), .stop())."""
    return ServeProcess(*args, log=log, env=cli_env(), cwd=REPO)


def mcp_session(registry: Path, coroutine, *args: str):
    """Start `yelp-lora mcp --version v1 ARGS` as a subprocess and run coroutine(client) against it over stdio."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=PYTHON,
        args=["-m", "yelp_lora", "mcp", "--version", "v1", "--registry", str(registry), *args],
        env=cli_env(),
        cwd=REPO,
    )

    async def main():
        async with Client(params, read_timeout_seconds=300) as client:
            return await coroutine(client)

    return asyncio.run(main())
