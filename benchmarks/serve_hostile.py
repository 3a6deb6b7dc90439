"""`yelp-lora serve` under hostile load: a flood of requests against its bounded queue, and slowloris
clients against its read time-out, with the figures docs/deploy.md reports.

Usage: python benchmarks/serve_hostile.py --adapter RUN_DIR [--requests 900] [--connections 300]
           [--texts-per-request 64] [--slow 40] [serve options, e.g. --max-queue 64 --read-timeout 10]

Starts a real server on a free loopback port (the options after the script's own are passed to
`yelp-lora serve`), sends every request at once, then opens slow-body and slow-header connections,
and prints: answers by status with the slowest of each, the server's RSS before and after, how long a
lone request took after the flood and during the slow clients, and when the slow clients were cut.
Reviews are real train.csv rows (never test.csv). Every loop is bounded; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from yelp_lora.bench.load import flood, flood_summary, rss_mib, slow_clients, until_closed
from yelp_lora.bench.service import ServeProcess
from yelp_lora.data.sources import load_split


def lone_request_s(url: str) -> float:
    started = time.perf_counter()
    httpx.post(f"{url}/v1/classify", json={"text": "The soup was warm and the waiter kind."}, timeout=120).raise_for_status()
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--texts-per-request", type=int, default=64)
    parser.add_argument("--slow", type=int, default=40, help="slow-body and slow-header connections, each")
    parser.add_argument("--json", type=Path)
    args, serve_options = parser.parse_known_args()
    texts = load_split("auto", "train").texts
    bodies = [{"texts": [texts[(i * 7 + k) % len(texts)] for k in range(args.texts_per_request)]} for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="serve-hostile-") as scratch, \
            ServeProcess("--adapter", args.adapter, *serve_options, log=Path(scratch) / "serve.log") as server:
        server.wait_ready()
        limits = httpx.get(f"{server.url}/v1/model").json()["limits"]
        lone_request_s(server.url)  # warm-up
        rss_start = rss_mib(server.process.pid)
        started = time.perf_counter()
        answers = asyncio.run(flood(server.url, bodies, connections=args.connections))
        result = {
            "limits": limits,
            "flood": {"requests": args.requests, "texts_per_request": args.texts_per_request,
                      "connections": args.connections, "seconds": round(time.perf_counter() - started, 1),
                      **flood_summary(answers)},
            "rss_mib": {"before": round(rss_start, 1), "after_flood": round(rss_mib(server.process.pid), 1)},
            "lone_request_after_flood_s": lone_request_s(server.url),
        }
        started = time.monotonic()
        trickle = limits["read_timeout_s"] - 1
        slow = [*slow_clients("127.0.0.1", server.port, count=args.slow, trickle_s=trickle, headers_only=False),
                *slow_clients("127.0.0.1", server.port, count=args.slow, trickle_s=trickle, headers_only=True)]
        during = lone_request_s(server.url)
        replies = [until_closed(sock) for sock in slow]
        result["slow_clients"] = {
            "connections": len(slow), "all_cut_after_s": round(time.monotonic() - started, 1),
            "answered_408": sum(reply.startswith(b"HTTP/1.1 408") for reply in replies),
            "closed_without_answer": sum(reply == b"" for reply in replies),
            "lone_request_meanwhile_s": during,
        }
        for sock in slow:
            sock.close()
        result["rss_mib"]["end"] = round(rss_mib(server.process.pid), 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
