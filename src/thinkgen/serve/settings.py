"""``ServeSettings``: everything ``thinkgen serve`` can be told, in one validated class."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServeSettings(BaseModel):
    """Settings of the image server; the CLI fills them from its flags.

    Attributes:
        model: model folder, or the name of a shipped model.
        device: torch device for the model (None: cuda if available, else cpu).
        dtype: weight dtype (``bfloat16`` for the full-size model on a GPU).
        host, port: where uvicorn listens. Loopback by default so nothing is exposed by accident.
        api_key: when set, every endpoint but ``/health`` (and the static page) needs
            ``Authorization: Bearer <api_key>``.
        max_queue_size: requests waiting for the model at most; one more is answered 429.
        max_batch_images: images drawn in one pipeline call at most when compatible requests are batched.
        batch_window_s: how long the worker waits for companions before it runs a batchable request alone.
        request_timeout_s: a request not finished by then is cancelled and answered 504.
        retry_after_s: the ``Retry-After`` of a 429 when no request has finished yet to estimate from.
        max_body_bytes: largest request body (JSON or multipart, all images included).
        max_upload_pixels: largest uploaded image (width·height), checked before decoding.
        max_output_pixels: largest image (width·height) a request may ask for.
        max_images_per_request: largest ``n``.
        max_inference_steps: largest ``num_inference_steps``.
        max_thinking_tokens: thinking budget (tokens) of every request, and the most a request may ask for.
        max_instruction_tokens: tokens the MLLM may write after ``</think>`` (None: ``ThinkingConfig``'s default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "nano"
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    max_queue_size: int = Field(64, ge=1)
    max_batch_images: int = Field(8, ge=1)
    batch_window_s: float = Field(0.005, ge=0.0)
    request_timeout_s: float = Field(300.0, gt=0.0)
    retry_after_s: int = Field(1, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(4096 * 4096, ge=1)
    max_output_pixels: int = Field(1024 * 1024, ge=1)
    max_images_per_request: int = Field(4, ge=1)
    max_inference_steps: int = Field(100, ge=1)
    max_thinking_tokens: int = Field(2048, ge=0)
    max_instruction_tokens: int | None = Field(None, ge=1)
