"""Request, response and error bodies of the OpenAI-compatible Images API, with ThinkGen's extensions.

Requests forbid unknown fields, so a misspelt option is an error rather than silently ignored. The
extensions (``think``, ``seed``, ``num_inference_steps``, ``guidance_scale``, ``image_guidance_scale``,
``max_thinking_tokens``) are ordinary body fields; the official client sends them through ``extra_body``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SIZE_PATTERN = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ServeError(Exception):
    """An error answered in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status_code: HTTP status.
        message: what is wrong, and what is allowed.
        type: the OpenAI error type (``invalid_request_error``, ``server_error`` …).
        param: the request field at fault, if one is.
        code: a machine-readable code (``queue_full``, ``timeout`` …).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ImageGenerationRequest(BaseModel):
    """``POST /v1/images/generations`` (JSON), and the form fields of ``POST /v1/images/edits``.

    Attributes:
        prompt: what to draw (for edits: the instruction).
        model: accepted for compatibility; the server serves one model whatever is named.
        n: images to draw (each with its own noise from ``seed``).
        size: ``"WIDTHxHEIGHT"``, or ``"auto"`` for the model's default (an edit: the input image's size).
        response_format: only ``"b64_json"``; the server stores nothing, so it has no URLs to give.
        output_format: only ``"png"``.
        user: accepted for compatibility, unused.
        stream: answer with server-sent events: the thinking as it is written, then the images.
        think: ThinkGen extension: reason before drawing (``True``), draw at once (``False``), or let the
            model decide (``"auto"``).
        seed: ThinkGen extension: seeds noise and thinking; a random one is drawn (and returned) when absent.
        num_inference_steps, guidance_scale, image_guidance_scale: ThinkGen extensions: sampler settings
            (default: the model's).
        max_thinking_tokens: ThinkGen extension: thinking budget (default and upper bound: the server's).
        glyphs: ThinkGen extension: on a model trained with glyph references, give the DiT one of the text
            the instruction quotes, and of its objects where the model marks them, and an edit's marks where
            the model reads them (``False``: the DiT reads the text and input images alone); no effect on other
            models.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png"] = "png"
    user: str | None = None
    stream: bool = False
    think: bool | Literal["auto"] = False
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    image_guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    max_thinking_tokens: int | None = Field(None, ge=0)
    glyphs: bool = True

    @field_validator("think", mode="before")
    @classmethod
    def _check_think(cls, think: object) -> object:
        # Form fields arrive as text; JSON as booleans. Anything else gets one clear message.
        allowed = {True: True, False: False, "true": True, "false": False, "auto": "auto"}
        key = think.lower() if isinstance(think, str) else think
        if not isinstance(key, (bool, str)) or key not in allowed:
            raise ValueError(f"think must be true, false or 'auto', got {think!r}")
        return allowed[key]

    @field_validator("size")
    @classmethod
    def _check_size(cls, size: str) -> str:
        if size != "auto" and not SIZE_PATTERN.match(size):
            raise ValueError(f"size must be 'auto' or 'WIDTHxHEIGHT' such as '512x512', got {size!r}")
        return size

    def parsed_size(self) -> tuple[int, int] | None:
        """``(width, height)``, or None for ``"auto"``."""
        match = SIZE_PATTERN.match(self.size)
        return (int(match[1]), int(match[2])) if match else None


class ImageEditRequest(ImageGenerationRequest):
    """The form fields of ``POST /v1/images/edits``; the images come as ``image`` / ``image[]`` file parts."""


class ImageData(BaseModel):
    """One image of a response.

    Attributes:
        b64_json: the PNG, base64-encoded.
        revised_prompt: the instruction the DiT drew from: the MLLM's text after ``</think>`` (the prompt
            itself without thinking).
        reasoning: ThinkGen extension: the MLLM's thought ("" without thinking).
        thought: ThinkGen extension: whether the MLLM thought (matters for ``think="auto"``).
        seed: ThinkGen extension: the seed that reproduces this request.
    """

    b64_json: str
    revised_prompt: str
    reasoning: str
    thought: bool
    seed: int


class ImagesResponse(BaseModel):
    """The answer of both image endpoints.

    Attributes:
        created: Unix time of the answer.
        data: the ``n`` images.
        output_format, size: what was drawn.
        timings_s: ThinkGen extension: seconds spent ``queued``, ``thinking``, ``denoising``, ``decode``.
        batch_size: ThinkGen extension: requests that shared the pipeline call.
    """

    created: int
    data: list[ImageData]
    output_format: Literal["png"] = "png"
    size: str
    timings_s: dict[str, float]
    batch_size: int


class HealthResponse(BaseModel):
    """``GET /health``: ``ok`` once the model is loaded and the worker runs."""

    status: Literal["ok", "loading", "stopped"]
    model: str
