"""The world's judge: detector (shapes, colours, words), scorer (GenEval rules, text metrics), degradations."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from thinkgen.world._components import erode, label
from thinkgen.world.degrade import degrade
from thinkgen.world.detect import Detection, DetectedObject, DetectorConfig, WorldDetector
from thinkgen.world.layout import random_scene
from thinkgen.world.ocr import WordReader
from thinkgen.world.render import render
from thinkgen.world.scene import Clause, Scene, SceneObject, Spec, Word, get_preset
from thinkgen.world.score import levenshtein, ocr_reward, score_spec, text_metrics
from thinkgen.world.vocab import words_for

needs_ocr = pytest.mark.skipif(
    importlib.util.find_spec("rapidocr_onnxruntime") is None, reason="needs the OCR extra (thinkgen[ocr])"
)


def _same_objects(scene: Scene, detection: Detection) -> bool:
    detected = Counter((o.shape, o.colour) for o in detection.objects)
    return Counter((o.shape, o.colour) for o in scene.objects) == detected


def _same_words(scene: Scene, detection: Detection) -> bool:
    return Counter(w.text for w in scene.words) == Counter(w.text for w in detection.words)


def _recovery(preset: str, num_scenes: int, seed: int, read_words: bool, degraded: bool = False) -> float:
    world = get_preset(preset)
    rng = random.Random(seed)
    detector = WorldDetector(DetectorConfig.for_world(world, read_words=read_words))
    hits = 0
    for i in range(num_scenes):
        scene = random_scene(world, rng, vocabulary=words_for(world))
        image = render(scene, world.canvas_px)
        detection = detector.detect(degrade(image, seed=i) if degraded else image)
        hits += _same_objects(scene, detection) and (not read_words or _same_words(scene, detection))
    return hits / num_scenes


# ----------------------------------------------------------------------------- components


def _flood_fill_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            r, c = stack.pop()
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
    return count


def test_label_agrees_with_flood_fill() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random((rng.integers(1, 25), rng.integers(1, 25))) < rng.random()
        components = label(mask)
        assert components.num == _flood_fill_count(mask)
        assert components.areas.sum() == mask.sum()
        assert ((components.labels > 0) == mask).all()


def test_erode_removes_thin_lines() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[4, :] = True
    eroded = erode(mask)
    assert eroded.sum() == 25 and eroded[2:7, 2:7].all()


# ----------------------------------------------------------------------------- detector


@pytest.mark.parametrize(("preset", "num_scenes"), [("nano", 150), ("medium", 80), ("full", 50)])
def test_clean_object_recovery(preset: str, num_scenes: int) -> None:
    assert _recovery(preset, num_scenes, seed=11, read_words=False) >= 0.995


@pytest.mark.parametrize(("preset", "num_scenes"), [("nano", 150), ("full", 40)])
def test_degraded_object_recovery(preset: str, num_scenes: int) -> None:
    assert _recovery(preset, num_scenes, seed=12, read_words=False, degraded=True) >= 0.95


@needs_ocr
def test_clean_recovery_with_words() -> None:
    assert _recovery("nano", 150, seed=13, read_words=True) >= 0.995


@needs_ocr
def test_degraded_recovery_with_words() -> None:
    """Exact scene recovery, words included, on renders degraded the way a generator's output is."""
    assert _recovery("nano", 100, seed=16, read_words=True, degraded=True) >= 0.95


@needs_ocr
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["medium", "full"])
def test_clean_recovery_with_words_larger_worlds(preset: str) -> None:
    assert _recovery(preset, 60, seed=14, read_words=True) >= 0.98


@needs_ocr
def test_ocr_word_accuracy() -> None:
    world = get_preset("nano")
    detector = WorldDetector(DetectorConfig.for_world(world))
    rng = random.Random(15)
    words = rng.sample(words_for(world), 100)
    read = 0
    for text in words:
        image = render(Scene(words=(Word(text, 0.5, 0.5, world.text_height),)), world.canvas_px)
        read += [w.text for w in detector.detect(image).words] == [text]
    assert read / len(words) >= 0.98


@needs_ocr
def test_loading_the_ocr_keeps_subnormal_floats_flushed() -> None:
    """onnxruntime turns flush-to-zero off in the thread that creates its sessions; the reader turns it back
    on, so a training process that judges words keeps the speed the thinkgen command set it up for."""
    import torch

    def flushed() -> bool:
        return float(torch.tensor([1e-39]) * 1.0) == 0.0

    assert torch.set_flush_denormal(True) and flushed()
    try:
        WordReader().read([np.full((20, 40), 255, np.uint8)])
        assert flushed()
    finally:
        torch.set_flush_denormal(False)
    WordReader().read([np.full((20, 40), 255, np.uint8)])
    assert not flushed()  # a thread that did not flush is left as it was


