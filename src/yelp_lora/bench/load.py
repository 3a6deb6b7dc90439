"""An HTTP load generator for `yelp-lora serve`: many bodies from concurrent clients, with errors,
latency and the server's resident memory sampled through the run. `benchmarks/serve_stress.py`
prints its figures; the stress test asserts on them."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np


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


# ---------------------------------------------------------------- hostile load


async def flood(url: str, bodies: list[dict], *, connections: int, timeout: float = 60.0) -> list[dict]:
    """Every body at once over `connections` connections: each answer's status (or the transport
    error's name), seconds and Retry-After header, in the order sent.

    aiohttp writes each request's headers and body in one go. httpx wrote them apart, and with this
    client starved by the server on the same two cores, a body could arrive past the server's read
    time-out after its headers, which the server rightly cut (1 request in 600, in about one flood
    of five on a slow day).
    """
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        base_url=url, connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as http:
        async def one(body: dict) -> dict:
            started = time.perf_counter()
            try:
                async with http.post("/v1/classify", json=body) as response:
                    await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                return {"status": type(err).__name__, "seconds": time.perf_counter() - started, "retry_after": None}
            return {"status": response.status, "seconds": time.perf_counter() - started,
                    "retry_after": response.headers.get("retry-after")}

        return await asyncio.gather(*(one(body) for body in bodies))


def flood_summary(answers: list[dict]) -> dict:
    """Answers by status, with the slowest of each."""
    by_status = Counter(str(answer["status"]) for answer in answers)
    return {
        "answers": dict(sorted(by_status.items())),
        "slowest_s": {status: round(max(a["seconds"] for a in answers if str(a["status"]) == status), 2)
                      for status in by_status},
    }


def slow_clients(host: str, port: int, *, count: int, trickle_s: float, headers_only: bool) -> list:
    """`count` connections that send a request's headers (or only its first header line) and then one
    byte a second for `trickle_s` seconds, as a slowloris client does: the open sockets."""
    opening = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n" if headers_only else
               b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n{")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, port), timeout=60)
        sock.sendall(opening)
        sockets.append(sock)

    def trickle() -> None:
        started = time.monotonic()
        while time.monotonic() - started < trickle_s:
            time.sleep(1.0)
            for sock in sockets:
                try:
                    sock.sendall(b"X" if headers_only else b" ")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    return sockets


def until_closed(sock) -> bytes:
    """Everything the server sent on a connection, once it has closed it."""
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)
