"""The world's vocabulary, difficulty dial, layout and renderer."""

import random

import numpy as np
import pytest

from thinkgen.world.layout import compose, random_scene
from thinkgen.world.render import render
from thinkgen.world.scene import (
    COLOURS,
    PRESETS,
    BACKGROUND_RGB,
    Scene,
    SceneObject,
    Spec,
    Clause,
    WorldConfig,
    get_preset,
)

VOCAB = ["cat", "moon", "jazz", "ox", "lamp"]


def test_presets_are_valid_and_span_the_dial():
    assert {"nano", "medium", "full"} <= set(PRESETS)
    nano, full = get_preset("nano"), get_preset("full")
    assert nano.canvas_px < full.canvas_px
    assert set(nano.shapes) < set(full.shapes) and set(nano.colours) < set(full.colours)
    assert nano.layout == "grid" and full.layout == "free"
    assert len(full.colours) >= 8 and {"circle", "square", "triangle"} <= set(full.shapes)
    assert full.max_count >= 4


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"shapes": ("circle", "hexagon")}, "unknown shape 'hexagon'"),
        ({"colours": ("red", "teal")}, "unknown colour 'teal'"),
        ({"canvas_px": 8}, "canvas_px=8"),
        ({"grid": 3, "object_size": (0.3, 0.33)}, "does not fit a 3x3 grid"),
        ({"grid": 2, "object_size": (0.2, 0.3), "max_objects": 5, "max_count": 4}, "cannot fit"),
        ({"layout": "spiral"}, "unknown layout"),
        ({"word_length": (1, 9)}, "word_length"),
    ],
)
def test_impossible_configs_are_rejected_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        get_preset("nano").replace(**changes)


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="nano"):
        get_preset("huge")


def test_config_roundtrips_through_a_dict_and_rejects_unknown_keys():
    cfg = get_preset("full")
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="colour_count"):
        WorldConfig.from_dict({"colour_count": 3})


def test_render_is_deterministic_and_antialiased():
    scene = compose(get_preset("nano"), random.Random(3), [("circle", "red"), ("triangle", "blue")], ["cat"])
    a, b = np.asarray(render(scene, 64)), np.asarray(render(scene, 64))
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    palette = {tuple(c) for c in COLOURS.values()} | {BACKGROUND_RGB}
    colours = {tuple(p) for p in a.reshape(-1, 3)}
    # Edges blend shape and background: anti-aliasing leaves colours outside the palette.
    assert colours - palette
    assert tuple(COLOURS["red"]) in colours and tuple(COLOURS["blue"]) in colours


def test_every_shape_fills_its_box_differently():
    fills = {}
    for shape in PRESETS["full"].shapes:
        scene = Scene(objects=(SceneObject(shape, "black", 0.5, 0.5, 0.5),))
        dark = (np.asarray(render(scene, 128)).mean(-1) < 128).sum()
        fills[shape] = dark / (64 * 64)
    assert fills["square"] > 0.95
    assert abs(fills["circle"] - np.pi / 4) < 0.03
    assert abs(fills["triangle"] - 0.5) < 0.03
    assert len({round(v, 2) for v in fills.values()}) == len(fills)


@pytest.mark.parametrize("preset", ["nano", "medium", "full"])
def test_layout_never_overlaps(preset):
    cfg = get_preset(preset)
    rng = random.Random(0)
    for _ in range(50):
        scene = random_scene(cfg, rng, num_objects=cfg.max_objects, vocabulary=VOCAB)
        boxes = [o.box() for o in scene.objects]
        for o in scene.objects:
            x0, y0, x1, y1 = o.box()
            assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1
            assert o.shape in cfg.shapes and o.colour in cfg.colours
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_layout_is_deterministic_by_seed():
    cfg = get_preset("full")
    s1 = random_scene(cfg, random.Random(7), vocabulary=VOCAB)
    s2 = random_scene(cfg, random.Random(7), vocabulary=VOCAB)
    s3 = random_scene(cfg, random.Random(8), vocabulary=VOCAB)
    assert s1 == s2 and s1 != s3


def test_too_many_objects_for_the_canvas_is_an_error():
    cfg = get_preset("nano")
    with pytest.raises(ValueError, match="do not fit"):
        compose(cfg, random.Random(0), [("circle", "red")] * 10)


def test_scene_and_spec_roundtrip_through_json_dicts():
    scene = compose(get_preset("medium"), random.Random(1), [("star", "pink"), ("cross", "gray")], ["sun"])
    assert Scene.from_dict(scene.to_dict()) == scene
    spec = Spec(
        tag="position",
        include=[Clause("star", 1, "pink"), Clause("cross", 1, None, ("left of", 0))],
        exclude=[Clause("star", 2)],
        texts=["sun"],
    )
    assert Spec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["include"][1] == {"class": "cross", "count": 1, "position": ["left of", 0]}


@pytest.mark.parametrize(
    "clause, message",
    [
        ({"class": "hexagon"}, "unknown shape in include\\[0\\] 'hexagon'"),
        ({"class": "star", "color": "teal"}, "unknown colour in include\\[0\\] 'teal'"),
        ({"class": "star", "position": ["behind", 0]}, "unknown relation"),
        ({"class": "star", "position": ["left of", 3]}, "include\\[3\\], which does not exist"),
        ({"class": "star", "count": 0}, "count in include\\[0\\] must be >= 1"),
    ],
)
def test_specs_outside_the_world_vocabulary_are_named(clause, message):
    spec = Spec.from_dict({"tag": "t", "include": [clause]})
    with pytest.raises(ValueError, match=message):
        spec.check_vocabulary()
