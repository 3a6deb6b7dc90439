"""`yelp-lora serve` at several `--max-wait-ms` values, side by side: throughput and latency.

Usage: python benchmarks/serve_wait.py --adapter RUN_DIR [--backend onnx-int8] [--waits 0 10] [--rounds 2]
Starts one server per wait value, then, round by round and for 1, 8 and 32 concurrent clients,
sends each server 96 one-review requests in turn (so a shared machine's slow spells fall on all
of them), printing requests/s and p50 / p99 latency. Reviews are real rows of train.csv.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from yelp_lora.bench.service import ServeProcess
from yelp_lora.data.sources import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--waits", nargs="+", default=["0", "10"], help="--max-wait-ms values to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    texts = load_split("auto", "train").texts[:300]
    scratch = Path(tempfile.mkdtemp(prefix="serve-wait-"))
    servers = {
        wait: ServeProcess("--adapter", args.adapter, "--backend", args.backend, "--max-wait-ms", wait,
                           log=scratch / f"serve-{wait}.log")
        for wait in args.waits
    }
    try:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
            urls = {wait: server.wait_ready().url for wait, server in servers.items()}

            def one(url: str, index: int) -> float:
                started = time.perf_counter()
                client.post(f"{url}/v1/classify", json={"texts": [texts[index % len(texts)]]}).raise_for_status()
                return time.perf_counter() - started

            for number in range(args.rounds):
                for clients in (1, 8, 32):
                    for wait, url in urls.items():
                        with ThreadPoolExecutor(clients) as pool:
                            started = time.perf_counter()
                            latencies = np.array(list(pool.map(lambda i: one(url, i), range(args.requests)))) * 1000
                            seconds = time.perf_counter() - started
                        print(f"round {number + 1}  --max-wait-ms {wait:>4}  {clients:2d} clients: "
                              f"{args.requests / seconds:6.1f} req/s  p50 {np.percentile(latencies, 50):6.1f} ms  "
                              f"p99 {np.percentile(latencies, 99):6.1f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
