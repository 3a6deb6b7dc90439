"""How fast the commands start: `serve --help`, `predict` of one text, and `serve` until /readyz answers.

Usage: python benchmarks/startup.py --adapter RUN_DIR [--src DIR] [--runs 5]
Each is timed as a fresh process, `--runs` times, and the median printed. `--src` puts another
checkout's src/ first on PYTHONPATH (to compare two versions on the same machine and adapter).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import httpx

from yelp_lora.bench.service import ServeProcess


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def serve_ready(adapter: str, env: dict) -> float:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        with ServeProcess("--adapter", adapter, log=Path(scratch) / "serve.log", env=env) as server:
            while True:
                try:
                    if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if server.process.poll() is not None:
                    raise SystemExit(server.log_tail())
                time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--src", help="a checkout's src/ to run instead of the installed package")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": args.src} if args.src else {})}
    cli = [sys.executable, "-m", "yelp_lora"]
    figures = {
        "serve --help": [timed([*cli, "serve", "--help"], env) for _ in range(args.runs)],
        "predict one text": [timed([*cli, "predict", "--adapter", args.adapter, "The tacos were fantastic."], env)
                             for _ in range(args.runs)],
        "serve until /readyz": [serve_ready(args.adapter, env) for _ in range(args.runs)],
    }
    for name, seconds in figures.items():
        print(f"{name:<20} median {statistics.median(seconds):6.2f} s   ({', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
