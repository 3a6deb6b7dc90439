"""What a load generator costs the machine it shares with the server: httpx on threads (the bench's
generator until 2026-12-06), httpx's asyncio client, and aiohttp (`bench.service.drive`'s library),
against one `yelp-lora serve --backend onnx-int8`, at 1 and 32 concurrent clients, two rounds.

Usage: python benchmarks/load_generator_cost.py ADAPTER [REQUESTS=384]
Prints requests/s and the generator process's CPU time per request (time.process_time, all threads).
Reviews: the first 400 rows of test.csv, for timing only.
"""
import asyncio
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from yelp_lora.bench.service import ServeProcess, drive
from yelp_lora.data.sources import load_split

adapter = sys.argv[1]
requests = int(sys.argv[2]) if len(sys.argv) > 2 else 384
texts = load_split("auto", "test").texts[:400]
bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
JSON = {"content-type": "application/json"}


def threads(url, clients):
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        client.post(url, json={"texts": texts[:1]})

        def one(i):
            return client.post(url, content=bodies[i % len(bodies)], headers=JSON).status_code
        with ThreadPoolExecutor(clients) as pool:
            c0, t0 = time.process_time(), time.perf_counter()
            statuses = list(pool.map(one, range(requests)))
            return time.perf_counter() - t0, time.process_time() - c0, statuses


async def _httpx_async(url, clients):
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        await client.post(url, json={"texts": texts[:1]})
        work, statuses = iter(range(requests)), []

        async def worker():
            for i in work:
                statuses.append((await client.post(url, content=bodies[i % len(bodies)], headers=JSON)).status_code)
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, time.process_time() - c0, statuses


def _aiohttp(url, clients):
    load = drive(url, bodies, clients, requests)
    return load.seconds, load.client_cpu_seconds, load.statuses


with ServeProcess("--adapter", adapter, "--backend", "onnx-int8", log=Path(tempfile.mkdtemp(prefix="load-generator-")) / "serve.log") as server:
    server.wait_ready()
    url = f"{server.url}/v1/classify"
    for rnd in range(2):
        generators = [("httpx threads", threads), ("httpx async", lambda u, c: asyncio.run(_httpx_async(u, c))),
                      ("aiohttp (drive)", _aiohttp)]
        for name, fn in generators:
            for clients in (1, 32):
                wall, cpu, st = fn(url, clients)
                print(f"round {rnd} {name:16s} clients {clients:2d}: {requests / wall:6.1f} req/s, client CPU {cpu:5.2f}s "
                      f"of {wall:5.2f}s wall ({cpu / requests * 1000:.2f} ms/request), errors {sum(s != 200 for s in st)}",
                      flush=True)
