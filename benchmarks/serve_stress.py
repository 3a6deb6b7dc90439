"""Stress `yelp-lora serve`: N requests from C concurrent clients on loopback, errors, latency and server memory.

Usage: python benchmarks/serve_stress.py [--adapter RUN_DIR] [--requests 10000] [--concurrency 32]
           [--max-texts 8] [--max-review-chars N] [--time-limit 3600] [--api-key KEY] [--json FILE]

Starts a real `yelp-lora serve` subprocess on a free 127.0.0.1 port (without --adapter: a tiny random
2-layer BERT with a LoRA adapter trained for one step through the real train path, so the HTTP stack,
not the model, is what is stressed). Bodies are real reviews from ../shared train.csv (read at run time,
never test.csv): {"text": ...}, {"texts": [one]} or {"texts": [2..max-texts]}. Every 200 must carry one
result per text sent, or it counts as an error. Stops by itself after --requests or --time-limit.
Prints a table: requests and errors by status, req/s and texts/s, p50/p95/p99 latency, and the server's
resident memory (VmRSS from /proc/PID/status, sampled through the run) with its growth from the point
10% of the requests were done to the end. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from yelp_lora.bench.load import request_bodies, run_load
from yelp_lora.bench.run import random_base
from yelp_lora.bench.service import ServeProcess
from yelp_lora.data.sources import load_split, resolve_source
from yelp_lora.util.atomic import atomic_write_text


def format_table(result: dict) -> str:
    latency, rss = result["latency_ms"], result["rss_mib"]
    rows = [
        ("requests sent / planned", f"{result['requests_sent']:,} / {result['requests_planned']:,}"
         + ("  (stopped by --time-limit)" if result["stopped_by_time_limit"] else "")),
        ("concurrent clients", result["concurrency"]),
        ("ok (200, one result per text)", f"{result['requests_ok']:,}"),
        ("errors by status", ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "none"),
        ("texts classified", f"{result['texts_classified']:,}"),
        ("wall time", f"{result['seconds']} s"),
        ("throughput", f"{result['requests_per_s']} req/s, {result['texts_per_s']} texts/s"),
        ("latency p50 / p95 / p99", f"{latency['p50']} / {latency['p95']} / {latency['p99']} ms"),
        ("server RSS start / 10% / 50% / end", f"{rss['start']} / {rss['at_10pct']} / {rss['at_50pct']} / {rss['end']} MiB"),
        ("server RSS peak", f"{rss['peak']} MiB ({rss['samples']} samples)"),
        ("RSS growth 10% -> end, 50% -> end", f"{rss['growth_10pct_to_end']:+} MiB, {rss['growth_50pct_to_end']:+} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def tiny_adapter(root: Path, data: str) -> Path:
    """A LoRA adapter on the tiny random BERT, trained one step through the real train path."""
    base = random_base("tiny", root / "tiny-bert", seed=0)
    command = [sys.executable, "-m", "yelp_lora", "train", "--model", str(base), "--data", data, "--max-length", "64",
               "--train-samples", "64", "--val-samples", "32", "--batch-size", "8", "--precision", "fp32",
               "--max-steps", "1", "--output-dir", str(root / "run")]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"training the tiny adapter failed:\n{result.stderr[-3000:]}")
    return root / "run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", help="run or adapter directory (default: train a tiny random-BERT adapter)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-texts", type=int, default=8, help="most texts in a multi-text body")
    parser.add_argument("--max-review-chars", type=int, help="only reviews up to this length")
    parser.add_argument("--time-limit", type=float, default=3600, help="stop sending after this many seconds")
    parser.add_argument("--api-key", help="start the server with this key and send it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    data = resolve_source("auto")
    texts = [t for t in load_split(data, "train").texts if args.max_review_chars is None or len(t) <= args.max_review_chars]
    bodies = request_bodies(texts, args.requests, args.max_texts, args.seed)
    with tempfile.TemporaryDirectory(prefix="serve-stress-") as scratch:
        adapter = args.adapter or str(tiny_adapter(Path(scratch), data))
        key_args = ["--api-key", args.api_key] if args.api_key else []
        server = ServeProcess("--adapter", adapter, *key_args, log=Path(scratch) / "serve.log").wait_ready()
        try:
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
            result = asyncio.run(run_load(server.url, bodies, concurrency=args.concurrency,
                                          server_pid=server.process.pid, time_limit=args.time_limit, headers=headers))
        finally:
            server.stop()
            server_log_tail = server.log_tail()
    result.update(adapter=args.adapter or "tiny random BERT (2 layers, hidden 32), LoRA trained 1 step",
                  reviews=f"{len(texts)} train.csv reviews" + (f" up to {args.max_review_chars} chars" if args.max_review_chars else ""),
                  cpus=os.cpu_count(), load_average_after=[round(x, 1) for x in os.getloadavg()])
    print(format_table(result))
    if result["errors"]:
        print("first errors:", *result["error_samples"], "server log, last lines:", server_log_tail, sep="\n")
    print(f"machine: {os.cpu_count()} CPUs, load average after the run {result['load_average_after']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
