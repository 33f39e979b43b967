"""Typed dependencies of the routes: settings, the worker, the API key check, and the edit form."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..imageio import load_image
from ..pipeline import MAX_REFERENCE_IMAGES
from .metrics import ServeMetrics
from .schemas import ImageEditRequest, ServeError
from .settings import ServeSettings
from .worker import ImageWorker

# The OpenAI client names one image `image` and several `image[]`; both are accepted.
IMAGE_FIELDS = ("image", "image[]")
# Text fields of an edit form at most: the request's fields, with room to name a few unknown ones in the error.
MAX_FORM_FIELDS = 64


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_metrics(request: Request) -> ServeMetrics:
    return request.app.state.metrics


def get_worker(request: Request) -> ImageWorker:
    worker: ImageWorker | None = getattr(request.app.state, "worker", None)
    if worker is None or not worker.is_running:
        raise ServeError(503, "the model is not loaded", type="server_error", code="not_running")
    return worker


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
MetricsDep = Annotated[ServeMetrics, Depends(get_metrics)]
WorkerDep = Annotated[ImageWorker, Depends(get_worker)]

_bearer = HTTPBearer(auto_error=False)


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Pass when the server has no key, or the request carries ``Authorization: Bearer <key>``."""
    if settings.api_key is None:
        return
    if credentials is None:
        raise ServeError(401, "no API key given: send the header 'Authorization: Bearer <key>'",
                         code="missing_api_key")
    # Constant-time comparison: the time taken must not tell how much of a guessed key was right.
    if not hmac.compare_digest(credentials.credentials.encode(), settings.api_key.get_secret_value().encode()):
        raise ServeError(401, "incorrect API key", code="invalid_api_key")


async def parse_edit_form(request: Request, settings: SettingsDep) -> tuple[ImageEditRequest, list[Image.Image]]:
    """Read an edit's multipart form: its fields as an :class:`ImageEditRequest`, its images decoded.

    Uploads stay in memory (the body limit bounds them) and their file names are never used.

    Raises:
        ServeError: 400 for a form that is not multipart, a corrupt or oversized image, or no image.
        RequestValidationError: for bad or unknown fields (answered 400 by the app).
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ServeError(400, "an edit must be sent as multipart/form-data with the image(s) in 'image' or 'image[]'")
    parser = MultiPartParser(request.headers, request.stream(), max_files=MAX_REFERENCE_IMAGES,
                             max_fields=MAX_FORM_FIELDS, max_part_size=settings.max_body_bytes)
    # Never roll an upload over into a temporary file: the body limit already bounds what memory holds.
    parser.spool_max_size = settings.max_body_bytes
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise ServeError(400, f"cannot read the multipart form: {err.message}") from err
    fields: dict[str, str] = {}
    images: list[Image.Image] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise ServeError(400, f"unexpected file field {name!r}; images go in 'image' or 'image[]' "
                                     "(masks are not supported)", param=name)
                try:
                    images.append(load_image(await value.read(), max_pixels=settings.max_upload_pixels))
                except ValueError as err:
                    raise ServeError(400, f"image {len(images) + 1}: {err}", param="image") from err
            elif name in fields:
                raise ServeError(400, f"field {name!r} is given more than once", param=name)
            else:
                fields[name] = value
    finally:
        await form.close()
    if not images:
        raise ServeError(400, "no image given: send the image(s) to edit as 'image' or 'image[]' file parts",
                         param="image")
    try:
        body = ImageEditRequest.model_validate(fields)
    except ValidationError as err:
        raise RequestValidationError(err.errors()) from err
    return body, images


EditFormDep = Annotated[tuple[ImageEditRequest, list[Image.Image]], Depends(parse_edit_form)]
