"""Shared by the deployment tests (registry, serve, agent, web page): one tiny real run per session,
a registry holding it, real review rows, and a real `yelp-lora serve` subprocess on a loopback port.

Plain functions with a per-session cache rather than conftest fixtures, so that these modules
share one trained adapter without adding to the project's conftest.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from yelp_lora.bench import free_port

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download anything
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
TINY_RUN = ("--train-samples", "64", "--val-samples", "40", "--max-steps", "8")
_cache: dict = {}
# While iterating on these tests, point this at a run trained with TINY_RUN to skip training.
REUSE_RUN_ENV = "YELP_LORA_TEST_RUN_DIR"


def cli_env(extra: dict | None = None) -> dict:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m yelp_lora ARGS` in a real subprocess, as a user would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "yelp_lora", *args], capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO
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


def data_dir() -> Path:
    found = Path(os.environ.get("YELP_LORA_DATA") or REPO.parent / "shared" / "data" / "yelp_review_full")
    assert (found / "train.csv").is_file(), f"real data not found at {found}: set YELP_LORA_DATA or lay ../shared beside the repo"
    return found


def tiny_run(tmp_path_factory) -> Path:
    """One tiny real MiniLM training run on real rows (~30-60 s), trained once per session."""
    if "run" not in _cache and os.environ.get(REUSE_RUN_ENV):
        _cache["run"] = Path(os.environ[REUSE_RUN_ENV])
    if "run" not in _cache:
        out = tmp_path_factory.mktemp("deploy-run")
        run_cli("train", "--config", "configs/demo.yaml", "--data", str(data_dir()), *TINY_RUN, "--output-dir", str(out))
        _cache["run"] = out
    return _cache["run"]


def tiny_registry(tmp_path_factory) -> Path:
    """A registry with the tiny run as v1, aliased 'production'. Tests must not modify it."""
    if "registry" not in _cache:
        root = tmp_path_factory.mktemp("deploy-registry")
        cli("registry", "add", str(tiny_run(tmp_path_factory)), "--name", "tiny", "--registry", str(root))
        cli("registry", "promote", "v1", "--alias", "production", "--registry", str(root))
        _cache["registry"] = root
    return _cache["registry"]


def review_texts(n: int = 12) -> list[str]:
    """Real reviews from train.csv (never test.csv), of varied lengths, the longest one cut off by the model."""
    from yelp_lora.data import load_split

    rows = load_split(str(data_dir()), "train")
    by_length = sorted(range(len(rows)), key=lambda i: len(rows.texts[i]))
    step = max(1, len(by_length) // n)
    chosen = by_length[::step][: n - 1] + [by_length[-1]]
    return [rows.texts[i] for i in chosen]


def predict_cli(registry: Path, texts: list[str]) -> list[dict]:
    """What `yelp-lora predict --version v1 --json` answers for these texts (cached per text list)."""
    key = ("predict", str(registry), tuple(texts))
    if key not in _cache:
        result = run_cli("predict", "--version", "v1", "--registry", str(registry), "--json", *texts)
        _cache[key] = json.loads(result.stdout)
    return _cache[key]


class Server:
    """`yelp-lora serve ...` in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(self, *args: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "yelp_lora", "serve", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO,
        )
        self.log_path = log

    def wait_ready(self, timeout: float = 180) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode
