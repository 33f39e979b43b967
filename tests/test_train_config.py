"""Recipes: every shipped recipe loads and names every setting; bad recipes fail early, naming file and key."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

import pytest

from thinkgen.cli import main
from thinkgen.train.config import TRAINERS, RecipeError, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*/*.toml"))
# Fields whose value is a free-form table of another class's arguments (DiT / tiny-MLLM constructors).
FREE_TABLES = {"dit", "tiny", "tiny_dit"}
# Keys a section may leave out because its kind does not use them.
KIND_FIELDS = {"jsonl": {"scenarios", "kinds", "preset", "split"}, "world": {"path"}}


def _check_sections(path: Path, config: object, data: dict) -> None:
    """Every section of ``data`` names every field of its dataclass (free tables, e.g. [rewards], aside)."""
    assert set(data) - {"trainer"} == {f.name for f in dataclasses.fields(config)}
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if not dataclasses.is_dataclass(value):  # a free table ([rewards]) is checked by its config
            continue
        named = set(data[section.name])
        expected = {f.name for f in dataclasses.fields(value)}
        unused = KIND_FIELDS.get(data[section.name].get("kind"), set()) if section.name == "prompts" else set()
        # A recipe may leave out a free-form constructor table it does not use (dit when loading a DiT).
        missing = expected - named - unused
        assert missing <= FREE_TABLES, f"{path.name} [{section.name}] does not name {missing}"
        if all(dataclasses.is_dataclass(getattr(value, f.name)) for f in dataclasses.fields(value)):
            _check_sections(path, value, data[section.name])  # a stage nested in a schedule (sepgrpo)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_load_and_name_every_setting(path):
    config = load_recipe(path)
    data = tomllib.loads(path.read_text())
    _check_sections(path, config, data)
    for source in data.get("data", {}).get("sources", []):
        # A source names what applies to its kind: the file of a JSONL source, the stream of a world one.
        kind_fields = {"path"} if source["kind"] == "jsonl" else {"scenarios", "kinds", "preset", "split", "seed"}
        assert set(source) == {"name", "kind", "weight"} | kind_fields


def test_recipes_cover_every_stage_and_scale():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPES}
    assert {"nano/stage1_connector", "nano/stage2_dit", "nano/stage3_finetune", "nano/mllm", "nano/codec",
            "full/stage1", "full/stage2", "full/stage3"} <= names
    assert {f"{scale}/{stage}" for scale in ("nano", "full")
            for stage in ("stage4_mllm_grpo", "stage5_dit_grpo", "sepgrpo")} <= names
    stages = [load_recipe(p).train.stage for p in RECIPES if tomllib.loads(p.read_text())["trainer"] == "sft"]
    assert set(stages) == {"connector", "dit", "finetune"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.foo=1", "unknown key data.foo"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("run.max_steps=true", "run.max_steps must be int"),
        ("train.stage='stage9'", "train.stage = 'stage9' is not allowed"),
        ("data.micro_batch_size=3", "data.global_batch_size (4) must be a multiple of micro_batch_size (3)"),
        ("data.sources.0.scenarios=['nope']", "data.sources[0].scenarios: unknown scenario 'nope'"),
        ("train.lora_rank=4", "lora_rank must be 0 for stage 'connector'"),
        ("flow.prompt_dropout=1.5", "flow.prompt_dropout must be in [0, 1)"),
        ("run.max_minutes=-1", "run.max_minutes must be >= 0"),
        ("model.depth_multiplier=0", "model.depth_multiplier must be >= 1"),
        ("model.depth_multiplier=2", "depth_multiplier deepens a trained DiT: set transformer"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, override, message):
    from train_recipes import sft_recipe

    path = sft_recipe(tmp_path, extra='stage = "connector"')
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [override])
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_overrides_apply_and_unknown_trainer_fails(tmp_path):
    from train_recipes import sft_recipe

    path = sft_recipe(tmp_path)
    config = load_recipe(path, ["optim.lr=3e-4", "run.output_dir=/tmp/elsewhere", "data.sources.0.weight=2"])
    assert config.optim.lr == 3e-4 and config.run.output_dir == "/tmp/elsewhere"
    assert config.data.sources[0].weight == 2.0
    with pytest.raises(RecipeError, match="trainer = 'gan' is not allowed"):
        load_recipe(path, ["trainer=gan"])
    assert set(TRAINERS) == {"sft", "mllm_sft", "codec"}


def test_train_needs_no_serve_extra(tmp_path, capsys, monkeypatch):
    """A training machine without pydantic / fastapi trains; only ``serve`` asks for the extra."""
    from train_recipes import sft_recipe

    monkeypatch.setitem(sys.modules, "thinkgen.serve.settings", None)  # as if pydantic were missing
    assert main(["train", "--recipe", str(sft_recipe(tmp_path)), "--validate"]) == 0
    assert main(["serve"]) == 2
    assert "pip install 'thinkgen[serve]'" in capsys.readouterr().err


def test_cli_reports_recipe_errors_without_traceback(tmp_path, capsys):
    from train_recipes import sft_recipe

    path = sft_recipe(tmp_path)
    assert main(["train", "--recipe", str(path), "--set", "optim.warmup_steps=-2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.warmup_steps must be >= 0" in err and "Traceback" not in err
    assert main(["train", "--recipe", str(path), "--validate"]) == 0
    assert not (tmp_path / "run").exists()  # validation computes nothing


def test_rl_recipes_refuse_a_time_budget():
    """RL stages stop at max_steps (their best export and evaluation schedule depend on it)."""
    with pytest.raises(RecipeError, match="run.max_minutes is for the supervised trainers"):
        load_recipe(Path("recipes/nano/stage5_dit_grpo.toml"), ["run.max_minutes=5"])


def _short_path_commands() -> list[list[str]]:
    """The ``timed NAME COMMAND...`` lines of recipes/nano/short_path.sh, split as the shell splits them."""
    import shlex

    script = (Path(__file__).parents[1] / "recipes" / "nano" / "short_path.sh").read_text()
    lines = script.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("timed ")]


def test_short_path_script_chains_valid_recipes(tmp_path):
    """Every stage of recipes/nano/short_path.sh loads with the script's overrides, writes where the script's
    later stages read, and starts from what an earlier stage wrote."""
    recipes = Path(__file__).parents[1] / "recipes" / "nano"
    commands = _short_path_commands()
    assert [c[0] for c in commands] == ["codec", "mllm", "stage2_marks", "reflection_grpo", "composition_dit_grpo"]
    written: set[str] = set()
    for name, *command in commands:
        recipe = command[command.index("--recipe") + 1].replace("$recipes", str(recipes))
        overrides = [
            command[i + 1].replace("$out", str(tmp_path)).replace("$((seed+1))", "8").replace("$((seed+2))", "9")
            .replace("$seed", "7")
            for i, a in enumerate(command)
            if a == "--set"
        ]
        config = load_recipe(recipe, overrides)
        assert config.run.output_dir == str(tmp_path / name)
        # The script's SEED (7 here) reseeds the stage and the samples it trains on.
        assert config.run.seed == 7
        if hasattr(config, "prompts"):
            assert config.prompts.seed == {"reflection_grpo": 8, "composition_dit_grpo": 9}[name]
        else:
            sources = [config.data] if name == "codec" else config.data.sources
            assert [s.seed for s in sources] == [7] * len(sources)
        model = config.model
        reads = [getattr(model, f) for f in ("mllm", "codec", "pipeline") if hasattr(model, f)]
        for path in reads:
            assert any(path.startswith(w) for w in written), f"{name} reads {path}, which no earlier stage writes"
        written.add(config.run.output_dir + "/final")
