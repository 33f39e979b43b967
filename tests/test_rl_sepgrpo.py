"""SepGRPO: one recipe runs stage 4 then stage 5 (or alternating rounds), each from the pipeline the
previous one exported; RL recipes validate rewards by name; ``thinkgen train`` runs them."""

from __future__ import annotations

import json

import pytest

from thinkgen.cli import main
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.rl.common import PromptSource
from thinkgen.rl.config import DiTGRPOConfig, MLLMGRPOConfig
from thinkgen.rl.sepgrpo import stage_configs
from thinkgen.train.config import RecipeError, load_recipe
from thinkgen.train.logs import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_STAGE = """
[{stage}.run]
max_steps = 1
log_every = 1
save_every = 1
use_tensorboard = false
[{stage}.model]
{pipeline}
[{stage}.prompts]
scenarios = {{ composition = 1.0, reflection = 1.0 }}
prompts_per_step = 2
[{stage}.rewards.composition]
world = 1.0
format = 0.1
[{stage}.rewards.reflection]
reflection = 1.0
[{stage}.sample]
image_size = 16
num_inference_steps = 2
[{stage}.eval]
every = 1
num_prompts = 2
num_inference_steps = 2
[{stage}.grpo]
num_generations = 2
micro_batch_size = 2
max_thinking_tokens = 3
max_instruction_tokens = 3
"""


def _recipe(tmp_path, num_rounds: int = 1):
    text = (f'trainer = "sepgrpo"\n[schedule]\noutput_dir = "{tmp_path / "sep"}"\nnum_rounds = {num_rounds}\n'
            + TINY_STAGE.format(stage="mllm_grpo", pipeline='pipeline = "tiny"')
            + TINY_STAGE.format(stage="dit_grpo", pipeline=""))
    path = tmp_path / "sepgrpo.toml"
    path.write_text(text)
    return path


def test_schedule_chains_the_stages(tmp_path):
    config = load_recipe(_recipe(tmp_path), ["schedule.num_rounds=2"])
    stages = stage_configs(config)
    assert [type(s) for s in stages] == [MLLMGRPOConfig, DiTGRPOConfig] * 2
    root = tmp_path / "sep"
    assert [s.run.output_dir for s in stages] == [
        str(root / "round0" / "stage4_mllm_grpo"), str(root / "round0" / "stage5_dit_grpo"),
        str(root / "round1" / "stage4_mllm_grpo"), str(root / "round1" / "stage5_dit_grpo"),
    ]
    assert stages[0].model.pipeline == "tiny"
    assert [s.model.pipeline for s in stages[1:]] == [f"{s.run.output_dir}/final" for s in stages[:-1]]


def test_recipe_errors_name_the_reward(tmp_path):
    recipe = _recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"mllm_grpo\.rewards\.composition: unknown reward 'wrold'; valid names"):
        load_recipe(recipe, ["mllm_grpo.rewards.composition.wrold=1.0"])
    with pytest.raises(RecipeError, match=r"dit_grpo\.grpo\.num_generations must be >= 2"):
        load_recipe(recipe, ["dit_grpo.grpo.num_generations=1"])
    with pytest.raises(RecipeError, match=r"no table for scenario\(s\) \['text'\]"):
        load_recipe(recipe, ["mllm_grpo.prompts.scenarios={ text = 1.0, composition = 1.0 }"])


def test_prompt_kinds_narrow_the_world_prompts_of_training_and_evaluation(tmp_path):
    recipe = _recipe(tmp_path)
    every = load_recipe(recipe).dit_grpo.prompts
    kinds = 'dit_grpo.prompts.kinds={ composition = ["color_attr", "position"] }'
    narrowed = load_recipe(recipe, [kinds]).dit_grpo.prompts

    def tags(prompts, split: str) -> set[str]:
        source = PromptSource(prompts, split=split)
        return {item.spec.tag for item in map(source.get, range(60)) if item.scenario == "composition"}

    assert len(tags(every, "train")) > 2
    assert tags(narrowed, "train") == tags(narrowed, "val") == {"color_attr", "position"}
    # The other scenarios of the mix are drawn as before.
    assert {PromptSource(narrowed).get(i).scenario for i in range(20)} == {"composition", "reflection"}
    with pytest.raises(RecipeError, match=r"kinds.composition must be a non-empty list of single_object, .*color_attr"):
        load_recipe(recipe, ['dit_grpo.prompts.kinds={ composition = ["colour_attr"] }'])
    with pytest.raises(RecipeError, match=r"kinds.text: 'text' is not one of the scenarios drawn"):
        load_recipe(recipe, ['dit_grpo.prompts.kinds={ text = ["text"] }'])


def test_thinkgen_train_runs_sepgrpo_end_to_end_and_resumes(tmp_path):
    recipe = _recipe(tmp_path)
    assert main(["train", "--recipe", str(recipe), "--validate"]) == 0
    assert main(["train", "--recipe", str(recipe)]) == 0
    stage4, stage5 = tmp_path / "sep" / "round0" / "stage4_mllm_grpo", tmp_path / "sep" / "round0" / "stage5_dit_grpo"
    for stage in (stage4, stage5):
        logged = read_metrics(stage)
        assert [r["step"] for r in logged] == [0, 1]  # the start's held-out reward, then the step's
        assert "eval_reward" in logged[0]
        assert {"reward/composition", "reward/reflection", "eval_reward", "kl"} <= set(logged[1])
    assert json.loads((stage5 / "config.json").read_text())["model"]["pipeline"] == str(stage4 / "final")
    assert (stage4 / "curves.png").is_file() and (stage5 / "curves.png").is_file()  # reward / KL curves
    pipeline = ThinkGenPipeline.from_pretrained(stage5 / "final")
    assert pipeline("one red circle", height=16, width=16, num_inference_steps=1, seed=0).images[0].size == (16, 16)
    # Finished stages are skipped: running the recipe again changes nothing.
    before = (stage5 / "metrics.jsonl").read_text()
    assert main(["train", "--recipe", str(recipe)]) == 0
    assert (stage5 / "metrics.jsonl").read_text() == before
