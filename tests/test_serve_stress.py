"""Issue 6.6: `yelp-lora serve` under stress: a bounded load with zero errors and flat memory, and a
schemathesis fuzz run of its OpenAPI schema that finds no 5xx.

A real server subprocess on loopback, serving a tiny random BERT whose LoRA adapter was trained for one
step through the real train path: the HTTP stack, validation and micro-batching are what is exercised,
at a speed 2 shared cores can afford. Throughput figures live in benchmarks/serve_stress.py, not here.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from support import Server, review_texts

from yelp_lora.bench.load import request_bodies, run_load  # the stress benchmark's own load generator

pytestmark = pytest.mark.slow
API_KEY = "stress-key-51c0"
LOAD_REQUESTS, LOAD_CLIENTS = 1_000, 32
RSS_GROWTH_LIMIT_MIB = 50  # generous (warm-up moves RSS 10-20 MiB here); a leak of ~60 KiB per request crosses it


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    running = Server("--adapter", str(tiny_run), "--api-key", API_KEY, log=root / "serve.log")
    yield running.wait_ready()
    assert running.stop() == -signal.SIGTERM, "the server still shuts down cleanly after the load and the fuzzing"


def test_bounded_load_has_no_errors_and_flat_memory(server):
    bodies = request_bodies(review_texts(40), LOAD_REQUESTS, max_texts=8, seed=1)
    result = asyncio.run(run_load(server.url, bodies, concurrency=LOAD_CLIENTS, server_pid=server.process.pid,
                                  time_limit=600, headers={"Authorization": f"Bearer {API_KEY}"}))
    assert result["errors"] == {}, result
    assert result["requests_ok"] == LOAD_REQUESTS and not result["stopped_by_time_limit"], result
    assert result["texts_classified"] == sum(len(b.get("texts", [None])) for b in bodies)
    assert result["rss_mib"]["growth_10pct_to_end"] < RSS_GROWTH_LIMIT_MIB, result["rss_mib"]


@pytest.mark.parametrize("key_header", [["-H", f"X-API-Key: {API_KEY}"], []], ids=["api-key", "no-key"])
def test_schemathesis_fuzzing_finds_no_5xx(server, key_header, tmp_path):
    """Every operation in /openapi.json, through schemathesis' examples, coverage (boundary and invalid values)
    and fuzzing phases. Its command line rather than its pytest plugin: the plugin's lazy fixture loader
    (schemathesis 4.32) sets Function._nodeid, which pytest 9.2 no longer has."""
    fuzz = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server.url}/openapi.json", *key_header,
         "--checks", "not_a_server_error", "--max-examples", "300", "--seed", "1", "--workers", "1",
         "--request-timeout", "60", "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # it keeps a .schemathesis/ cache in its cwd
    )
    assert fuzz.returncode == 0, fuzz.stdout[-6000:]
    cases = int(re.search(r"(\d+) generated", fuzz.stdout).group(1))
    assert cases >= 90, fuzz.stdout[-3000:]
    report = ElementTree.parse(next(tmp_path.glob("junit-*.xml"))).getroot()
    operations = {case.get("name") for case in report.iter("testcase")}
    assert {"POST /v1/classify", "GET /v1/model", "GET /readyz"} <= operations
    assert report.get("failures") == report.get("errors") == "0"
    answered = httpx.get(f"{server.url}/metrics").text
    assert not re.search(r'yelp_lora_http_requests_total\{[^}]*status="5\d\d"', answered), "the server logged a 5xx"
