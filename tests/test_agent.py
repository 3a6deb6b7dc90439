"""Agent tools: the MCP server driven over stdio by the official SDK's own client, and the OpenAI schema."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
from mcp import Client
from support import auto_backend, REPO, cli, cli_env, mcp_session, review_texts

from yelp_lora.bench.service import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mcp_answers(registry):
    """One stdio session: the tool listing, a real call, and two bad calls."""

    async def session(client):
        tools = (await client.list_tools()).tools
        ok = await client.call_tool("classify_review_sentiment", {"texts": review_texts()})
        empty_list = await client.call_tool("classify_review_sentiment", {"texts": []})
        empty_text = await client.call_tool("classify_review_sentiment", {"texts": ["Great tacos.", "  "]})
        return tools, ok, empty_list, empty_text

    return mcp_session(registry, session)


def test_mcp_stdio_tool_matches_predict(registry, predicted, mcp_answers):
    tools, ok, empty_list, empty_text = mcp_answers

    [tool] = tools
    assert tool.name == "classify_review_sentiment"
    assert "1-5 star" in tool.description and "up to 64 review texts" in tool.description
    assert tool.input_schema["properties"]["texts"]["type"] == "array" and tool.input_schema["required"] == ["texts"]
    assert tool.output_schema is not None and {"model", "results"} <= set(tool.output_schema["properties"])
    assert tool.annotations.read_only_hint is True

    assert not ok.is_error
    structured = ok.structured_content
    manifest = json.loads((registry / "v1" / "manifest.json").read_text())
    assert structured["model"] == {"version": "v1", "base_model": "minilm", "backend": auto_backend(),
                                   "adapter_sha256": manifest["adapter_sha256"],
                                   "temperature": manifest["temperature"], "long_text": "truncate"}
    assert json.loads(ok.content[0].text) == structured  # the same answer for clients that read text only
    for result, answer in zip(structured["results"], predicted, strict=True):
        assert result["stars"] == answer["stars"] and result["label"] == answer["label"]
        assert result["truncated"] == answer["truncated"]
        assert result["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-4)

    assert empty_list.is_error  # rejected by the input schema (minItems 1)
    assert empty_text.is_error and "texts[1]: whitespace-only text" in empty_text.content[0].text


def test_tool_schema_is_the_mcp_tool_in_openai_form(mcp_answers):
    printed = json.loads(cli("tool-schema").stdout)
    tool = mcp_answers[0][0]
    assert printed == {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.input_schema},
    }
    assert printed["function"]["parameters"]["properties"]["texts"]["maxItems"] == 64


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`yelp-lora tool-schema | head -c 10`: the reader is gone before the schema is written."""
    process = subprocess.Popen([sys.executable, "-m", "yelp_lora", "tool-schema"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=cli_env(), cwd=REPO)
    process.stdout.close()  # before the interpreter has even started: every write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(60) == 141 and stderr == "", stderr


def test_mcp_over_streamable_http_behind_the_api_key(registry, predicted, tmp_path):
    import httpx
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    port, key = free_port(), "mcp-key-9d1e"
    (tmp_path / "key").write_text(key + "\n")
    log = open(tmp_path / "mcp.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "yelp_lora", "mcp", "--alias", "production", "--registry", str(registry),
         "--transport", "http", "--port", str(port), "--api-key-file", str(tmp_path / "key")],
        stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # until the port accepts connections
            assert process.poll() is None, (tmp_path / "mcp.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "MCP HTTP server did not start"
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)

        refused = httpx.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"

        async def call():
            keyed = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=300))
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=keyed),
                              read_timeout_seconds=300) as client:
                return await client.call_tool("classify_review_sentiment", {"texts": review_texts()[:2]})

        result = asyncio.run(call())
    finally:
        process.terminate()
        process.wait(60)
        log.close()
    assert not result.is_error and result.structured_content["model"]["version"] == "v1"
    logged = (tmp_path / "mcp.log").read_text()
    assert f"yelp-lora mcp: listening on http://127.0.0.1:{port}/mcp\n" in logged and "warning" not in logged
    for got, answer in zip(result.structured_content["results"], predicted):
        assert got["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-4)
