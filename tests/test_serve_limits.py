"""The service under hostile load: a real `yelp-lora serve` on loopback (the session's tiny-BERT adapter,
so the HTTP stack and the bounds are what is exercised), real clients, every loop bounded in count and time.

- a flood against a small --max-queue: every answer is 200, 503 (with Retry-After) or 504, none late,
  memory stays bounded, and a normal request is served within a second afterwards;
- clients that trickle their body or headers are cut within the read time-out while others are served;
- clients that abandon their requests leave a service that still answers;
- random paths and methods add no metric series;
- in process: a cancelled job is skipped, and a stopped worker makes /healthz and /v1/classify answer 503.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import httpx
import pytest
from support import Server, review_texts

from yelp_lora.bench.load import rss_mib

pytestmark = pytest.mark.slow
QUEUE, REQUEST_TIMEOUT, READ_TIMEOUT = 16, 2.0, 3.0


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("limits") / "serve.log"
    running = Server(
        "--adapter", str(tiny_run), "--max-texts", "8", "--max-batch", "8", "--max-queue", str(QUEUE),
        "--request-timeout", str(REQUEST_TIMEOUT), "--read-timeout", str(READ_TIMEOUT),
        log=log,
    )
    yield running.wait_ready()
    running.stop()
    assert "Traceback" not in log.read_text()


def served_quickly(url: str) -> float:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/classify", json={"text": "The soup was warm and the waiter kind."}, timeout=30)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_a_flood_gets_fast_refusals_not_a_backlog(server):
    texts = review_texts(40)
    rss_before = rss_mib(server.process.pid)

    async def flood() -> list[tuple[int, float, dict]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            async def one(index: int):
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/classify", json={"texts": [texts[(index + k) % 40] for k in range(8)]})
                except httpx.TransportError as err:
                    return type(err).__name__, time.perf_counter() - started, {}
                return response.status_code, time.perf_counter() - started, dict(response.headers)

            return await asyncio.gather(*(one(i) for i in range(600)))

    answers = asyncio.run(flood())
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503, 504}, sorted(map(str, set(statuses)))
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, (statuses.count(200), statuses.count(503))
    assert all(headers.get("retry-after") == "1" for status, _, headers in answers if status == 503)
    # A request waits at most the request time-out to start, then one batch of 8 short texts runs.
    assert max(seconds for _, seconds, _ in answers) < REQUEST_TIMEOUT + 10
    assert rss_mib(server.process.pid) - rss_before < 100
    assert served_quickly(server.url) < 1.0


def test_slow_bodies_and_headers_are_cut_while_others_are_served(server):
    host, port = "127.0.0.1", server.port
    slow_bodies, slow_headers = [], []
    for _ in range(20):
        body = socket.create_connection((host, port), timeout=30)
        body.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        slow_bodies.append(body)
        headers = socket.create_connection((host, port), timeout=30)
        headers.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_headers.append(headers)
    started = time.monotonic()
    stop = threading.Event()

    def trickle():  # a byte a second on every connection, as a slowloris client sends, until just before the cut
        while not stop.wait(1.0) and time.monotonic() - started < READ_TIMEOUT - 1:
            for sock in slow_bodies + slow_headers:
                try:
                    sock.sendall(b" " if sock in slow_bodies else b"X")
                except OSError:
                    pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        assert served_quickly(server.url) < 1.0  # a normal client meanwhile
        for sock in slow_bodies:
            reply = read_until_closed(sock)
            assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply, reply[:300]
        for sock in slow_headers:
            assert sock.recv(4096) == b"", "the connection is closed"
        assert time.monotonic() - started < READ_TIMEOUT + 5
    finally:
        stop.set()
        sender.join()
        for sock in slow_bodies + slow_headers:
            sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_abandoned_requests_leave_a_working_service(server):
    body = b'{"texts": ["The food was cold and the waiter rude."]}'
    request = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)  # and gone, without reading the answer
    time.sleep(REQUEST_TIMEOUT)  # what was queued has run or expired
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert served_quickly(server.url) < 1.0


def series(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics").text
    return set(re.findall(r"^yelp_lora_http_request\w*\{[^}]*\}", text, re.MULTILINE))


def test_random_paths_and_methods_add_no_series(server):
    import random

    pick = random.Random(7)
    with httpx.Client(base_url=server.url) as http:
        for round_ in range(201):  # the first round makes the series every later one falls into
            if round_ == 1:
                series(server.url)
                before = series(server.url)
            word = "".join(pick.choices("abcdefghij", k=12))
            http.get(f"/{word}")
            http.get(f"/static/{word}.js")
            http.request(pick.choice(["FOO", "BAR", "PROPFIND"]), f"/{word}")
    assert series(server.url) == before


def test_hosts_not_served_here_are_refused(server):
    answer = httpx.get(f"{server.url}/healthz", headers={"Host": "attacker.example:8000"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{server.url}/healthz", headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_a_cancelled_job_is_skipped_and_a_stopped_worker_is_reported(tiny_run):
    from fastapi.testclient import TestClient

    from yelp_lora.config import ServeSettings
    from yelp_lora.inference.predictor import Predictor
    from yelp_lora.serving.app import create_app

    app = create_app(Predictor(tiny_run), ServeSettings(host="testserver"))
    with TestClient(app, base_url="http://testserver") as client:
        batcher = app.state.batcher
        futures = [batcher.submit(["Great tacos."]) for _ in range(20)]
        cancelled = sum(future.cancel() for future in futures)
        assert client.post("/v1/classify", json={"text": "Fine."}).status_code == 200
        assert all(future.cancelled() or future.result() for future in futures)
        metrics = client.get("/metrics").text
        assert cancelled == 0 or 'yelp_lora_jobs_dropped_total{reason="abandoned"}' in metrics
        assert "yelp_lora_worker_errors_total 0.0" in metrics
        batcher.stop()
        assert client.get("/healthz").status_code == 503
        refused = client.post("/v1/classify", json={"text": "Fine."})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
