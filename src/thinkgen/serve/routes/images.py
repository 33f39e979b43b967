"""``POST /v1/images/generations`` and ``POST /v1/images/edits``: the OpenAI Images API, plus streaming.

With ``stream: true`` the answer is server-sent events: ``<prefix>.reasoning.delta`` and
``<prefix>.instruction.delta`` (``{"delta": text}``) as the MLLM writes, ``<prefix>.progress`` after each
denoising step, one ``<prefix>.completed`` per image (the fields of :class:`~..schemas.ImageData`, plus
``index``, ``size``, ``created_at``), then ``data: [DONE]``. The prefix is ``image_generation`` or
``image_edit``, as in OpenAI's image streams; a failure is one ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ..deps import EditFormDep, SettingsDep, WorkerDep, require_api_key
from ..schemas import ImageData, ImageGenerationRequest, ImagesResponse, ServeError
from ..worker import ImageWorker, Job, JobResult, build_spec

router = APIRouter(prefix="/v1/images", tags=["images"], dependencies=[Depends(require_api_key)])

# How often a waiting request checks that its client is still there.
DISCONNECT_POLL_S = 0.1
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text} for code, text in (
        (400, "invalid request"), (401, "missing or wrong API key"), (413, "body too large"),
        (429, "queue full; see Retry-After"), (503, "model not running"), (504, "timed out"),
    )
}


def _images_response(result: JobResult) -> ImagesResponse:
    return ImagesResponse(
        created=int(time.time()),
        data=[ImageData(b64_json=b64, revised_prompt=result.instruction, reasoning=result.reasoning,
                        thought=result.thought, seed=result.seed) for b64 in result.images_b64],
        size=f"{result.width}x{result.height}",
        timings_s=result.timings_s,
        batch_size=result.batch_size,
    )


def _timeout_error(worker: ImageWorker) -> ServeError:
    return ServeError(504, f"the request did not finish within {worker.settings.request_timeout_s:g} s",
                      type="server_error", code="timeout")


async def _wait(request: Request, worker: ImageWorker, job: Job) -> JobResult:
    """The job's result; cancels the job when the client leaves or time runs out."""
    try:
        while True:
            done, _ = await asyncio.wait({job.future}, timeout=DISCONNECT_POLL_S)
            if done:
                return job.future.result()
            if time.monotonic() > job.deadline:
                worker.cancel(job, "timeout")
                raise _timeout_error(worker)
            if await request.is_disconnected():
                worker.cancel(job)
                # Nobody reads this answer; 499 ("client closed request") is what the metrics record.
                raise ServeError(499, "the client closed the request", code="client_closed")
    except asyncio.CancelledError:
        worker.cancel(job)
        raise


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream(worker: ImageWorker, job: Job, prefix: str) -> AsyncIterator[str]:
    """The job's events as server-sent events; leaving early (client gone) cancels the job."""
    assert job.events is not None
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=max(job.deadline - time.monotonic(), 0.0))
            except TimeoutError:
                worker.cancel(job, "timeout")
                yield _sse("error", {"type": "error", **_timeout_error(worker).body()})
                return
            if event is None:
                break
            name = f"{prefix}.{event['type']}"
            yield _sse(name, {**event, "type": name})
        error = job.future.exception()
        if isinstance(error, ServeError):
            yield _sse("error", {"type": "error", **error.body()})
            return
        result = job.future.result()
        for index, image in enumerate(_images_response(result).data):
            name = f"{prefix}.completed"
            yield _sse(name, {"type": name, "index": index, "created_at": int(time.time()),
                              "size": f"{result.width}x{result.height}", "output_format": "png",
                              "background": "opaque", "quality": "auto", "timings_s": result.timings_s,
                              "batch_size": result.batch_size, **image.model_dump()})
        yield "data: [DONE]\n\n"
    finally:
        worker.cancel(job)  # a no-op once the job is done


async def _answer(
    request: Request, worker: ImageWorker, body: ImageGenerationRequest, job: Job, prefix: str
) -> ImagesResponse | StreamingResponse:
    if body.stream:
        return StreamingResponse(_stream(worker, job, prefix), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _images_response(await _wait(request, worker, job))


@router.post("/generations", response_model=ImagesResponse, responses=ERROR_RESPONSES)
async def create_image(
    body: ImageGenerationRequest, request: Request, worker: WorkerDep, settings: SettingsDep
) -> ImagesResponse | StreamingResponse:
    """Text to image; with ``think`` the MLLM reasons first and ``revised_prompt`` is its instruction."""
    spec = build_spec(body, [], settings, worker.pipeline.config)
    return await _answer(request, worker, body, worker.submit(spec, stream=body.stream), "image_generation")


@router.post("/edits", response_model=ImagesResponse, responses=ERROR_RESPONSES)
async def edit_image(
    form: EditFormDep, request: Request, worker: WorkerDep, settings: SettingsDep
) -> ImagesResponse | StreamingResponse:
    """Edit one image (or compose up to five) by the prompt, sent as multipart form data."""
    body, images = form
    spec = build_spec(body, images, settings, worker.pipeline.config)
    return await _answer(request, worker, body, worker.submit(spec, stream=body.stream), "image_edit")
