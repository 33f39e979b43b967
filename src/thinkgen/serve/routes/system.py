"""``GET /health``, ``GET /metrics`` and the web page at ``/``."""

from __future__ import annotations

from importlib import resources
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from ..deps import MetricsDep, SettingsDep, require_api_key
from ..schemas import HealthResponse

router = APIRouter(tags=["system"])


@router.get("/health", response_model=HealthResponse)
async def health(request: Request, settings: SettingsDep) -> JSONResponse:
    """``ok`` (200) once the model is loaded and its worker runs; ``loading`` or ``stopped`` (503) otherwise.

    Needs no API key, so load balancers and supervisors can probe it.
    """
    worker = getattr(request.app.state, "worker", None)
    status = "loading" if worker is None else ("ok" if worker.is_running else "stopped")
    body = HealthResponse(status=status, model=settings.model)
    return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)


@router.get("/metrics", dependencies=[Depends(require_api_key)])
async def metrics(
    request: Request, metrics: MetricsDep, format: Literal["prometheus", "json"] = "prometheus"
) -> Response:
    """Requests, queue depth, batch sizes, latencies and request outcomes: Prometheus text, or JSON."""
    worker = getattr(request.app.state, "worker", None)
    depth = 0 if worker is None else worker.queue_depth
    if format == "json":
        return JSONResponse(metrics.as_dict(depth))
    return PlainTextResponse(metrics.render_prometheus(depth), media_type="text/plain; version=0.0.4")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The web page: static HTML and JavaScript, no API key needed to load it (its API calls carry the key)."""
    return HTMLResponse(resources.files("thinkgen.serve").joinpath("static/index.html").read_text("utf-8"))
