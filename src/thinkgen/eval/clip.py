"""Local CLIP models for scoring, loaded one way for every benchmark that asks CLIP (CVTG's CLIPScore,
GenEval's colours): scorers run offline, so a CLIP is always a folder, never a hub name."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_clip(model_path: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """A transformers ``CLIPModel`` (eval mode, on ``device``, default cpu) and its ``CLIPProcessor``.

    Raises:
        FileNotFoundError: ``model_path`` is not a folder (the message names it).
    """
    if not Path(model_path).is_dir():
        raise FileNotFoundError(f"CLIP model folder not found: {model_path}")
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(model_path).eval().to(device or "cpu")
    return model, CLIPProcessor.from_pretrained(model_path)
