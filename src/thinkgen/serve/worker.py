"""The model's worker thread: a bounded queue of image requests, batched when that changes no result.

One thread owns the pipeline, so torch never runs on the event loop and never runs two calls at once. Routes
``submit`` a :class:`JobSpec` and await the :class:`Job`'s future (or read its event queue when streaming);
the worker settles both from its thread through the event loop's thread-safe callbacks.

Batching: no-think text-to-image requests with the same size, steps, guidance and ``n`` share one pipeline
call. Each keeps its own seed: its noise is drawn exactly as a single call with that seed draws it and passed
in as ``latents``, so a batched request gets the image it would get alone. Thinking requests never batch (the
rows of a thinking batch share one sampling stream, so a thought would depend on its companions), nor do
edits (their size comes from their input image).

Cancellation: a request whose client left is dropped from the queue; a running call is abandoned at the next
thinking token or denoising step once every request in it is cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import io
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from ..glyphs import has_glyph_reference
from ..models.mllm import ThinkingConfig
from ..models.refine import ThoughtNotClosedError
from ..pipeline import PipelineConfig, ThinkGenPipeline, Think
from .metrics import ServeMetrics
from .schemas import ImageGenerationRequest, ServeError
from .settings import ServeSettings

logger = logging.getLogger(__name__)

# How long `stop` waits for a running call to finish before leaving the daemon thread behind.
STOP_JOIN_TIMEOUT_S = 30.0


class JobCancelled(Exception):
    """Raised inside a pipeline call (by the streamer or the step callback) to abandon it."""


@dataclass
class JobSpec:
    """One request, resolved against the server's limits and the model's defaults.

    Attributes:
        prompt: the prompt (for edits, the instruction).
        images: input images (edits), already decoded and bounded.
        num_images: images to draw (``n``).
        width, height: output size; None for an edit that keeps its input's size.
        num_inference_steps, guidance_scale, image_guidance_scale: sampler settings.
        think: ``True``, ``False`` or ``"auto"``.
        seed: seeds noise, thinking and a glyph reference's layout.
        max_thinking_tokens: thinking budget.
        glyphs: the request's glyph switch, where the model has a glyph preset (else False).
        glyph_reference: whether a text-to-image call of ``prompt`` gets a glyph reference (quoted text, or
            objects on a model trained with object marks).
    """

    prompt: str
    images: list[Image.Image]
    num_images: int
    width: int | None
    height: int | None
    num_inference_steps: int
    guidance_scale: float
    image_guidance_scale: float
    think: Think
    seed: int
    max_thinking_tokens: int
    glyphs: bool = False
    glyph_reference: bool = False

    def batch_key(self) -> tuple[Any, ...] | None:
        """Requests with equal keys may share a pipeline call; None: this one runs alone. A prompt that gets
        a glyph reference runs alone too: a batched call would lay out its words by its place in the batch,
        not by its seed."""
        if self.think is not False or self.images or self.glyph_reference:
            return None
        return (self.width, self.height, self.num_inference_steps, self.guidance_scale, self.image_guidance_scale,
                self.num_images)


def _over_limit(param: str, value: int, limit: int) -> ServeError:
    return ServeError(400, f"{param}={value} is over this server's limit of {limit}", param=param)


def build_spec(
    request: ImageGenerationRequest, images: list[Image.Image], settings: ServeSettings, config: PipelineConfig
) -> JobSpec:
    """Check a request against the server's limits and fill in the model's defaults.

    Raises:
        ServeError: 400 naming the field at fault.
    """
    if request.response_format == "url":
        raise ServeError(400, "response_format='url' is not supported: this server stores no images; use "
                         "'b64_json'", param="response_format", code="unsupported_value")
    if len(request.prompt) > config.max_prompt_chars:
        raise ServeError(400, f"prompt is {len(request.prompt)} characters long; the model's limit is "
                         f"{config.max_prompt_chars}", param="prompt")
    if request.n > settings.max_images_per_request:
        raise _over_limit("n", request.n, settings.max_images_per_request)
    size = request.parsed_size()
    if size is None and len(images) != 1:
        size = (config.width, config.height)  # the pipeline's default unless one input image sets the size
    # An edit without a size keeps its input's size (scaled down to the model's limit, never up).
    width, height = size if size is not None else images[0].size
    if width * height > settings.max_output_pixels:
        hint = "" if size is not None else " (an edit keeps its input's size unless 'size' is given)"
        raise ServeError(400, f"size {width}x{height} is {width * height} pixels; this server's limit is "
                         f"{settings.max_output_pixels}{hint}", param="size")
    steps = config.num_inference_steps if request.num_inference_steps is None else request.num_inference_steps
    if steps > settings.max_inference_steps:
        raise _over_limit("num_inference_steps", steps, settings.max_inference_steps)
    budget = settings.max_thinking_tokens if request.max_thinking_tokens is None else request.max_thinking_tokens
    if budget > settings.max_thinking_tokens:
        raise _over_limit("max_thinking_tokens", budget, settings.max_thinking_tokens)
    glyphs = request.glyphs and bool(config.glyph_preset)
    return JobSpec(
        prompt=request.prompt,
        images=images,
        num_images=request.n,
        width=None if size is None else size[0],
        height=None if size is None else size[1],
        num_inference_steps=steps,
        guidance_scale=config.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        image_guidance_scale=(
            config.image_guidance_scale if request.image_guidance_scale is None else request.image_guidance_scale
        ),
        think=request.think,
        # A drawn seed is returned with the images, so every answer can be reproduced.
        seed=secrets.randbelow(2**31) if request.seed is None else request.seed,
        max_thinking_tokens=budget,
        glyphs=glyphs,
        glyph_reference=glyphs and has_glyph_reference(request.prompt, config.glyph_preset, config.glyph_objects),
    )


@dataclass
class JobResult:
    """What a finished request gets back.

    Attributes:
        images_b64: the ``n`` PNGs, base64-encoded.
        reasoning, instruction, thought: the MLLM's thought, its instruction, whether it thought.
        seed: the seed used.
        width, height: size of the images.
        timings_s: seconds ``queued``, ``thinking``, ``denoising``, ``decode`` (the last three for the whole call).
        batch_size: requests that shared the pipeline call.
    """

    images_b64: list[str]
    reasoning: str
    instruction: str
    thought: bool
    seed: int
    width: int
    height: int
    timings_s: dict[str, float]
    batch_size: int


@dataclass(eq=False)
class Job:
    """A submitted request: settled by the worker thread, awaited on the event loop.

    Attributes:
        spec: the request.
        loop: the event loop that awaits it.
        future: set to a :class:`JobResult` or a :class:`ServeError`.
        events: for streaming requests, the events in order (dicts), ended by None.
        cancelled: set once the client is gone or out of time; ``cancel_reason`` says which.
        enqueued_at, deadline: monotonic seconds.
    """

    spec: JobSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[JobResult]
    events: asyncio.Queue[dict[str, Any] | None] | None
    deadline: float
    enqueued_at: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"

    def _call_on_loop(self, fn: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is gone, and so is whoever waited
            logger.debug("event loop closed; dropping an update of a job")

    def emit(self, event: dict[str, Any]) -> None:
        """Send a streaming event (no-op for a non-streaming request). Thread-safe."""
        if self.events is not None:
            self._call_on_loop(self.events.put_nowait, event)

    def settle(self, result: JobResult | None = None, error: ServeError | None = None) -> None:
        """Finish the request with a result or an error. Thread-safe; only the first call counts."""
        self._call_on_loop(self._settle, result, error)

    def _settle(self, result: JobResult | None, error: ServeError | None) -> None:
        if self.future.done():
            return
        if self.cancelled.is_set():
            self.future.cancel()  # nobody awaits it any more; an exception would be logged as never retrieved
        elif error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)
        if self.events is not None:
            self.events.put_nowait(None)


class _JobStreamer(BaseStreamer):
    """Receives the MLLM's tokens in the worker thread and turns them into reasoning / instruction deltas.

    Also the cancellation point of thinking: it raises :class:`JobCancelled` once the client is gone.
    """

    def __init__(self, job: Job, pipeline: ThinkGenPipeline) -> None:
        self._job = job
        self._tokenizer = pipeline.mllm.tokenizer
        self._think_end_id = pipeline.mllm.think_end_token_id
        self._end_id = pipeline.mllm.end_token_id
        self._is_prompt = True  # `generate` first puts the whole prompt
        self._phase = "reasoning"
        self._pending: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if self._job.cancelled.is_set():
            raise JobCancelled
        if self._is_prompt:
            self._is_prompt = False
            return
        for token in value.flatten().tolist():
            if token == self._think_end_id:
                self._flush(force=True)
                self._phase = "instruction"
            elif token == self._end_id:
                self._flush(force=True)
                self._phase = "done"
            elif self._phase != "done":
                self._pending.append(token)
        self._flush(force=False)

    def end(self) -> None:
        self._flush(force=True)

    def _flush(self, force: bool) -> None:
        if not self._pending:
            return
        text = self._tokenizer.decode(self._pending, skip_special_tokens=True)
        # A byte-level token can end inside a multi-byte character: wait for the rest of it.
        if text.endswith("\ufffd") and not force:
            return
        self._pending.clear()
        if text:
            self._job.emit({"type": f"{self._phase}.delta", "delta": text})


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ImageWorker:
    """The queue and the thread that owns the pipeline.

    Args:
        pipeline: the loaded pipeline; only this worker's thread may call it.
        settings: queue size, batch size, batch window.
        metrics: where batches and request outcomes are counted.
    """

    def __init__(self, pipeline: ThinkGenPipeline, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.metrics = metrics

    # ---- lifecycle --------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (not counting the running call)."""
        return len(self._pending)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="thinkgen-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse new requests, fail the queued ones with 503, and let the running call finish."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        for job in pending:
            job.settle(error=ServeError(503, "the server is shutting down", type="server_error", code="shutdown"))
        if self._thread is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)

    # ---- the event loop's side ----------------------------------------------------------------------------

    def submit(self, spec: JobSpec, stream: bool = False) -> Job:
        """Queue a request; call from the event loop.

        Raises:
            ServeError: 429 when the queue is full (with ``Retry-After``), 503 when the worker is not running.
        """
        loop = asyncio.get_running_loop()
        job = Job(spec, loop, loop.create_future(), asyncio.Queue() if stream else None,
                  deadline=time.monotonic() + self.settings.request_timeout_s)
        with self._cond:
            if not self.is_running:
                raise ServeError(503, "the model is not running", type="server_error", code="not_running")
            if len(self._pending) >= self.settings.max_queue_size:
                self.metrics.observe_job("rejected")
                raise ServeError(
                    429, f"the server is busy: {len(self._pending)} requests are queued; retry later",
                    type="rate_limit_error", code="queue_full", headers={"Retry-After": str(self._retry_after_s())},
                )
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Give up on a request (client gone: ``cancelled``; out of time: ``timeout``). Idempotent."""
        if job.future.done() or job.cancelled.is_set():
            return
        job.cancel_reason = reason
        job.cancelled.set()
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return  # the worker has it and counts it
        self.metrics.observe_job(reason)
        job.settle()

    def _retry_after_s(self) -> int:
        # Roughly when a queue slot frees up: one pipeline call from now.
        mean = self.metrics.mean_service_s()
        return max(self.settings.retry_after_s, round(mean or 0.0))

    # ---- the worker thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        logger.info("worker started")
        while (batch := self._take_batch()) is not None:
            self._execute(batch)
        logger.info("worker stopped")

    def _expire(self, job: Job) -> None:
        self.metrics.observe_job("timeout")
        job.settle(error=ServeError(504, "the request timed out in the queue", type="server_error", code="timeout"))

    def _take_batch(self) -> list[Job] | None:
        """The next job and every queued job that may share its call; None once stopping."""
        with self._cond:
            while True:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                job = self._pending.popleft()
                if time.monotonic() < job.deadline:
                    break
                self._expire(job)
            key = job.spec.batch_key()
            batch, num_images = [job], job.spec.num_images
            window_end = time.monotonic() + self.settings.batch_window_s
            while key is not None:
                for other in list(self._pending):
                    if other.spec.batch_key() != key or time.monotonic() >= other.deadline:
                        continue
                    if num_images + other.spec.num_images > self.settings.max_batch_images:
                        break
                    self._pending.remove(other)
                    batch.append(other)
                    num_images += other.spec.num_images
                remaining = window_end - time.monotonic()
                if remaining <= 0 or num_images + job.spec.num_images > self.settings.max_batch_images:
                    break
                self._cond.wait(remaining)
            return batch

    def _execute(self, batch: list[Job]) -> None:
        """Run one pipeline call for ``batch`` and settle every job in it."""
        live = []
        for job in batch:
            if job.cancelled.is_set():  # cancelled after it was taken, before it started
                self.metrics.observe_job(job.cancel_reason)
            else:
                live.append(job)
        if not live:
            return
        start = time.monotonic()
        try:
            results = self._generate(live, start)
        except JobCancelled:
            logger.info("abandoned a call of %d request(s): every client is gone", len(live))
            for job in live:
                self.metrics.observe_job(job.cancel_reason)
                job.settle()
            return
        except ThoughtNotClosedError as err:
            # The model's fault, not the request's: a server error, which another seed may not repeat.
            for job in live:
                self.metrics.observe_job("error")
                job.settle(error=ServeError(500, f"the model ended its turn without closing its thought ({err}); "
                                            "try another seed", type="server_error", code="thought_not_closed"))
            return
        except ValueError as err:
            if len(live) > 1:
                # Run them one by one, so that only the faulty request fails.
                for job in live:
                    self._execute([job])
                return
            self.metrics.observe_job("invalid")
            live[0].settle(error=ServeError(400, str(err)))
            return
        except Exception as err:  # one bad call must not stop the worker
            logger.exception("pipeline call failed")
            for job in live:
                self.metrics.observe_job("error")
                # The details stay in the server's log: they may name paths and internals.
                job.settle(error=ServeError(500, f"image generation failed ({type(err).__name__}); the server's "
                                            "log has the details", type="server_error"))
            return
        self.metrics.observe_batch(len(live), sum(j.spec.num_images for j in live), time.monotonic() - start)
        for job, result in zip(live, results):
            # A client that left during the call is counted as cancelled, though its image was drawn.
            self.metrics.observe_job(job.cancel_reason if job.cancelled.is_set() else "ok")
            job.settle(result)

    def _noise(self, spec: JobSpec) -> torch.Tensor:
        """The noise a single call with ``spec.seed`` draws: ``(n, C, h, w)``, from a CPU generator."""
        codec = self.pipeline.codec
        shape = (spec.num_images, codec.latent_channels, spec.height // codec.downscale_factor,
                 spec.width // codec.downscale_factor)
        return torch.randn(shape, generator=torch.Generator().manual_seed(spec.seed), dtype=torch.float32)

    def _generate(self, jobs: list[Job], start: float) -> list[JobResult]:
        """One pipeline call for ``jobs`` (one job, or compatible no-think jobs); results in job order."""
        first = jobs[0].spec

        def on_step(step: int, latents: torch.Tensor) -> None:
            if all(job.cancelled.is_set() for job in jobs):
                raise JobCancelled
            for job in jobs:
                job.emit({"type": "progress", "step": step + 1, "num_inference_steps": first.num_inference_steps})

        kwargs: dict[str, Any] = {
            "num_images_per_prompt": first.num_images,
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.num_inference_steps,
            "guidance_scale": first.guidance_scale,
            "image_guidance_scale": first.image_guidance_scale,
            "callback": on_step,
        }
        if len(jobs) == 1:
            thinking = ThinkingConfig(seed=first.seed, max_thinking_tokens=first.max_thinking_tokens)
            if self.settings.max_instruction_tokens is not None:
                thinking = dataclasses.replace(thinking, max_instruction_tokens=self.settings.max_instruction_tokens)
            out = self.pipeline(first.prompt, images=first.images or None, think=first.think, seed=first.seed,
                                thinking=thinking, streamer=_JobStreamer(jobs[0], self.pipeline),
                                glyphs=first.glyphs, **kwargs)
        else:
            # Batched jobs quote no text or asked for no glyph (batch_key), so none gets a glyph reference.
            latents = torch.cat([self._noise(job.spec) for job in jobs])  # (sum n, C, h, w)
            out = self.pipeline([job.spec.prompt for job in jobs], think=False, latents=latents, glyphs=False,
                                **kwargs)
        timings = {k: round(v, 6) for k, v in out.timings.items()}
        n = first.num_images
        results = []
        for k, job in enumerate(jobs):
            images = out.images[k * n:(k + 1) * n]
            results.append(JobResult(
                images_b64=[_png_b64(image) for image in images],
                reasoning=out.reasoning[k],
                instruction=out.instruction[k],
                thought=out.thought[k],
                seed=job.spec.seed,
                width=images[0].width,
                height=images[0].height,
                timings_s={"queued": round(start - job.enqueued_at, 6), **timings},
                batch_size=len(jobs),
            ))
        return results
