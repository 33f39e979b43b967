"""The app factory: ``create_app(settings)`` builds the FastAPI app; its lifespan loads the model.

Importing this module loads nothing: the model is loaded when the app starts, and handed to the routes
through the worker (see :mod:`.deps`). Every error is answered in the OpenAI shape
``{"error": {"message", "type", "param", "code"}}``.

Example:
    >>> app = create_app(ServeSettings(model="path/to/model"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..pipeline import ThinkGenPipeline, load_pipeline
from .metrics import ServeMetrics
from .middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from .routes import images, system
from .schemas import ServeError
from .settings import ServeSettings
from .worker import ImageWorker

logger = logging.getLogger(__name__)

PipelineLoader = Callable[[ServeSettings], ThinkGenPipeline]


def load_served_pipeline(settings: ServeSettings) -> ThinkGenPipeline:
    """Load ``settings.model`` on ``settings.device`` (default: cuda if available, else cpu) in ``settings.dtype``."""
    logger.info("loading %s (%s)", settings.model, settings.dtype)
    return load_pipeline(settings.model, settings.device, settings.dtype)


def _error_response(error: ServeError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _describe(error: dict[str, Any]) -> tuple[str, str | None]:
    """One pydantic error → (message, param), worded as the OpenAI API words them."""
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
    # The request bodies are flat: the first part names the field (the rest are union members or indices).
    param = loc[0] if loc else None
    kind = error.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    if kind == "extra_forbidden":
        return f"unknown parameter: {param!r}", param
    if kind == "missing":
        return f"missing required parameter: {param!r}", param
    if not loc:
        return f"the request body is invalid: {error['msg']}", None
    return f"invalid value for {param!r}: {error['msg']} (got {error.get('input')!r})", param


async def _on_serve_error(request: Request, error: ServeError) -> JSONResponse:
    return _error_response(error)


async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # One message per field: a union field fails once per member, which would only repeat itself.
    by_param: dict[str | None, str] = {}
    for message, param in map(_describe, error.errors()):
        by_param.setdefault(param, message)
    return _error_response(ServeError(400, "; ".join(by_param.values()), param=next(iter(by_param), None)))


async def _on_http_error(request: Request, error: HTTPException) -> JSONResponse:
    return _error_response(ServeError(error.status_code, str(error.detail), code=None))


async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error_response(ServeError(500, "internal server error", type="server_error"))


def create_app(settings: ServeSettings, pipeline_loader: PipelineLoader = load_served_pipeline) -> FastAPI:
    """Build the image server.

    Args:
        settings: the server's settings.
        pipeline_loader: turns the settings into a pipeline when the app starts (tests hand in a tiny one).

    Returns:
        The FastAPI app; run it with uvicorn.
    """
    metrics = ServeMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pipeline = await asyncio.to_thread(pipeline_loader, settings)
        worker = ImageWorker(pipeline, settings, metrics)
        worker.start()
        app.state.worker = worker
        logger.info("serving %s", settings.model)
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)  # it waits for the running call; the loop must not

    app = FastAPI(title="ThinkGen", summary="OpenAI-compatible image generation with visible reasoning",
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(images.router)
    app.include_router(system.router)
    app.add_exception_handler(ServeError, _on_serve_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
    # Added last = outermost: the metrics also count the requests the body limit refuses.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
