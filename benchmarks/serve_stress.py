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
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' helpers: a real server subprocess, the tiny BERT


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def request_bodies(texts: list[str], n: int, max_texts: int, seed: int) -> list[dict]:
    """n bodies: 40% {"text"}, 30% {"texts": [one]}, 30% {"texts": [2..max_texts]}, drawn with a fixed seed."""
    pick = random.Random(seed)
    bodies = []
    for _ in range(n):
        kind = pick.random()
        if kind < 0.4:
            bodies.append({"text": pick.choice(texts)})
        elif kind < 0.7 or max_texts < 2:
            bodies.append({"texts": [pick.choice(texts)]})
        else:
            bodies.append({"texts": pick.sample(texts, pick.randint(2, max_texts))})
    return bodies


def texts_in(body: dict) -> int:
    return len(body["texts"]) if "texts" in body else 1


async def run_load(url: str, bodies: list[dict], *, concurrency: int, server_pid: int, time_limit: float,
                   headers: dict | None = None, request_timeout: float = 120.0) -> dict:
    """Send every body once from `concurrency` clients; stop early at time_limit. Returns the figures."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    error_samples: list[str] = []  # the first few, with when and what, to tell a race from a bug
    rss: list[tuple[int, float]] = []  # (requests finished, MiB)
    next_body, finished, texts_ok = 0, 0, 0
    done = asyncio.Event()
    deadline = time.monotonic() + time_limit

    async def sample_rss() -> None:
        while not done.is_set():
            rss.append((finished, rss_mib(server_pid)))
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except TimeoutError:
                pass

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_body, finished, texts_ok
        while next_body < len(bodies) and time.monotonic() < deadline:
            body, next_body = bodies[next_body], next_body + 1
            started = time.perf_counter()
            try:
                response = await http.post("/v1/classify", json=body)
            except httpx.HTTPError as err:
                problem = f"{type(err).__name__}: {err!r} (cause {err.__cause__!r})"
                errors[type(err).__name__] += 1
            else:
                problem = None
                if response.status_code != 200:
                    problem = f"{response.status_code}: {response.text[:300]}"
                    errors[str(response.status_code)] += 1
                elif len(response.json()["results"]) != texts_in(body):
                    problem = "200 with wrong result count"
                    errors[problem] += 1
                else:
                    latencies.append(time.perf_counter() - started)
                    texts_ok += texts_in(body)
            if problem and len(error_samples) < 10:
                error_samples.append(f"request {finished} at {time.perf_counter() - run_started:.1f} s, "
                                     f"after {time.perf_counter() - started:.2f} s: {problem}")
            finished += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=request_timeout, limits=limits) as http:
        sampler = asyncio.create_task(sample_rss())
        run_started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - run_started
        done.set()
        await sampler
    rss.append((finished, rss_mib(server_pid)))

    tenth, half = (next(mib for count, mib in rss if count >= max(1, finished * share // 10)) for share in (1, 5))
    quantiles = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
    return {
        "requests_planned": len(bodies),
        "requests_sent": finished,
        "requests_ok": len(latencies),
        "stopped_by_time_limit": finished < len(bodies),
        "errors": dict(errors),
        "error_samples": error_samples,
        "texts_classified": texts_ok,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(finished / elapsed, 1),
        "texts_per_s": round(texts_ok / elapsed, 1),
        "latency_ms": dict(zip(("p50", "p95", "p99"), (round(float(q), 1) for q in quantiles))),
        "rss_mib": {
            "start": round(rss[0][1], 1), "at_10pct": round(tenth, 1), "at_50pct": round(half, 1), "end": round(rss[-1][1], 1),
            "peak": round(max(mib for _, mib in rss), 1), "growth_10pct_to_end": round(rss[-1][1] - tenth, 1),
            "growth_50pct_to_end": round(rss[-1][1] - half, 1),
            "samples": len(rss),
        },
    }


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


def tiny_adapter(root: Path) -> Path:
    from fault_helpers import build_tiny_bert, run_cli, shared_data_dir, tiny_train_args

    result = run_cli(*tiny_train_args(build_tiny_bert(root / "tiny-bert"), shared_data_dir(), root / "run", "--max-steps", "1"))
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

    from deploy_helpers import Server, data_dir
    from yelp_lora.atomic import atomic_write_text
    from yelp_lora.data import load_split

    texts = [t for t in load_split(str(data_dir()), "train").texts if args.max_review_chars is None or len(t) <= args.max_review_chars]
    bodies = request_bodies(texts, args.requests, args.max_texts, args.seed)
    with tempfile.TemporaryDirectory(prefix="serve-stress-") as scratch:
        adapter = args.adapter or str(tiny_adapter(Path(scratch)))
        key_args = ["--api-key", args.api_key] if args.api_key else []
        server = Server("--adapter", adapter, *key_args, log=Path(scratch) / "serve.log").wait_ready()
        try:
            headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
            result = asyncio.run(run_load(server.url, bodies, concurrency=args.concurrency,
                                          server_pid=server.process.pid, time_limit=args.time_limit, headers=headers))
        finally:
            server.stop()
            server_log_tail = server.log_path.read_text()[-3000:]
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
