"""Agent tools: an MCP server (official `mcp` SDK) and the same tool as an OpenAI function schema.

`yelp-lora mcp` exposes one tool, classify_review_sentiment, whose input and output schemas
come from the SDK's own reading of the function below; `yelp-lora tool-schema` prints that same
input schema and description in OpenAI's function-tool format, so both agents see one tool.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from yelp_lora import __version__
from yelp_lora.config import MAX_REQUEST_TEXT_CHARS, MAX_TEXTS_PER_REQUEST, ServeSettings
from yelp_lora.inference.predictor import Predictor
from yelp_lora.serving.app import announce, error_json, key_problem
from yelp_lora.serving.schemas import Classification, InputError, check_texts, classification

TOOL_NAME = "classify_review_sentiment"
TOOL_DESCRIPTION = (
    "Rate the sentiment strength of customer reviews (restaurants, shops, services; English) on Yelp's "
    "1-5 star scale with a fine-tuned BERT classifier. Use it when you need to know how positive or negative "
    "reviews are, to score, sort, triage or summarise feedback, or to check a rating against its text. "
    f"Pass up to {MAX_TEXTS_PER_REQUEST} review texts in one call (batch them rather than calling once per review); "
    f"each text must be non-empty and at most {MAX_REQUEST_TEXT_CHARS:,} characters. Returns, per text and in input "
    "order: stars (1-5), label (strong_negative, negative, neutral, positive, strong_positive), confidence (probability "
    "of that label) and the probabilities of all five labels; plus the model version that answered. A confidence "
    "below about 0.5 means the review is ambiguous between neighbouring ratings; truncated=true means part of a very "
    "long review was not read; windows above 1 means a long review was read in overlapping parts whose probabilities "
    "were averaged. It does not detect sarcasm reliably and is not meant for other languages."
)
TextsArgument = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=MAX_TEXTS_PER_REQUEST,
        description=f"The review texts to classify, 1 to {MAX_TEXTS_PER_REQUEST}, each non-empty",
    ),
]
INSTRUCTIONS = (
    "This server rates the sentiment of customer reviews on a 1-5 star scale. Call "
    f"{TOOL_NAME} with all the reviews you need rated in one list."
)


def build_server(predictor: Predictor | None) -> MCPServer:
    """The MCP server; with predictor=None it only describes the tool (for tool-schema)."""
    server = MCPServer("yelp-lora", instructions=INSTRUCTIONS, version=__version__)
    model_lock = threading.Lock()  # the SDK runs sync tools in worker threads; the model takes one call at a time

    def classify_review_sentiment(texts: TextsArgument) -> Classification:
        try:
            check_texts(texts)
        except InputError as err:
            raise ToolError(str(err)) from None
        if predictor is None:
            raise ToolError("no model loaded: start the server with --adapter, --version or --alias")
        with model_lock:
            predictions = predictor.predict(texts)
        return classification(predictor.info, predictions)

    server.add_tool(
        classify_review_sentiment,
        name=TOOL_NAME,
        title="Classify review sentiment (1-5 stars)",
        description=TOOL_DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, destructive_hint=False, open_world_hint=False),
        structured_output=True,
    )
    return server


def openai_tool_schema() -> dict:
    """The MCP tool, as listed by the SDK, in OpenAI's function-calling format."""
    tool = next(t for t in asyncio.run(build_server(None).list_tools()) if t.name == TOOL_NAME)
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.input_schema},
    }


class KeyRequired:
    """ASGI middleware: every request must carry the API key, as the HTTP service's /v1/* requests do."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        problem = key_problem(scope, self.key) if scope["type"] == "http" else None
        if problem is not None:
            return await error_json(problem)(scope, receive, send)
        return await self.app(scope, receive, send)


def run_http(server: MCPServer, sock: socket.socket, settings: ServeSettings) -> None:
    """The MCP server on the streamable HTTP transport (endpoint /mcp) on `sock` (serving.app.listen),
    behind the API key when one is set."""
    import uvicorn

    announce("mcp", settings, sock, "/mcp")
    app = server.streamable_http_app(host=settings.host)
    key = settings.api_key
    # host and port only name the address in uvicorn's log: the socket is already bound.
    config = uvicorn.Config(KeyRequired(app, key) if key else app, host=settings.host, port=sock.getsockname()[1], log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
