"""Training data: JSONL validation before compute, mixing ratios, size buckets, rank slices, exact resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from train_recipes import write_jsonl

from thinkgen.train.config import DataConfig, SourceConfig
from thinkgen.train.data import (
    BatchPlanner,
    JsonlSource,
    RankBatchSampler,
    SampleError,
    build_sources,
    fit_image,
    fitted_size,
    validate_jsonl,
)


def _planner(sources, weights, batch=4, bucket=lambda source, index: "all"):
    return BatchPlanner(sources, weights, seed=0, global_batch_size=batch, bucket_of=bucket)


def test_validation_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path, [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c"}])
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"instruction": "b", "output_image": "missing.png"})
    lines[2] = '{"instruction": "c", "output_image": '  # cut short
    lines.append(json.dumps({"output_image": "img0.png", "task_type": "video"}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as err:
        validate_jsonl(path)
    message = str(err.value)
    assert f"{path}:2: output_image: file not found" in message
    assert f"{path}:3: line: not valid JSON" in message
    assert f"{path}:4: instruction: missing" in message
    assert f"{path}:4: task_type: 'video' is not one of t2i, edit" in message
    assert "4 problem(s)" in message


def test_mixing_ratios_take_effect(tmp_path):
    a = write_jsonl(tmp_path / "a", [{"instruction": f"a{i}"} for i in range(5)])
    b = write_jsonl(tmp_path / "b", [{"instruction": f"b{i}"} for i in range(7)])
    config = DataConfig(sources=[SourceConfig(kind="jsonl", path=str(a), weight=3.0),
                                 SourceConfig(kind="jsonl", path=str(b), weight=1.0)], global_batch_size=4,
                        micro_batch_size=4)
    sources = build_sources(config, seed=0, required=("instruction", "output_image"))
    planner = _planner(sources, [s.weight for s in config.sources])
    picks = Counter(source_id for _ in range(250) for source_id, _ in planner.next_batch())
    assert abs(picks[0] / 1000 - 0.75) < 0.04, picks
    # Each source walks its records in a fresh permutation per epoch: every record once per epoch.
    first_epoch = [sources[1]._line(i) for i in range(7)]
    assert sorted(first_epoch) == list(range(7))


def test_world_and_jsonl_mix_loads_both(tmp_path):
    path = write_jsonl(tmp_path, [{"instruction": "blue", "answer": "a blue image"}])
    config = DataConfig(sources=[SourceConfig(scenarios=["edit"]), SourceConfig(kind="jsonl", path=str(path))])
    world, jsonl = build_sources(config, seed=0, required=("instruction", "output_image"))
    record = world.load(0)
    assert record.task_type == "edit" and len(record.input_images) == 1 and record.output_image.size == (64, 64)
    assert jsonl.load(3).answer == "a blue image"


def test_world_sources_can_be_narrowed_to_sub_kinds(tmp_path):
    narrowed = build_sources(DataConfig(sources=[SourceConfig(scenarios=["edit", "text"], kinds={"edit": ["move"]})]),
                             seed=0, required=())[0]
    kinds = Counter(narrowed._sample(i).meta["kind"] for i in range(40))
    assert kinds == {"move": 20, "text": 20}
    everything = build_sources(DataConfig(sources=[SourceConfig(scenarios=["edit"])]), seed=0, required=())[0]
    assert len({everything._sample(i).meta["kind"] for i in range(40)}) > 3
    with pytest.raises(ValueError, match=r"kinds.edit must be a non-empty list of recolour, .*move"):
        SourceConfig(scenarios=["edit"], kinds={"edit": ["shift"]})
    with pytest.raises(ValueError, match=r"kinds.reasoning: 'reasoning' is not one of the scenarios drawn"):
        SourceConfig(scenarios=["edit"], kinds={"reasoning": ["count"]})
    with pytest.raises(ValueError, match="kinds are for world sources"):
        SourceConfig(kind="jsonl", path=str(tmp_path / "a.jsonl"), kinds={"edit": ["move"]})


def test_buckets_hold_one_size_and_resume_exactly(tmp_path):
    sizes = [(64, 64), (96, 64)] * 6
    path = write_jsonl(tmp_path, [{"instruction": f"x{i}"} for i in range(12)], sizes)
    (source,) = build_sources(DataConfig(sources=[SourceConfig(kind="jsonl", path=str(path))]), 0,
                              ("instruction", "output_image"))

    def bucket(src, index):
        return "x".join(map(str, fitted_size(*src.image_size(index), 64 * 96, 32)))

    planner = _planner([source], [1.0], batch=3, bucket=bucket)
    batches = [planner.next_batch() for _ in range(3)]
    for batch in batches:
        assert len({bucket(source, index) for _, index in batch}) == 1
    state = json.loads(json.dumps(planner.state_dict()))  # as a checkpoint stores it
    expected = [planner.next_batch() for _ in range(4)]
    resumed = _planner([source], [1.0], batch=3, bucket=bucket)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(4)] == expected


def test_ranks_split_the_global_batch_like_one_process():
    class Endless:
        name = "endless"

    single = iter(RankBatchSampler(_planner([Endless()], [1.0], batch=8), 0, 1, 4))
    ranks = [iter(RankBatchSampler(_planner([Endless()], [1.0], batch=8), r, 2, 2)) for r in range(2)]
    for _ in range(3):
        one = next(single) + next(single)  # two micro-batches of 4
        many = [item for _ in range(2) for rank in ranks for item in next(rank)]
        assert sorted(one, key=lambda t: t[2]) == sorted(many, key=lambda t: t[2])
    with pytest.raises(ValueError, match="multiple of data.micro_batch_size"):
        RankBatchSampler(_planner([Endless()], [1.0], batch=6), 0, 4, 1)


def test_broken_images_are_sample_errors(tmp_path):
    path = write_jsonl(tmp_path, [{"instruction": "x"}])
    (tmp_path / "img0.png").write_bytes(b"not a png")
    source = JsonlSource(SourceConfig(kind="jsonl", path=str(path)), validate_jsonl(path), seed=0)
    with pytest.raises(SampleError, match="output_image"):
        source.load(0)
    with pytest.raises(SampleError, match="output_image"):
        source.image_size(0)


def test_fit_image_keeps_aspect_within_pixels():
    from PIL import Image

    image = fit_image(Image.new("RGB", (300, 100)), max_pixels=64 * 64, multiple=16)
    assert image.size == fitted_size(300, 100, 64 * 64, 16) == (96, 32)
    with pytest.raises(SampleError):
        fitted_size(10, 10, 4096, 16)
