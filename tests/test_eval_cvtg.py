"""CVTG: loader, OCR word accuracy / NED / CLIPScore, and the real OCR engine on a rendered sign."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from eval_support import FIXTURES, save_tiny_clip
from PIL import Image, ImageDraw, ImageFont

from thinkgen.eval.cvtg import CVTG_LAYOUT, ClipSimilarity, CVTGScorer, FullImageOCR, load_cvtg, normalise_words

IMAGE = Image.new("RGB", (16, 16), "white")


class StubReader:
    def __init__(self, words: list[str]) -> None:
        self.words = words

    def read(self, image: Image.Image) -> list[str]:
        return self.words


class StubClip:
    def similarity(self, image: Image.Image, text: str) -> float:
        return -0.2 if "mug" in text else 0.3


def test_loader_keys_categories_and_layout(tmp_path) -> None:
    items = load_cvtg([FIXTURES / "cvtg" / "2.json", FIXTURES / "cvtg" / "3.json"])
    assert [(it.key, it.category) for it in items] == [("2/1", "2"), ("2/2", "2"), ("3/1", "3")]
    assert CVTG_LAYOUT.write(tmp_path, items[2], [IMAGE, IMAGE]) == ["3/1.png", "3/1_1.png"]
    bad = tmp_path / "4.json"
    bad.write_text('{"data_list": [{"index": 1, "prompt": "x", "sentence_list": []}]}')
    with pytest.raises(ValueError, match=r"4.json data_list\[0\]: field 'sentence_list'"):
        load_cvtg([bad])
    bad.write_text('{"items": []}')
    with pytest.raises(ValueError, match="'data_list'"):
        load_cvtg([bad])


def test_word_accuracy_ned_and_clipscore() -> None:
    items = load_cvtg([FIXTURES / "cvtg" / "2.json", FIXTURES / "cvtg" / "3.json"])
    assert normalise_words(["Good morning!", "buy-milk"]) == ["good", "morning", "buymilk"]
    scorer = CVTGScorer(StubReader(["OPEN,", "SALF"]), StubClip())
    first = scorer.score(items[0], [IMAGE], {})
    assert first["score"] == 0.5 and first["ned"] == pytest.approx(0.875) and first["clip_score"] == 0.3
    second = scorer.score(items[1], [IMAGE], {})
    assert second["score"] == 0.0 and second["clip_score"] == 0.0  # negative cosine clipped to 0
    summary = scorer.aggregate([{**first, "category": "2", "error": None},
                                {**second, "category": "2", "error": None}], items)
    assert summary["overall"] == 0.25 and summary["categories"] == {"2": 0.25}
    assert summary["metrics"]["clip_score"] == pytest.approx(0.15)


def test_clip_similarity_loads_a_local_clip(tmp_path) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = save_tiny_clip(tmp_path)
    image = Image.new("RGB", (24, 20), (200, 30, 30))
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = model(**processor(text=["a red sign"], images=[image], return_tensors="pt", padding=True))
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
    assert ClipSimilarity(folder).similarity(image, "a red sign") == pytest.approx(expected, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="CLIP model folder not found"):
        ClipSimilarity(tmp_path / "missing")


@pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None, reason="needs thinkgen[ocr]")
def test_full_image_ocr_reads_a_rendered_sign() -> None:
    from thinkgen.world import render

    fonts = sorted((Path(render.__file__).parent / "fonts").glob("*.ttf"))
    image = Image.new("RGB", (320, 120), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(fonts[0]), 40)
    draw.text((20, 10), "OPEN", fill="black", font=font)
    draw.text((20, 65), "SALE", fill="black", font=font)
    item = load_cvtg([FIXTURES / "cvtg" / "2.json"])[0]
    result = CVTGScorer(FullImageOCR()).score(item, [image], {})
    assert result["per_image"][0]["read"] == ["open", "sale"] and result["passed"]
