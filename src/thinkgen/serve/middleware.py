"""Pure ASGI middleware: the request-body limit and per-route request metrics.

Pure ASGI rather than ``BaseHTTPMiddleware`` so that a route can still see the client's disconnect through
``receive`` and streaming responses pass through untouched.
"""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServeMetrics
from .schemas import ServeError

# Routes reported by name in the metrics; anything else (scans, typos) is counted as "other", so a client
# cannot grow the metrics without bound.
METRIC_ROUTES = frozenset({"/", "/health", "/metrics", "/v1/images/generations", "/v1/images/edits"})


async def _send_error(send: Send, error: ServeError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Answer 413 to a body over ``max_body_bytes``, before the app reads any of it.

    A declared ``Content-Length`` is checked up front (the HTTP server holds the client to it); a chunked body
    is read here, up to the limit, and handed on from memory.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self, size: str) -> ServeError:
        return ServeError(413, f"the request body is {size} bytes; this server's limit is {self.max_body_bytes}",
                          code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_error(send, ServeError(400, "the Content-Length header is not a number"))
            elif int(declared) > self.max_body_bytes:
                await _send_error(send, self._too_large(declared.decode()))
            else:
                await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await _send_error(send, self._too_large(f"over {size}"))
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only the disconnect is left to hear
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class RequestMetricsMiddleware:
    """Count every HTTP request by route and status, and time it (to the last byte of a streamed answer)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = scope["path"] if scope["path"] in METRIC_ROUTES else "other"
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.observe_request(route, status, time.perf_counter() - start)
