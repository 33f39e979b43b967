"""Helpers of the serve tests: the tiny server's settings, a live uvicorn on loopback, a gated pipeline."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image

from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.serve.settings import ServeSettings

API_KEY = "test-key-123"


def tiny_settings(**overrides: Any) -> ServeSettings:
    """Server settings for the tiny pipeline: short thoughts and instructions, small limits."""
    values: dict[str, Any] = {"model": "tiny", "max_thinking_tokens": 6, "max_instruction_tokens": 4,
                              "max_output_pixels": 64 * 64, "max_inference_steps": 50, **overrides}
    return ServeSettings(**values)


def png_bytes(size: tuple[int, int] = (24, 16), colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    """Largest per-channel difference of two images of one size (0–255)."""
    assert a.size == b.size
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def free_port() -> int:
    """A loopback port free right now (for a server in another process, which must bind it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GatedPipeline(ThinkGenPipeline):
    """The tiny pipeline, but every call first waits for ``gate`` and counts its denoising steps.

    Lets a test hold the worker busy while it fills the queue, cancels requests, or checks batching.
    """

    def __init__(self, pipe: ThinkGenPipeline) -> None:
        super().__init__(pipe.mllm, pipe.transformer, pipe.codec, pipe.config)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []  # prompts per call
        self.steps_run = 0

    def __call__(self, prompt: Any, *args: Any, callback: Any = None, **kwargs: Any) -> Any:
        self.entered.set()
        self.gate.wait(30)
        self.calls.append(1 if isinstance(prompt, str) else len(prompt))

        def counting(step: int, latents: Any) -> None:
            self.steps_run += 1
            if callback is not None:
                callback(step, latents)

        return super().__call__(prompt, *args, callback=counting, **kwargs)


class LiveServer:
    """Run ``app`` with uvicorn on a loopback port in a background thread (lifespan included).

    Example:
        >>> with LiveServer(app) as server:
        ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: FastAPI) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))  # bound here and handed over: no race for a free port
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()
