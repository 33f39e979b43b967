"""GenEval: loader, every rule on planted detections (parity with GenEval's scorer), detectors, layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_support import FIXTURES, REAL_BENCHMARKS, eval_args, save_tiny_clip, tiny_pipeline
from PIL import Image, ImageDraw

from thinkgen.cli import main
from thinkgen.eval.cli import run_benchmark
from thinkgen.eval.geneval import (
    ClipColourClassifier,
    GenEvalLayout,
    GenEvalScorer,
    ObjectDetection,
    PaletteColourClassifier,
    TransformersObjectDetector,
    WorldObjectDetector,
    evaluate_detections,
    geneval_crop,
    load_geneval,
    select_detections,
)
from thinkgen.world.render import render
from thinkgen.world.scene import Scene, SceneObject


def det(name: str, box=(0, 0, 10, 10), score: float = 0.95, colour: str | None = None) -> ObjectDetection:
    return ObjectDetection(name, tuple(float(v) for v in box), score, colour=colour)


def verdict(metadata: dict, detections: list[ObjectDetection]) -> tuple[bool, list[str]]:
    objects = select_detections(detections, metadata["tag"])
    return evaluate_detections(metadata, objects, lambda d: d.colour)


# ----------------------------------------------------------------------------- loader


def test_loader_reads_fixture() -> None:
    items = load_geneval(FIXTURES / "geneval" / "evaluation_metadata.jsonl")
    assert [it.key for it in items[:2]] == ["00000", "00001"]
    assert {it.category for it in items} == {"single_object", "two_object", "counting", "colors", "position",
                                             "color_attr"}
    assert items[4].meta["geneval"]["include"][1]["position"] == ["left of", 0]


@pytest.mark.parametrize(("line", "message"), [
    ('{"tag": "counting", "include": [{"class": "cat", "count": 0}], "prompt": "x"}', "line 2: include[0]: field 'count'"),
    ('{"tag": "shapes", "include": [{"class": "cat", "count": 1}], "prompt": "x"}', "line 2: field 'tag'"),
    ('{"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}], "prompt": "x"}', "field 'color'"),
    ('{"tag": "position", "include": [{"class": "a", "count": 1, "position": ["left of", 0]}], "prompt": "x"}',
     "earlier include clause"),
    ('{"tag": "counting", "include": [{"class": "cat", "count": 1}]}', "line 2: field 'prompt'"),
    ("{not json", "line 2: not JSON"),
])
def test_loader_names_line_and_field(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "meta.jsonl"
    path.write_text('{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}\n' + line)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_geneval(path)


@pytest.mark.skipif(not REAL_BENCHMARKS.is_dir(), reason="the benchmark files are not next to the repository")
def test_loader_reads_the_real_file() -> None:
    items = load_geneval(REAL_BENCHMARKS / "geneval" / "evaluation_metadata.jsonl")
    assert len(items) == 553
    assert sum(it.category == "position" for it in items) == 100


# ----------------------------------------------------------------------------- rules


SINGLE = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a cat"}
COUNT3 = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
          "prompt": "three cats"}


def test_score_threshold_is_strict_and_per_task() -> None:
    assert not verdict(SINGLE, [det("cat", score=0.3)])[0]  # > 0.3, not >=
    assert verdict(SINGLE, [det("cat", score=0.31)])[0]
    counting_one = {**SINGLE, "tag": "counting"}
    assert not verdict(counting_one, [det("cat", score=0.9)])[0]  # counting needs > 0.9
    assert verdict(counting_one, [det("cat", score=0.91)])[0]


def test_counting_is_exact_through_the_exclude_clause() -> None:
    assert not verdict(COUNT3, [det("cat")] * 2)[0]
    assert verdict(COUNT3, [det("cat")] * 3)[0]
    correct, reasons = verdict(COUNT3, [det("cat")] * 4)
    assert not correct and reasons == ["expected cat < 4, found 4"]
    # Low-scoring extras are dropped before counting.
    assert verdict(COUNT3, [det("cat")] * 3 + [det("cat", score=0.85)])[0]


def test_at_most_sixteen_detections_per_class() -> None:
    many = {"tag": "single_object", "include": [{"class": "cat", "count": 1}],
            "exclude": [{"class": "cat", "count": 17}], "prompt": "cats"}
    assert verdict(many, [det("cat")] * 40)[0]  # capped at 16 < 17
    kept = select_detections([det("cat", score=0.4 + i / 100) for i in range(20)], "single_object")["cat"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.59)  # best first


def test_colour_checks_only_the_top_count_objects() -> None:
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}
    assert verdict(meta, [det("car", score=0.9, colour="red"), det("car", score=0.5, colour="blue")])[0]
    correct, reasons = verdict(meta, [det("car", score=0.9, colour="blue"), det("car", score=0.5, colour="red")])
    assert not correct and reasons == ["expected red car >= 1, found 1 blue"]
    two = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "two red cars"}
    assert not verdict(two, [det("car", colour="red"), det("car", colour="green")])[0]


def pos_meta(rel: str) -> dict:
    return {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": [rel, 0]}], "prompt": "p"}


@pytest.mark.parametrize(("cat_box", "rel", "holds"), [
    ((0, 40, 20, 60), "left of", True),
    ((80, 40, 100, 60), "right of", True),
    ((40, 0, 60, 20), "above", True),  # y grows downwards
    ((40, 80, 60, 100), "below", True),
    ((40, 80, 60, 100), "above", False),
    # Offset 4 = 0.1 · (20 + 20) exactly: the revised offset is 0, no relation.
    ((34, 40, 54, 60), "right of", False),
    # Offset 8: revised 4, dx = 4/8 = 0.5 exactly, and the rule needs more than 0.5.
    ((38, 40, 58, 60), "right of", False),
    ((39, 40, 59, 60), "right of", True),  # offset 9: dx = 5/9
    # Diagonal at 45°: dx = dy = 26/√1800 ≈ 0.61 > 0.5: both relations hold.
    ((60, 70, 80, 90), "right of", True),
    ((60, 70, 80, 90), "below", True),
])
def test_position_rule(cat_box, rel: str, holds: bool) -> None:
    assert verdict(pos_meta(rel), [det("dog", (30, 40, 50, 60)), det("cat", cat_box)])[0] is holds


def test_position_needs_every_pair_and_a_matched_target() -> None:
    meta = {"tag": "position", "include": [{"class": "dog", "count": 2},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}], "prompt": "p"}
    dogs = [det("dog", (60, 0, 80, 20)), det("dog", (60, 60, 80, 80), score=0.9)]
    assert verdict(meta, [*dogs, det("cat", (0, 30, 20, 50))])[0]  # left of both dogs
    below = [dogs[0], det("dog", (0, 60, 20, 80), score=0.9)]
    assert not verdict(meta, [*below, det("cat", (0, 0, 20, 20))])[0]  # only above the second dog
    correct, reasons = verdict(meta, [det("dog", (60, 0, 80, 20)), det("cat", (0, 30, 20, 50))])
    assert not correct and reasons[-1] == "no target for cat to be left of"


# ----------------------------------------------------------------------------- detectors and colours


def test_palette_colour_classifier_ignores_the_background() -> None:
    image = Image.new("RGB", (40, 40), "white")
    ImageDraw.Draw(image).ellipse((5, 5, 35, 35), fill=(30, 80, 230))
    classifier = PaletteColourClassifier()
    assert classifier.classify(image, det("ball", (0, 0, 40, 40))) == "blue"
    mask = np.zeros((40, 40), bool)
    mask[:3] = True  # a mask over white pixels only
    assert classifier.classify(image, ObjectDetection("ball", (0, 0, 40, 40), 1.0, mask=mask)) == "white"


# GenEval's colours and colour-query templates, written out here to check the module's constants.
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]


def genevals_colour_texts(colour: str, name: str) -> list[str]:
    return [f"a photo of a {colour} {name}", f"a photo of a {colour}-colored {name}", f"a photo of a {colour} object"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_geneval_crop_greys_outside_the_mask_then_cuts_the_box() -> None:
    image = Image.new("RGB", (40, 40), (0, 200, 0))
    ImageDraw.Draw(image).rectangle((10, 10, 29, 29), fill=(200, 0, 0))
    # No mask: the box of the untouched image; the box is rounded (PIL's crop, half to even).
    plain = geneval_crop(image, det("ball", (5.4, 5.6, 35.2, 34.5)))
    assert plain.size == (30, 28) and plain.getpixel((0, 0)) == (0, 200, 0) and plain.getpixel((15, 15)) == (200, 0, 0)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    masked = geneval_crop(image, ObjectDetection("ball", (5, 5, 35, 35), 1.0, mask=mask))
    assert masked.getpixel((0, 0)) == (153, 153, 153) and masked.getpixel((15, 15)) == (200, 0, 0)
    assert geneval_crop(image, det("ball", (30, 30, 50, 50))).getpixel((15, 15)) == (0, 0, 0)  # outside the image
    with pytest.raises(ValueError, match="mask has shape"):
        geneval_crop(image, ObjectDetection("ball", (5, 5, 35, 35), 1.0, mask=mask[:, :20]))


def test_clip_colour_classifier_is_genevals_zero_shot(clip_dir) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:50] = True
    detections = [ObjectDetection("cat", (4.0, 6.0, 40.0, 44.0), 0.9),
                  ObjectDetection("cat", (16.0, 8.0, 56.0, 34.0), 0.9, mask=mask),
                  ObjectDetection("fire hydrant", (16.0, 8.0, 56.0, 34.0), 0.9)]
    classifier = ClipColourClassifier(clip_dir)

    # Independently: the crop by hand, CLIP's forward pass (which returns normalised embeddings).
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    expected = []
    for d in detections:
        pixels = np.asarray(image).copy()
        if d.mask is not None:
            pixels[~d.mask] = 153
        x0, y0, x1, y1 = (int(v) for v in d.box)
        crop = Image.fromarray(pixels[y0:y1, x0:x1])
        texts = [t for c in COLOURS for t in genevals_colour_texts(c, d.class_name)]
        with torch.no_grad():
            out = model(**processor(text=texts, images=[crop], return_tensors="pt", padding=True))
        per_colour = torch.nn.functional.normalize(out.text_embeds, dim=-1).reshape(10, 3, -1).mean(dim=1)
        image_embed = torch.nn.functional.normalize(out.image_embeds[0], dim=0)
        sims = torch.nn.functional.normalize(per_colour, dim=-1) @ image_embed
        expected.append(sims.numpy())

    for d, sims in zip(detections, expected):
        np.testing.assert_allclose(classifier.similarities(image, d), sims, atol=1e-5)
        assert classifier.classify(image, d) == COLOURS[int(np.argmax(sims))]
    assert not np.allclose(expected[1], expected[2])  # the mask and the class name both reach CLIP

    # In the scorer: the top object must have the colour CLIP names.
    box = {"xmin": 4, "ymin": 6, "xmax": 40, "ymax": 44}
    scorer = GenEvalScorer(TransformersObjectDetector(predict=lambda im, names: [{"label": "cat", "score": 0.9,
                                                                                  "box": box}]), classifier)
    named = COLOURS[int(np.argmax(expected[0]))]
    other = next(c for c in COLOURS if c != named)
    meta = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": named}], "prompt": "a cat"}
    assert scorer.score_image(image, meta) == (True, [])
    wrong = {**meta, "include": [{"class": "cat", "count": 1, "color": other}]}
    assert scorer.score_image(image, wrong) == (False, [f"expected {other} cat >= 1, found 1 {named}"])
    assert scorer.scorer_id == f"geneval/transformers:custom/clip:{clip_dir}"


def test_clip_colour_classifier_needs_its_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="CLIP model folder not found: .*no_such_clip"):
        ClipColourClassifier(tmp_path / "no_such_clip")


def test_colour_model_option_reaches_the_scorer(tmp_path, clip_dir, capsys) -> None:
    data = ["--data", str(FIXTURES / "geneval" / "evaluation_metadata.jsonl"), "--detector", "world", "--no-think",
            "--limit", "1", "-n", "1"]
    with_clip = run_benchmark(eval_args("geneval", tmp_path / "clip", extra=data + ["--colour-model", str(clip_dir)]),
                              load_pipeline=tiny_pipeline)
    assert with_clip["settings"]["scorer_id"] == f"geneval/world/clip:{clip_dir}"
    palette = run_benchmark(eval_args("geneval", tmp_path / "palette", extra=data), load_pipeline=tiny_pipeline)
    assert palette["settings"]["scorer_id"] == "geneval/world/palette"
    # A missing folder stops the run before anything is generated.
    missing = tmp_path / "no_such_clip"
    capsys.readouterr()
    assert main(["eval", "geneval", *data, "--colour-model", str(missing), "--out", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err.strip() == f"error: CLIP model folder not found: {missing}"
    assert not (tmp_path / "g").exists()


def test_world_detector_scores_world_renders() -> None:
    scene = Scene(objects=(SceneObject("circle", "blue", 0.25, 0.5, 0.2), SceneObject("star", "red", 0.75, 0.5, 0.2)))
    image = render(scene, 128)
    scorer = GenEvalScorer(WorldObjectDetector())
    good = {"tag": "position", "prompt": "p", "include": [{"class": "star", "count": 1, "color": "red"},
                                                         {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert scorer.score_image(image, good) == (True, [])
    bad = {**good, "include": [good["include"][0], {"class": "circle", "count": 1, "position": ["right of", 0]}]}
    assert not scorer.score_image(image, bad)[0]


def test_transformers_detector_adapter_with_a_stub_model() -> None:
    calls = []

    def predict(image, names):
        calls.append(list(names))
        return [{"label": "cat", "score": 0.8, "box": {"xmin": 1, "ymin": 2, "xmax": 11, "ymax": 12}},
                {"label": "cat", "score": 0.2, "box": {"xmin": 20, "ymin": 2, "xmax": 30, "ymax": 12}}]

    scorer = GenEvalScorer(TransformersObjectDetector(predict=predict))
    image = Image.new("RGB", (32, 32), "white")
    assert scorer.score_image(image, SINGLE) == (True, [])
    meta = {**SINGLE, "exclude": [{"class": "cat", "count": 2}]}
    assert scorer.score_image(image, meta)[0]  # the 0.2 detection is below the threshold
    assert calls[0] == ["cat"]
    with pytest.raises(FileNotFoundError):
        TransformersObjectDetector("/no/such/model")


def test_layout_is_genevals(tmp_path) -> None:
    item = load_geneval(FIXTURES / "geneval" / "evaluation_metadata.jsonl")[2]
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    paths = GenEvalLayout().write(tmp_path, item, images)
    assert paths == ["00002/samples/0000.png", "00002/samples/0001.png"]
    assert json.loads((tmp_path / "00002" / "metadata.jsonl").read_text()) == item.meta["geneval"]
    assert sorted(p.name for p in (tmp_path / "00002" / "samples").iterdir()) == ["0000.png", "0001.png"]
    back = GenEvalLayout().read(tmp_path, item, paths, 2)
    assert back[1].getpixel((0, 0)) == (0, 0, 255)
