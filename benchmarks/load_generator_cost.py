"""What a load generator costs the machine it shares with the server: httpx on threads (the bench's
generator until 2026-12-06), httpx's asyncio client, and aiohttp (`bench.service.drive`'s library),
against one `yelp-lora serve --backend onnx-int8`, at 1 and 32 concurrent clients, two rounds.

Usage: python benchmarks/load_generator_cost.py ADAPTER [--requests 384]
Prints requests/s and the generator process's CPU time per request (time.process_time, all threads).
Reviews: the first 400 rows of test.csv, for timing only.
"""
import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from yelp_lora.bench.service import ServeProcess, drive
from yelp_lora.data.sources import load_split

JSON = {"content-type": "application/json"}


def threads(url, clients, bodies, requests):
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        client.post(url, content=bodies[0], headers=JSON)

        def one(i):
            return client.post(url, content=bodies[i % len(bodies)], headers=JSON).status_code
        with ThreadPoolExecutor(clients) as pool:
            c0, t0 = time.process_time(), time.perf_counter()
            statuses = list(pool.map(one, range(requests)))
            return time.perf_counter() - t0, time.process_time() - c0, statuses


async def _httpx_async(url, clients, bodies, requests):
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        await client.post(url, content=bodies[0], headers=JSON)
        work, statuses = iter(range(requests)), []

        async def worker():
            for i in work:
                statuses.append((await client.post(url, content=bodies[i % len(bodies)], headers=JSON)).status_code)
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, time.process_time() - c0, statuses


def httpx_async(url, clients, bodies, requests):
    return asyncio.run(_httpx_async(url, clients, bodies, requests))


def aiohttp_drive(url, clients, bodies, requests):
    load = drive(url, bodies, clients, requests)
    return load.seconds, load.client_cpu_seconds, load.statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="run or adapter directory the server loads")
    parser.add_argument("--requests", type=int, default=384, help="requests per generator and client count")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error(f"--requests {args.requests}: at least 1")
    bodies = [json.dumps({"texts": [t]}).encode() for t in load_split("auto", "test").texts[:400]]
    log = Path(tempfile.mkdtemp(prefix="load-generator-")) / "serve.log"
    with ServeProcess("--adapter", args.adapter, "--backend", "onnx-int8", log=log) as server:
        server.wait_ready()
        url = f"{server.url}/v1/classify"
        generators = [("httpx threads", threads), ("httpx async", httpx_async), ("aiohttp (drive)", aiohttp_drive)]
        for rnd in range(2):
            for name, generator in generators:
                for clients in (1, 32):
                    wall, cpu, st = generator(url, clients, bodies, args.requests)
                    print(f"round {rnd} {name:16s} clients {clients:2d}: {args.requests / wall:6.1f} req/s, client CPU "
                          f"{cpu:5.2f}s of {wall:5.2f}s wall ({cpu / args.requests * 1000:.2f} ms/request), errors "
                          f"{sum(s != 200 for s in st)}", flush=True)


if __name__ == "__main__":
    main()
