"""Local image–text models for scoring, loaded one way for every scorer that asks one (CVTG's CLIPScore,
GenEval's colours, the image–text similarity reward): scorers run offline, so a model is always a folder,
never a hub name."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _model_folder(model_path: str | Path, what: str) -> Path:
    folder = Path(model_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} model folder not found: {model_path}")
    return folder


def load_clip(model_path: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """A transformers ``CLIPModel`` (eval mode, on ``device``, default cpu) and its ``CLIPProcessor``.

    GenEval reads CLIP's towers and projections directly, so this loader insists on the CLIP classes.

    Raises:
        FileNotFoundError: ``model_path`` is not a folder (the message names it).
    """
    folder = _model_folder(model_path, "CLIP")
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder).eval().to(device or "cpu")
    return model, CLIPProcessor.from_pretrained(folder)


def load_image_text_model(model_path: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """Any transformers dual encoder with ``get_image_features`` / ``get_text_features`` (CLIP, SigLIP,
    SigLIP 2, or a preference model fine-tuned from one, with its processor saved beside it), through the
    Auto classes, in eval mode on ``device`` (default cpu), and its processor.

    Raises:
        FileNotFoundError: ``model_path`` is not a folder.
        ValueError: the folder holds a model without both feature methods.
    """
    folder = _model_folder(model_path, "image-text")
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder)
    if not all(callable(getattr(model, m, None)) for m in ("get_image_features", "get_text_features")):
        raise ValueError(
            f"{model_path} holds a {type(model).__name__}, which has no get_image_features / get_text_features "
            "(an image-text dual encoder such as CLIP or SigLIP is needed)"
        )
    return model.eval().to(device or "cpu"), AutoProcessor.from_pretrained(folder)
