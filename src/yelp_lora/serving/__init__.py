"""Serving: the HTTP service (app, batcher, schemas) and the MCP agent tool."""
