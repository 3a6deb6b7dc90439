"""Throughput of `yelp-lora serve` under concurrent single-review requests, against offline batch prediction.

Usage: python benchmarks/serve_throughput.py --adapter RUN_DIR [--n 256] [--concurrency 64] [--max-review-chars N]
Prints texts/s for: offline Predictor.predict (batch 64); the service with micro-batching
(defaults); and the service with batching off (--max-texts 1 --max-batch 1).
Reviews are real rows of train.csv (never test.csv). Expect noise on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from yelp_lora.bench.service import ServeProcess
from yelp_lora.data.sources import load_split
from yelp_lora.inference.predictor import Predictor


def offline(adapter: str, texts: list[str]) -> float:
    predictor = Predictor(adapter, batch_size=64)
    predictor.predict(texts[:8])  # warm-up
    started = time.perf_counter()
    predictor.predict(texts)
    return len(texts) / (time.perf_counter() - started)


def served(adapter: str, texts: list[str], concurrency: int, extra: list[str]) -> tuple[float, float]:
    """(texts/s, mean texts per model batch) for one request per text, `concurrency` at a time."""
    with tempfile.TemporaryDirectory(prefix="serve-throughput-") as scratch, \
            ServeProcess("--adapter", adapter, *extra, log=Path(scratch) / "serve.log") as server:
        url = server.wait_ready().url

        async def fire() -> float:
            gate = asyncio.Semaphore(concurrency)
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

                async def one(text: str) -> None:
                    async with gate:
                        response = await http.post("/v1/classify", json={"text": text})
                        response.raise_for_status()

                await http.post("/v1/classify", json={"texts": texts[:8]})  # warm-up
                started = time.perf_counter()
                await asyncio.gather(*(one(text) for text in texts))
                return time.perf_counter() - started

        elapsed = asyncio.run(fire())
        metrics = httpx.get(f"{url}/metrics").text
        total = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("yelp_lora_batch_texts_sum"))
        count = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("yelp_lora_batch_texts_count"))
        return len(texts) / elapsed, total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-review-chars", type=int, help="only reviews up to this length (short texts: batching matters most)")
    args = parser.parse_args()
    rows = load_split("auto", "train")
    texts = [t for t in rows.texts if args.max_review_chars is None or len(t) <= args.max_review_chars][: args.n]
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"{len(texts)} real reviews (train.csv, mean {mean_chars:.0f} chars), {os.cpu_count()} CPUs, concurrency {args.concurrency}")
    print(f"offline Predictor.predict, batch 64 : {offline(args.adapter, texts):7.1f} texts/s")
    rate, mean_batch = served(args.adapter, texts, args.concurrency, [])
    print(f"serve, micro-batching (defaults)   : {rate:7.1f} texts/s  (mean {mean_batch:.1f} texts per model batch)")
    rate, mean_batch = served(args.adapter, texts, args.concurrency, ["--max-texts", "1", "--max-batch", "1"])
    print(f"serve, batching off (--max-batch 1): {rate:7.1f} texts/s  (mean {mean_batch:.1f} texts per model batch)")


if __name__ == "__main__":
    main()