def test_objects_only_detection_never_loads_ocr() -> None:
    world = get_preset("nano")
    scene = Scene(objects=(SceneObject("star", "black", 0.5, 0.5, 0.26),), words=(Word("cat", 0.5, 0.15, 0.2),))
    detector = WorldDetector(DetectorConfig.for_world(world, read_words=False))
    detection = detector.detect(render(scene, 64))
    assert [(o.shape, o.colour) for o in detection.objects] == [("star", "black")]  # the word is no object
    assert detector.reader is None and detection.words == ()


def test_detected_box_matches_scene_box() -> None:
    obj = SceneObject("triangle", "blue", 0.37, 0.61, 0.15)
    (found,) = WorldDetector(DetectorConfig(read_words=False)).detect(render(Scene(objects=(obj,)), 256)).objects
    assert np.allclose(found.box, obj.box(), atol=1.5 / 256)


def test_missing_ocr_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"thinkgen\[ocr\]"):
        WordReader().read([np.full((20, 40), 255, np.uint8)])


def test_detect_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="image must be"):
        WorldDetector().detect(np.zeros((8, 8)))


# ----------------------------------------------------------------------------- scorer

_SPEC = Spec(
    tag="planted",
    include=[
        Clause("circle", 1, "red"),
        Clause("square", 1, "blue", position=("right of", 0)),
        Clause("triangle", 2, "green"),
    ],
    exclude=[Clause("circle", 2, "red"), Clause("triangle", 3, "green")],
    texts=["cat"],
    exclude_texts=["dog"],
)
_CIRCLE = SceneObject("circle", "red", 0.1, 0.5, 0.16)
_SQUARE = SceneObject("square", "blue", 0.9, 0.5, 0.16)
_TRIANGLES = (SceneObject("triangle", "green", 0.1, 0.9, 0.16), SceneObject("triangle", "green", 0.3, 0.9, 0.16))
_GOOD = Scene(objects=(_CIRCLE, _SQUARE, *_TRIANGLES), words=(Word("cat", 0.5, 0.1, 0.12),))

_PLANTED = {
    "wrong count": replace(_GOOD, objects=(_CIRCLE, _SQUARE, _TRIANGLES[0])),
    "too many": replace(_GOOD, objects=(*_GOOD.objects, SceneObject("triangle", "green", 0.5, 0.9, 0.16))),
    "wrong colour": replace(_GOOD, objects=(replace(_CIRCLE, colour="orange"), _SQUARE, *_TRIANGLES)),
    "wrong position": replace(_GOOD, objects=(replace(_CIRCLE, x=0.9), replace(_SQUARE, x=0.1), *_TRIANGLES)),
    "extra object": replace(_GOOD, objects=(*_GOOD.objects, replace(_CIRCLE, y=0.3))),
    "missing word": replace(_GOOD, words=()),
    "wrong word": replace(_GOOD, words=(Word("car", 0.5, 0.1, 0.12),)),
    "forbidden word": replace(_GOOD, words=(*_GOOD.words, Word("dog", 0.7, 0.9, 0.12))),
}


@pytest.mark.parametrize("name", list(_PLANTED))
def test_planted_error_is_wrong_on_perfect_detection(name: str) -> None:
    result = score_spec(Detection.from_scene(_PLANTED[name]), _SPEC)
    assert not result.correct and 0.0 <= result.score < 1.0


def test_correct_scene_is_right_on_perfect_detection() -> None:
    result = score_spec(Detection.from_scene(_GOOD), _SPEC)
    assert result.correct and result.score == 1.0 and result.text.word_accuracy == 1.0


@needs_ocr
def test_planted_errors_on_rendered_images() -> None:
    detector = WorldDetector(DetectorConfig.for_world(get_preset("medium")))
    good = score_spec(render(_GOOD, 128), _SPEC, detector)
    assert good.correct and good.score == 1.0
    for name, scene in _PLANTED.items():
        result = score_spec(render(scene, 128), _SPEC, detector)
        assert not result.correct and result.score < 1.0, name


