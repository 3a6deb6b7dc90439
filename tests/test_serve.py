"""`yelp-lora serve`: a real uvicorn server in a subprocess on a loopback port, called with a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time

import httpx
import pytest
from support import auto_backend, Server, review_texts

pytestmark = pytest.mark.slow
API_KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # A queue for the 200-request burst below (about 300 texts, more than the default 256 holds).
    running = Server("--alias", "production", "--registry", str(registry), "--api-key", API_KEY, "--max-queue", "512", log=log)
    yield running.wait_ready()
    assert running.stop() == -signal.SIGTERM and "Finished server process" in log.read_text()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=300) as http:
        yield http


@pytest.fixture(scope="module")
def expected(predicted):
    """{text: what `yelp-lora predict --json` answers} for the real reviews used here."""
    return dict(zip(review_texts(), predicted))


def assert_same_answer(result: dict, predicted: dict) -> None:
    for key in ("label", "label_id", "stars", "truncated"):
        assert result[key] == predicted[key], key
    assert result["confidence"] == pytest.approx(predicted["confidence"], abs=1e-4)
    assert result["probabilities"] == pytest.approx(predicted["probabilities"], abs=1e-4)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from Prometheus text output."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_classify_answers_equal_predict_cli(client, expected, registry):
    texts = list(expected)
    response = client.post("/v1/classify", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = json.loads((registry / "v1" / "manifest.json").read_text())
    assert body["model"] == {"version": "v1", "base_model": "minilm", "backend": auto_backend(),
                             "adapter_sha256": manifest["adapter_sha256"],
                             "temperature": manifest["temperature"], "long_text": "truncate"}
    assert len(body["results"]) == len(texts)
    for result, text in zip(body["results"], texts):
        assert_same_answer(result, expected[text])
    assert any(r["truncated"] for r in body["results"]), "the longest review is cut, and says so"
    assert sum(body["results"][0]["probabilities"].values()) == pytest.approx(1, abs=1e-5)

    one = client.post("/v1/classify", json={"text": texts[0]})
    assert one.status_code == 200 and len(one.json()["results"]) == 1
    assert_same_answer(one.json()["results"][0], expected[texts[0]])


def test_200_concurrent_requests_all_succeed_and_are_micro_batched(server, expected):
    texts = list(expected)[:6]  # the shorter reviews: this is about concurrency, not model time
    before = httpx.get(f"{server.url}/metrics").text

    async def fire():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=600, limits=limits) as http:
            # 1-2 texts per request, so batches mix requests of different sizes.
            payloads = [texts[i % 5 : i % 5 + 1 + i % 2] for i in range(200)]
            responses = await asyncio.gather(*(http.post("/v1/classify", json={"texts": p}) for p in payloads))
            return payloads, responses

    payloads, responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 200
    for payload, response in zip(payloads, responses):
        results = response.json()["results"]
        assert len(results) == len(payload)
        for text, result in zip(payload, results):
            assert_same_answer(result, expected[text])

    after = httpx.get(f"{server.url}/metrics").text
    batches = metric(after, "yelp_lora_batch_requests_count") - metric(before, "yelp_lora_batch_requests_count")
    alone = metric(after, "yelp_lora_batch_requests_bucket", '{le="1.0"}') - metric(before, "yelp_lora_batch_requests_bucket", '{le="1.0"}')
    assert batches < 200, "concurrent requests were gathered into shared batches"
    assert alone < batches, "at least one batch merged several requests"
    assert metric(after, "yelp_lora_http_requests_total", '{method="POST",path="/v1/classify",status="200"}') >= 200


LONG = "a" * 20_001
BAD_REQUESTS = [
    # (id, request keyword arguments, status, error code, words in the message)
    ("malformed-json", {"content": b'{"texts": ["fine",'}, 400, "malformed_json", "not valid JSON"),
    ("not-utf8", {"content": b'\xff\xfe{"texts": ["a"]}'}, 400, "malformed_json", "not valid JSON"),
    ("latin-1", {"content": b'{"text":"caf\xe9 \xff"}'}, 400, "malformed_json", "not UTF-8: byte 12 cannot be decoded"),
    ("nested-deep", {"content": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, 400, "malformed_json", "nested too deeply"),
    ("huge-number", {"content": b'{"text": ' + b"9" * 5_000 + b"}"}, 400, "malformed_json", "integer string conversion"),
    ("no-body", {"content": b""}, 422, "invalid_request", "no request body"),
    ("json-list-body", {"json": ["a review"]}, 422, "invalid_request", "must be a JSON object"),
    ("neither-field", {"json": {}}, 422, "invalid_request", "send either 'texts'"),
    ("both-fields", {"json": {"texts": ["a"], "text": "b"}}, 422, "invalid_request", "send either 'texts'"),
    ("unknown-field", {"json": {"review": "tasty"}}, 422, "invalid_request", "unknown field 'review'"),
    ("texts-not-list", {"json": {"texts": "tasty"}}, 422, "invalid_request", "texts: Input should be a valid list"),
    ("no-texts", {"json": {"texts": []}}, 422, "no_texts", "no texts given"),
    ("empty-text", {"json": {"texts": ["fine", ""]}}, 422, "invalid_text", "texts[1]: empty text"),
    ("blank-text", {"json": {"texts": ["fine", " \n "]}}, 422, "invalid_text", "texts[1]: whitespace-only text"),
    ("nul-text", {"json": {"text": "a\x00b"}}, 422, "invalid_text", "text: text contains NUL bytes"),
    ("lone-surrogate", {"content": b'{"texts": ["fine", "a\\ud800b"]}'}, 422, "invalid_text", "texts[1]: character 1 is an unpaired surrogate"),
    ("number-text", {"json": {"texts": ["fine", 3]}}, 422, "invalid_request", "texts[1]: Input should be a valid string"),
    ("null-text", {"json": {"texts": [None]}}, 422, "invalid_request", "texts[0]: Input should be a valid string"),
    ("number-single", {"json": {"text": 5}}, 422, "invalid_request", "text: Input should be a valid string"),
    ("too-many-texts", {"json": {"texts": ["fine"] * 65}}, 413, "too_many_texts", "65 texts in one request, over the limit of 64"),
    ("too-long-text", {"json": {"texts": ["fine", LONG]}}, 413, "text_too_long", "texts[1] is 20,001 characters long"),
    ("huge-body", {"content": b'{"texts": ["' + b"a" * 8_000_000 + b'"]}'}, 413, "body_too_large", "request body over the limit"),
    ("form-body", {"data": {"text": "tasty"}}, 415, "unsupported_media_type", "Content-Type: application/json"),
]


@pytest.mark.parametrize("request_kwargs, status, code, words", [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx(client, request_kwargs, status, code, words):
    headers = {} if "json" in request_kwargs or "data" in request_kwargs else {"Content-Type": "application/json"}
    response = client.post("/v1/classify", headers=headers, **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"], error
    # ... and the service keeps answering.
    assert client.post("/v1/classify", json={"text": "Lovely staff."}).status_code == 200


def test_texts_at_their_limits_fit_in_the_body_even_with_every_character_escaped(client):
    import json

    body = json.dumps({"texts": ["日" * 20_000] * 64}).encode()  # \u65e5: 6 bytes a character, as requests sends it
    assert len(body) > 64 * 20_000 * 4  # past the old limit, which counted 4 bytes a character
    response = client.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 64


def test_wrong_routes_and_methods_are_4xx(client):
    assert client.get("/v1/classify").status_code == 405
    assert client.get("/v1/unknown").json()["error"]["code"] == "not_found"
    metrics = client.get("/metrics").text
    assert metric(metrics, "yelp_lora_errors_total", '{code="method_not_allowed"}') >= 1
    assert metric(metrics, "yelp_lora_http_requests_total", '{method="GET",path="other",status="404"}') >= 1


def test_api_key_is_required_on_v1(server):
    url = f"{server.url}/v1/classify"
    missing = httpx.post(url, json={"text": "Great!"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in missing.json()["error"]["message"]
    assert httpx.post(url, json={"text": "Great!"}, headers={"X-API-Key": "nope"}).json()["error"]["message"] == "wrong API key"
    # The key is checked before the body is read: no key, no parsing.
    assert httpx.post(url, content=b"{broken", headers={"Content-Type": "application/json"}).status_code == 401
    assert httpx.get(f"{server.url}/v1/model").status_code == 401
    assert httpx.post(url, json={"text": "Great!"}, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
        assert httpx.get(f"{server.url}{open_path}").status_code == 200, open_path
    for probe in ("/healthz", "/readyz"):  # as uptime monitors send it: headers, no body
        head = httpx.head(f"{server.url}{probe}")
        assert head.status_code == 200 and head.content == b"", probe


def test_health_model_metrics_openapi_and_page(client, registry):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"]["version"] == "v1"

    model = client.get("/v1/model").json()
    manifest = json.loads((registry / "v1" / "manifest.json").read_text())
    assert model["manifest"] == manifest and model["model"]["adapter_sha256"] == manifest["adapter_sha256"]
    assert model["manifest"]["metrics"]["validation_best"]["macro_f1"] >= 0
    assert model["limits"]["max_texts_per_request"] == 64 and model["limits"]["max_tokens_per_text"] == 256
    assert model["limits"]["max_windows_per_text"] == 1  # long reviews cut: one forward pass each

    spec = client.get("/openapi.json").json()
    # No /docs or /redoc: their pages load scripts from a CDN an offline deployment cannot reach.
    assert [client.get(path).status_code for path in ("/docs", "/redoc")] == [404, 404]
    classify = spec["paths"]["/v1/classify"]["post"]
    assert classify["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ClassifyRequest")
    assert {"200", "400", "401", "413", "415", "422"} <= set(classify["responses"])
    assert set(spec["components"]["schemas"]["SentimentResult"]["properties"]) == {
        "label", "label_id", "stars", "confidence", "probabilities", "truncated", "windows"
    }

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("yelp_lora_http_requests_total", "yelp_lora_http_request_seconds_bucket", "yelp_lora_batch_texts_bucket",
                 "yelp_lora_batch_seconds_count", "yelp_lora_errors_total", "yelp_lora_texts_classified_total"):
        assert name in metrics.text

    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and "Review sentiment" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_sigterm_lets_in_flight_requests_finish(minilm_run, tmp_path):
    server = Server("--adapter", str(minilm_run), log=tmp_path / "serve.log").wait_ready()
    texts = [review_texts()[-1]] * 24  # the longest review, cut at 256 tokens: seconds of model work
    answer: dict = {}

    def call():
        answer["response"] = httpx.post(f"{server.url}/v1/classify", json={"texts": texts}, timeout=300)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        deadline = time.monotonic() + 120
        while metric(httpx.get(f"{server.url}/metrics").text, "yelp_lora_batch_texts_count") < 1:  # the model is at work
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.05)
    finally:
        # uvicorn shuts down cleanly, then exits by re-raising the signal it caught.
        assert server.stop() == -signal.SIGTERM, (tmp_path / "serve.log").read_text()[-3000:]
    caller.join(60)
    response = answer["response"]
    assert response.status_code == 200 and len(response.json()["results"]) == 24
    assert response.json()["model"]["version"] is None  # a bare adapter directory, not a registry version
    log = (tmp_path / "serve.log").read_text()
    assert "Finished server process" in log and "Traceback" not in log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")

