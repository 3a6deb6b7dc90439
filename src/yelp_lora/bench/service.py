"""The HTTP service under load: `yelp-lora serve` in a subprocess (`ServeProcess`, which the
benchmarks and the tests start too), driven by concurrent clients."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def bench_service(adapter_dir: str, texts: list[str], *, settings: BenchSettings, log_file: Path, path: str) -> dict:
    """Throughput and latency of `yelp-lora serve` on prediction path `path` under 1, 8, 32 concurrent
    clients (one review per request)."""
    import httpx

    options = PATH_OPTIONS[path]
    backend = ["--backend", options["backend"], *(["--bf16"] if options["bf16"] else [])]
    with ServeProcess("--adapter", adapter_dir, *backend, log=log_file) as server:
        try:
            server.wait_ready()
        except RuntimeError as err:
            return {"available": False, "reason": f"{str(err).splitlines()[0]}; see {log_file}"}
        url = f"{server.url}/v1/classify"
        with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=max(settings.clients))) as client:
            client.post(url, json={"texts": texts[:1]})  # the first request pays for lazy initialisation

            def one(index: int) -> tuple[float, int]:
                started = time.perf_counter()
                status = client.post(url, json={"texts": [texts[index % len(texts)]]}).status_code
                return time.perf_counter() - started, status

            levels = []
            for clients in settings.clients:
                with ThreadPoolExecutor(clients) as pool:
                    started = time.perf_counter()
                    results = list(pool.map(one, range(settings.requests)))
                    seconds = time.perf_counter() - started
                latencies = np.array([latency for latency, _ in results]) * 1000
                levels.append(
                    {
                        "clients": clients,
                        "requests": settings.requests,
                        "errors": sum(status != 200 for _, status in results),
                        "samples_per_s": settings.requests / seconds,
                        "p50_ms": float(np.percentile(latencies, 50)),
                        "p99_ms": float(np.percentile(latencies, 99)),
                    }
                )
        return {"available": True, "path": path, "levels": levels, "server_peak_rss_mib": server.peak_rss_mib()}