def test_objects_only_spec_scores_rendered_images_without_ocr() -> None:
    spec = replace(_SPEC, texts=[], exclude_texts=[])
    scene = replace(_GOOD, words=())
    detector = WorldDetector(DetectorConfig(read_words=False))
    assert score_spec(render(scene, 128), spec, detector).correct
    assert not score_spec(render(_PLANTED["wrong position"], 128), spec, detector).correct


def _objects(*items: tuple[str, str, float]) -> Detection:
    return Detection(tuple(DetectedObject(s, c, (x, 0.4, x + 0.2, 0.6), 1.0) for s, c, x in items))


def test_partial_credit() -> None:
    spec = Spec(tag="counting", include=[Clause("star", 4, "red")], exclude=[Clause("star", 5, "red")])
    three = score_spec(_objects(*[("star", "red", 0.1 * k) for k in range(3)]), spec)
    assert not three.correct and three.score == pytest.approx((3 / 4 + 1) / 2)
    six = score_spec(_objects(*[("star", "red", 0.1 * k) for k in range(6)]), spec)
    assert not six.correct and six.score == pytest.approx((1 + (1 - 2 / 5)) / 2)
    assert score_spec(_objects(*[("star", "red", 0.1 * k) for k in range(4)]), spec).score == 1.0


def test_position_needs_a_satisfied_anchor_and_any_pair_counts() -> None:
    spec = Spec(tag="position", include=[Clause("circle", 1, "red"), Clause("square", 1, "blue", ("left of", 0))])
    # Two red circles: the blue square is left of one of them, which is enough.
    detection = _objects(("circle", "red", 0.0), ("square", "blue", 0.4), ("circle", "red", 0.8))
    assert score_spec(detection, spec).correct
    no_anchor = score_spec(_objects(("square", "blue", 0.4)), spec)
    assert not no_anchor.correct and no_anchor.clauses[1].found == 0
    with pytest.raises(ValueError, match="position"):
        score_spec(detection, Spec(tag="x", include=[Clause("circle", 1, None, ("left of", 3))]))


def test_text_metrics_and_flow_grpo_reward() -> None:
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert ocr_reward("moon", "the MOON") == 1.0
    assert ocr_reward("moon", "loow") == 0.5
    assert ocr_reward("cat", "") == 0.0
    metrics = text_metrics(["cat", "dog"], ["cat", "dgo"])
    assert metrics.word_accuracy == 0.5
    assert metrics.ned == pytest.approx((1 + 1 / 3) / 2)
    assert metrics.ocr_reward == pytest.approx(1 - 2 / 6)


def test_score_to_dict_is_json_ready() -> None:
    import json

    json.dumps(score_spec(Detection.from_scene(_GOOD), _SPEC).to_dict())


# ----------------------------------------------------------------------------- degradations


def test_degrade_is_deterministic_and_keeps_size() -> None:
    image = render(_GOOD, 128)
    a, b, c = degrade(image, seed=1), degrade(image, seed=1), degrade(image, seed=2)
    assert a.size == image.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


# ----------------------------------------------------------------------------- command line


def test_judge_command(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from thinkgen.cli import main

    image_path = tmp_path / "scene.png"
    render(replace(_GOOD, words=()), 128).save(image_path)
    spec = replace(_SPEC, texts=[], exclude_texts=[])
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec.to_dict()))
    assert main(["world", "judge", str(image_path), "--spec", str(spec_path), "--preset", "medium"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["correct"] and len(out["clauses"]) == 5
    assert main(["world", "judge", str(image_path), "--spec", "{not json"]) == 2
    # A spec no image of the world can satisfy is refused before any detection, naming the numbers.
    crowd = json.dumps({"tag": "counting", "include": [{"class": "star", "count": 40}]})
    assert main(["world", "judge", str(image_path), "--spec", crowd, "--preset", "nano"]) == 2
    assert "ask for 40 objects; a canvas of the nano world holds at most 9" in capsys.readouterr().err
    assert main(["world", "judge", str(image_path), "--spec", crowd.replace("40", "300")]) == 2
    assert "ask for 300 objects" in capsys.readouterr().err


def test_world_sample_judge_scores_every_scenario(tmp_path):
    from thinkgen.cli import main

    assert main(["world", "sample", "--scenario", "all", "-n", "12", "--out", str(tmp_path), "--judge"]) == 0
    report = json.loads((tmp_path / "judge.json").read_text())
    assert set(report["accuracy"]) == {"composition", "text", "edit", "reasoning", "reasoning_edit", "reflection"}
    assert all(r["correct"] for r in report["samples"]) and len(report["samples"]) == 12
