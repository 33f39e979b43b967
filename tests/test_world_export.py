"""Writing the world to disk, the on-the-fly dataset and ``thinkgen world sample``."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from thinkgen.cli import main
from thinkgen.world.export import export_samples, load_samples
from thinkgen.world.scenarios import SCENARIOS, generate, iter_samples
from thinkgen.world.scene import PRESETS, WorldConfig
from thinkgen.world.sheet import contact_sheet

REQUIRED_KEYS = {"task_type", "instruction", "input_images", "output_image", "scenario", "reasoning", "answer", "spec"}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_export_writes_records_and_images(tmp_path):
    samples = list(iter_samples(SCENARIOS, stop=12))
    jsonl = export_samples(samples, tmp_path / "out")
    records = _read_jsonl(jsonl)
    assert len(records) == 12
    for record, sample in zip(records, samples):
        assert REQUIRED_KEYS <= set(record)
        assert record["task_type"] in ("t2i", "edit")
        assert record["spec"] == sample.spec.to_dict()
        assert len(record["input_images"]) == len(sample.inputs)
        for rel in [*record["input_images"], record["output_image"]]:
            assert not rel.startswith("/")
            with Image.open(jsonl.parent / rel) as image:
                assert image.format == "PNG" and image.size == (64, 64)
        with Image.open(jsonl.parent / record["output_image"]) as image:
            assert image.convert("RGB").tobytes() == sample.target_image().tobytes()
    assert {r["scenario"] for r in records} == set(SCENARIOS)
    assert [s.to_dict() for s in load_samples(jsonl)] == [s.to_dict() for s in samples]


def test_export_rejects_mixed_worlds(tmp_path):
    mixed = [generate("composition", 0), generate("composition", 0, config=PRESETS["medium"])]
    with pytest.raises(ValueError, match="one world"):
        export_samples(mixed, tmp_path)


def test_contact_sheet_shows_every_sample():
    samples = [generate("edit", i) for i in range(5)]
    sheet = contact_sheet(samples, columns=2, thumb_px=64)
    assert sheet.width == 2 * (2 * 64 + 24 + 16) and sheet.height > 3 * 64
    with pytest.raises(ValueError, match="at least one sample"):
        contact_sheet([])


def test_cli_sample_writes_everything(tmp_path):
    out = tmp_path / "world"
    assert main(["world", "sample", "--scenario", "all", "-n", "12", "--out", str(out), "--seed", "1"]) == 0
    records = _read_jsonl(out / "samples.jsonl")
    assert len(records) == 12 and {r["scenario"] for r in records} == set(SCENARIOS)
    assert all((out / r["output_image"]).is_file() for r in records)
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 500
    assert WorldConfig.from_dict(json.loads((out / "world.json").read_text())) == PRESETS["nano"]


def test_cli_sample_one_scenario_preset_and_split(tmp_path):
    out = tmp_path / "w"
    args = ["world", "sample", "--scenario", "reflection", "-n", "3", "--out", str(out), "--split", "test",
            "--preset", "medium"]
    assert main(args) == 0
    records = _read_jsonl(out / "samples.jsonl")
    assert {r["scenario"] for r in records} == {"reflection"} and {r["split"] for r in records} == {"test"}
    with Image.open(out / records[0]["output_image"]) as image:
        assert image.size == (128, 128)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scenario", "paint"], "unknown scenario 'paint'; allowed: composition, text, edit"),
        (["--preset", "huge"], "unknown world preset 'huge'"),
        (["--split", "dev"], "unknown split 'dev'"),
        (["-n", "0"], "must be >= 1"),
    ],
)
def test_cli_sample_bad_input_is_a_clear_error(tmp_path, capsys, extra, message):
    assert main(["world", "sample", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists(), "nothing is written for a bad request"


def test_dataset_generates_on_the_fly():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from thinkgen.world.dataset import WorldDataset, collate_world

    data = WorldDataset(6, scenarios=["composition", "edit"], output_type="pt", seed=2)
    item = data[1]
    assert item["scenario"] == "edit" and item["task_type"] == "edit"
    assert item["target_image"].shape == (3, 64, 64) and item["target_image"].dtype == torch.float32
    assert 0.0 <= float(item["target_image"].min()) and float(item["target_image"].max()) <= 1.0
    assert len(item["input_images"]) == 1
    assert torch.equal(data[1]["target_image"], item["target_image"])
    assert item["instruction"] == generate("edit", 1, seed=2).instruction
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_world)))
    assert batch["target_image"].shape == (4, 3, 64, 64) and len(batch["instruction"]) == 4
    weighted = WorldDataset(20, scenarios={"reasoning": 1.0, "text": 0.0})
    assert {weighted[i]["scenario"] for i in range(20)} == {"reasoning"}
    assert isinstance(weighted[0]["target_image"], Image.Image)
    with pytest.raises(IndexError):
        data[6]
    with pytest.raises(ValueError, match="output_type"):
        WorldDataset(4, output_type="np")
    with pytest.raises(ValueError, match="unknown scenario"):
        WorldDataset(4, scenarios=["paint"])
