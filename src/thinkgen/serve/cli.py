"""``thinkgen serve``: run the image server with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from .. import DTYPES

logger = logging.getLogger(__name__)

API_KEY_ENV = "THINKGEN_API_KEY"
MIB = 1024 * 1024
# Flags that set a ServeSettings field one to one: (flag, field, type, help). Defaults come from the settings.
LIMIT_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-queue-size", "max_queue_size", int, "queued requests at most; one more gets 429"),
    ("--max-batch-images", "max_batch_images", int, "images per batched pipeline call at most"),
    ("--request-timeout", "request_timeout_s", float, "seconds before a request is cancelled with 504"),
    ("--max-output-pixels", "max_output_pixels", int, "largest width*height a request may ask for"),
    ("--max-upload-pixels", "max_upload_pixels", int, "largest width*height of an uploaded image"),
    ("--max-images", "max_images_per_request", int, "largest n per request"),
    ("--max-steps", "max_inference_steps", int, "largest num_inference_steps"),
    ("--max-thinking-tokens", "max_thinking_tokens", int, "thinking budget of every request"),
    ("--max-instruction-tokens", "max_instruction_tokens", int, "tokens after </think> (default: the model's)"),
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``serve``; without the serve extra, a ``serve`` that says how to install it."""
    try:
        from .settings import ServeSettings
    except ImportError:  # every other command must work without the serve extra
        p = commands.add_parser("serve", help="serve the model over HTTP (needs: pip install 'thinkgen[serve]')")
        p.set_defaults(handler=_missing_serve_extra)
        return
    fields = ServeSettings.model_fields
    p = commands.add_parser(
        "serve", help="serve the model over an OpenAI-compatible HTTP API, with a web page",
        description="Example: thinkgen serve --model path/to/model --port 8000  (then open http://127.0.0.1:8000/)",
    )
    p.add_argument("--model", default=fields["model"].default,
                   help="model folder, or 'nano' for the shipped model (default)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=fields["dtype"].default, choices=DTYPES,
                   help="weight dtype (default: float32; bfloat16 for the full-size model on a GPU)")
    p.add_argument("--host", default=fields["host"].default,
                   help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=fields["port"].default, help="port (default: %(default)s)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every endpoint but /health (default: ${API_KEY_ENV}"
                        "; unset: no key needed)")
    p.add_argument("--max-body-mb", type=float, default=fields["max_body_bytes"].default / MIB,
                   help="largest request body in MiB (default: %(default)s)")
    for flag, name, kind, text in LIMIT_FLAGS:
        p.add_argument(flag, dest=name, type=kind, default=fields[name].default, help=f"{text} (default: %(default)s)")
    p.set_defaults(handler=_run_serve)


def _missing_serve_extra(args: argparse.Namespace) -> int:
    from ..cli import UserError

    raise UserError("serving needs the serve extra: pip install 'thinkgen[serve]' (fastapi, uvicorn, pydantic)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import ServeSettings

    # Read here rather than as the flag's default, so `--help` never prints the key.
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(
        model=args.model, device=args.device, dtype=args.dtype, host=args.host, port=args.port, api_key=api_key,
        max_body_bytes=int(args.max_body_mb * MIB), **{name: getattr(args, name) for _, name, _, _ in LIMIT_FLAGS},
    )
    if not _is_loopback(settings.host) and settings.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", settings.host)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    return 0
