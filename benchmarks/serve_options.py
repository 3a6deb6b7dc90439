"""`yelp-lora serve` with several values of one option, side by side: throughput and latency.

Usage: python benchmarks/serve_options.py --adapter RUN_DIR [--backend onnx-int8]
           [--option=--max-wait-ms] [--values 0 10] [--rounds 2]
e.g. `--option=--http --values h11 httptools` compares the HTTP parsers (the = keeps argparse from
reading the flag as one of its own).
Starts one server per value, then, round by round and for 1, 8 and 32 concurrent clients,
sends each server 300 one-review requests in turn (so a shared machine's slow spells fall on all
of them; `bench.service.drive`, the bench's load generator), printing requests/s and p50 / p99
latency. Reviews are real rows of train.csv.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from yelp_lora.bench.service import ServeProcess, drive
from yelp_lora.data.sources import load_split
from yelp_lora.modeling.hardware import PREDICTION_BACKENDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--backend", default="onnx-int8", choices=PREDICTION_BACKENDS[1:])  # every backend but auto
    parser.add_argument("--option", default="--max-wait-ms", help="the `yelp-lora serve` option to vary")
    parser.add_argument("--values", nargs="+", default=["0", "10"], help="its values to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    texts = load_split("auto", "train").texts[:300]
    scratch = Path(tempfile.mkdtemp(prefix="serve-options-"))
    servers = {
        value: ServeProcess("--adapter", args.adapter, "--backend", args.backend, args.option, value,
                            log=scratch / f"serve-{value}.log")
        for value in args.values
    }
    try:
        urls = {value: f"{server.wait_ready().url}/v1/classify" for value, server in servers.items()}
        bodies = [json.dumps({"texts": [text]}).encode() for text in texts]
        for number in range(args.rounds):
            for clients in (1, 8, 32):
                for value, url in urls.items():
                    load = drive(url, bodies, clients, args.requests)
                    latencies = np.array(load.latencies) * 1000
                    if any(status != 200 for status in load.statuses):
                        raise SystemExit(f"{args.option} {value}: errors in {clients}-client round: {set(load.statuses)}")
                    print(f"round {number + 1}  {args.option} {value:>9}  {clients:2d} clients: "
                          f"{args.requests / load.seconds:6.1f} req/s  p50 {np.percentile(latencies, 50):6.1f} ms  "
                          f"p99 {np.percentile(latencies, 99):6.1f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
