"""The HTTP service under load: `yelp-lora serve` in a subprocess (`ServeProcess`, which the
benchmarks and the tests start too), driven by concurrent clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from yelp_lora.bench.prediction import PATH_OPTIONS
from yelp_lora.config import BenchSettings


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`yelp-lora serve ARGS` in a subprocess on a free loopback port, its output in `log`; stopped with SIGTERM."""

    def __init__(self, *args: str, log: Path, env: dict | None = None, cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "yelp_lora", "serve", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
        )

    def wait_ready(self, timeout: float = 300) -> "ServeProcess":
        """Until /readyz answers 200; RuntimeError with the log's tail if the server exits or times out."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:]

    def peak_rss_mib(self) -> float | None:
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM")), None)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Load(NamedTuple):
    """What `drive` measured: each request's latency (s) and status, the wall time, the driver's CPU time."""

    latencies: list[float]
    statuses: list[int | str]  # the HTTP status, or the name of the transport error
    seconds: float
    client_cpu_seconds: float


def drive(url: str, bodies: list[bytes], clients: int, requests: int) -> Load:
    """POST `requests` JSON bodies (cycling through `bodies`) to `url` from `clients` concurrent
    keep-alive connections, each sending its next request when its last is answered.

    One asyncio loop with aiohttp: the load generator shares the cores with the server it measures,
    and this costs it ~0.3 ms of CPU per request against ~1.3 ms for httpx on 32 threads
    (docs/performance.md), so the service's figure is the service's.
    """
    import aiohttp

    async def run() -> Load:
        connector = aiohttp.TCPConnector(limit=clients)
        headers = {"content-type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            pending, latencies, statuses = iter(range(requests)), [], []

            async def client() -> None:
                for index in pending:  # one shared iterator: each client takes the next request
                    started = time.perf_counter()
                    try:
                        async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as response:
                            await response.read()
                        status = response.status
                    except (aiohttp.ClientError, asyncio.TimeoutError) as err:  # counted as an error, as a non-200 is
                        status = type(err).__name__
                    latencies.append(time.perf_counter() - started)
                    statuses.append(status)

            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            return Load(latencies, statuses, time.perf_counter() - started, time.process_time() - cpu)

    return asyncio.run(run())


def bench_service(adapter_dir: str, texts: list[str], *, settings: BenchSettings, log_file: Path, path: str) -> dict:
    """Throughput and latency of `yelp-lora serve` on prediction path `path` under 1, 8, 32 concurrent
    clients, one review per request: by default every review of `texts` once per level, the reviews
    the offline figure read."""
    options = PATH_OPTIONS[path]
    backend = ["--backend", options["backend"], *(["--bf16"] if options["bf16"] else [])]
    requests = settings.requests or len(texts)
    bodies = [json.dumps({"texts": [text]}).encode() for text in texts]
    with ServeProcess("--adapter", adapter_dir, *backend, log=log_file) as server:
        try:
            server.wait_ready()
        except RuntimeError as err:
            return {"available": False, "reason": f"{str(err).splitlines()[0]}; see {log_file}"}
        url = f"{server.url}/v1/classify"
        drive(url, bodies[:1], 1, 1)  # the first request pays for lazy initialisation
        levels = []
        for clients in settings.clients:
            load = drive(url, bodies, clients, requests)
            latencies = np.array(load.latencies) * 1000
            levels.append(
                {
                    "clients": clients,
                    "requests": requests,
                    "errors": sum(status != 200 for status in load.statuses),
                    "samples_per_s": requests / load.seconds,
                    "p50_ms": float(np.percentile(latencies, 50)),
                    "p99_ms": float(np.percentile(latencies, 99)),
                    "client_cpu_share": load.client_cpu_seconds / (load.seconds * len(os.sched_getaffinity(0))),
                }
            )
        return {"available": True, "path": path, "levels": levels, "server_peak_rss_mib": server.peak_rss_mib()}
