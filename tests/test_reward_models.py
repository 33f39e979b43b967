"""Model-based rewards: image–text similarity from a local tiny CLIP / SigLIP equals the cosine computed
with the model here, a VLM judge against a stub endpoint (retries, clear failures), their recipe tables
([reward_models.<name>]) validated before any compute, and RL scoring with them."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from eval_support import StubJudge, save_tiny_clip
from PIL import Image

from thinkgen.eval import clip as clip_loader
from thinkgen.rewards import ImageTextSimilarityReward, RewardModelError, VLMJudgeReward
from thinkgen.rewards.models import EDIT_JUDGE_PROMPT, JUDGE_PROMPT
from thinkgen.rl.common import ScenarioRewards
from thinkgen.train.config import RecipeError, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).parents[1] / "recipes"
IMAGES = {c: Image.new("RGB", (40, 40), c) for c in ("red", "blue", "white", "black")}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def clip_reference(clip_dir: Path):
    """CLIPScore of one pair through CLIP's own forward, which returns normalised embeddings."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)

    def score(prompt: str, image: Image.Image) -> float:
        with torch.no_grad():
            out = model(**processor(text=[prompt], images=[image], return_tensors="pt"))
        return max(float(out.image_embeds[0] @ out.text_embeds[0]), 0.0)

    return score


# ----------------------------------------------------------------------------- image–text similarity


def test_similarity_is_clipscore_of_the_model(clip_dir):
    reference = clip_reference(clip_dir)
    # Prompts of different lengths share padded batches (batch_size 2 splits them); no image, no score.
    prompts = ["a red square", "blue", "a white disc on a black ground", "red", "anything"]
    images = [IMAGES["red"], IMAGES["blue"], IMAGES["white"], IMAGES["black"], None]
    scores = ImageTextSimilarityReward(str(clip_dir), device="cpu", batch_size=2)(prompts, images)
    expected = [reference(p, im) for p, im in zip(prompts[:4], images[:4])]
    assert scores[:4] == pytest.approx(expected, abs=1e-5)
    assert scores[4] is None
    assert any(s > 0 for s in expected)


def test_similarity_ranks_pairs_like_the_model(clip_dir):
    reference = clip_reference(clip_dir)
    prompt = "a red square"
    # The tiny random CLIP decides which image "matches"; the reward must rank them the same way.
    matching, other = sorted(IMAGES.values(), key=lambda im: reference(prompt, im), reverse=True)[:2]
    assert reference(prompt, matching) > reference(prompt, other) + 1e-3
    reward = ImageTextSimilarityReward(str(clip_dir), device="cpu")
    high, low = reward([prompt, prompt], [matching, other])
    assert high > low
    assert (high, low) == pytest.approx((reference(prompt, matching), reference(prompt, other)), abs=1e-5)


def test_model_loads_once_for_concurrent_reward_threads(clip_dir, tmp_path, monkeypatch):
    folder = shutil.copytree(clip_dir, tmp_path / "clip")  # a path no earlier test loaded
    loads = []
    real = clip_loader.load_image_text_model

    def counting(path, device=None):
        loads.append(threading.current_thread().name)
        return real(path, device)

    monkeypatch.setattr(clip_loader, "load_image_text_model", counting)
    reward = ImageTextSimilarityReward(str(folder), device="cpu")
    prompts, images = ["a red square", "blue", "red"], [IMAGES["red"], IMAGES["blue"], IMAGES["white"]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: reward(prompts, images), range(8)))
    assert len(loads) == 1
    assert all(r == results[0] for r in results)
    # Another reward of the same folder shares the loaded model.
    assert ImageTextSimilarityReward(str(folder), device="cpu", batch_size=1)(prompts, images) == pytest.approx(
        results[0], abs=1e-6)
    assert len(loads) == 1


def save_tiny_siglip(clip_dir: Path, folder: Path) -> Path:
    """A tiny random SigLIP (text length 16) with the tiny CLIP's byte tokenizer."""
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    tokenizer.model_max_length = 16
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                     "projection_size": 32, "pad_token_id": eos, "bos_token_id": bos, "eos_token_id": eos},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_siglip_texts_are_padded_to_the_model_length(clip_dir, tmp_path):
    """SigLIP pools its last token, so a text's score must not depend on the longest text of its batch."""
    from transformers import SiglipModel, SiglipProcessor

    folder = save_tiny_siglip(clip_dir, tmp_path / "siglip")
    model, processor = SiglipModel.from_pretrained(folder).eval(), SiglipProcessor.from_pretrained(folder)
    inputs = processor(text=["blue"], images=[IMAGES["blue"]], padding="max_length", max_length=16,
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    expected = max(float(out.image_embeds[0] @ out.text_embeds[0]), 0.0)
    reward = ImageTextSimilarityReward(str(folder), device="cpu")
    alone = reward(["blue"], [IMAGES["blue"]])[0]
    batched = reward(["blue", "a much longer prompt about a red disc"], [IMAGES["blue"], IMAGES["red"]])[0]
    assert alone == pytest.approx(expected, abs=1e-5)
    assert batched == pytest.approx(alone, abs=1e-5)


def test_loader_refuses_a_model_without_feature_methods(clip_dir, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    CLIPTextModel(CLIPTextConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "text_only")
    with pytest.raises(ValueError, match="CLIPTextModel, which has no get_image_features"):
        clip_loader.load_image_text_model(tmp_path / "text_only")
    with pytest.raises(FileNotFoundError, match="image-text model folder not found: .*nope"):
        clip_loader.load_image_text_model(tmp_path / "nope")


# ----------------------------------------------------------------------------- VLM judge

IMAGE = Image.new("RGB", (16, 16), "red")


def judge(url: str, retries: int = 2) -> VLMJudgeReward:
    return VLMJudgeReward(url, "stub-judge", timeout_s=5.0, max_retries=retries, retry_wait_s=0.0)


def test_judge_scores_prompts_and_edits():
    def respond(text: str, num_images: int) -> str:
        return "Everything is there.\n**Score:** 9" if "red" in text else "Wrong colour.\nScore: 2"

    with StubJudge(respond) as stub:
        scores = judge(stub.url)(["a red circle", "a blue square", "a red dot"], [IMAGE, IMAGE, None])
        assert scores == [0.9, 0.2, None]
        assert stub.requests == [(JUDGE_PROMPT.format(prompt="a red circle"), 1),
                                 (JUDGE_PROMPT.format(prompt="a blue square"), 1)]
        stub.requests.clear()
        # An item with input images shows them first and asks about the edit.
        edit = judge(stub.url)(["make it red", "a blue square"], [IMAGE, IMAGE], input_images=[[IMAGE], []])
        assert edit == [0.9, 0.2]
        assert stub.requests == [(EDIT_JUDGE_PROMPT.format(count=1, prompt="make it red"), 2),
                                 (JUDGE_PROMPT.format(prompt="a blue square"), 1)]


def test_judge_asks_again_after_a_malformed_answer():
    answers = iter(["I would say it is fine.", "Score: 11", "Score: 6"])
    with StubJudge(lambda text, n: next(answers)) as stub:
        assert judge(stub.url)(["a red circle"], [IMAGE]) == [0.6]
    assert len(stub.requests) == 3


def test_a_judge_that_keeps_failing_stops_scoring_with_its_endpoint():
    with StubJudge(lambda text, n: (503, "overloaded")) as stub:
        with pytest.raises(RewardModelError, match=re.escape(f"judge at {stub.url}/chat/completions") + ".*HTTP 503"):
            judge(stub.url)(["a red circle"], [IMAGE])
    assert len(stub.requests) == 3
    with StubJudge(lambda text, n: "no idea") as stub:
        with pytest.raises(RewardModelError, match=re.escape(stub.url) + ".*stayed malformed after 2 tries"):
            judge(stub.url, retries=1)(["a red circle"], [IMAGE])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RewardModelError, match=f"cannot reach the judge at http://127.0.0.1:{port}/v1"):
        judge(f"http://127.0.0.1:{port}/v1", retries=0)(["a red circle"], [IMAGE])


# ----------------------------------------------------------------------------- recipe tables


def mllm_recipe(tmp_path: Path, reward_models: str, rewards: str = "world = 1.0", text: str = "world = 1.0") -> Path:
    """A stage-4 recipe: ``rewards`` / ``text`` fill [rewards.composition] / [rewards.text]."""
    path = tmp_path / "rl.toml"
    path.write_text(f"""trainer = "mllm_grpo"
[run]
output_dir = "{tmp_path / 'run'}"
[prompts]
scenarios = {{ composition = 1.0, text = 1.0 }}
[rewards.composition]
{rewards}
[rewards.text]
{text}
{reward_models}
""")
    return path


@pytest.mark.parametrize(("table", "error"), [
    ('[reward_models.clip]\nkind = "hps"\npath = "."',
     r"reward_models\.clip\.kind = 'hps' is not allowed; allowed: image_text_similarity, vlm_judge"),
    ('[reward_models.clip]\npath = "."', r"reward_models\.clip\.kind is missing"),
    ('[reward_models.clip]\nkind = "image_text_similarity"', r"reward_models\.clip\.path is missing"),
    ('[reward_models.clip]\nkind = "image_text_similarity"\npath = "{missing}"',
     r"reward_models\.clip\.path: no model folder at .*no_such_model"),
    ('[reward_models.clip]\nkind = "image_text_similarity"\npath = "{clip}"\npth = 1',
     r"reward_models\.clip: unknown key 'pth'; allowed: kind, path, device, batch_size"),
    ('[reward_models.clip]\nkind = "image_text_similarity"\npath = "{clip}"\nbatch_size = "8"',
     r"reward_models\.clip\.batch_size must be int, got '8'"),
    ('[reward_models.judge]\nkind = "vlm_judge"\nurl = "localhost:8000/v1"\nmodel = "m"',
     r"reward_models\.judge\.url: 'localhost:8000/v1' is not an http:// or https:// URL"),
    ('[reward_models.judge]\nkind = "vlm_judge"\nurl = "http://127.0.0.1:8000/v1"\nmodel = "m"\ntimeout_s = 0',
     r"reward_models\.judge\.timeout_s must be > 0"),
    ('[reward_models.world]\nkind = "vlm_judge"\nurl = "http://127.0.0.1:8000/v1"\nmodel = "m"',
     r"reward_models\.world: 'world' is a built-in reward's name"),
])
def test_reward_model_tables_are_checked_when_the_recipe_loads(tmp_path, clip_dir, monkeypatch, table, error):
    loads = []
    monkeypatch.setattr(clip_loader, "load_image_text_model", lambda *a: loads.append(a))
    text = table.format(missing=tmp_path / "no_such_model", clip=clip_dir)
    with pytest.raises(RecipeError, match=r"rl\.toml: " + error):
        load_recipe(mllm_recipe(tmp_path, text))
    assert not loads


def test_rewards_name_declared_models_and_stages_report_their_table(tmp_path, clip_dir):
    declared = f'[reward_models.clip]\nkind = "image_text_similarity"\npath = "{clip_dir}"'
    with pytest.raises(RecipeError, match=r"rewards\.composition: unknown reward 'judge'; valid names: clip, "):
        load_recipe(mllm_recipe(tmp_path, declared, rewards="judge = 1.0"))
    config = load_recipe(mllm_recipe(tmp_path, declared, rewards="clip = 1.0"))
    assert config.reward_models == {"clip": {"kind": "image_text_similarity", "path": str(clip_dir)}}
    # SepGRPO nests each stage's tables; the error names the stage.
    sep = tmp_path / "sep.toml"
    for stage in ("mllm_grpo", "dit_grpo"):
        sep.write_text(f'trainer = "sepgrpo"\n[{stage}.reward_models.clip]\nkind = "image_text_similarity"\n'
                       f'path = "{tmp_path / "nope"}"\n')
        with pytest.raises(RecipeError, match=rf"{stage}\.reward_models\.clip\.path: no model folder"):
            load_recipe(sep)


@pytest.mark.parametrize("name", ["stage4_mllm_grpo", "stage5_dit_grpo"])
def test_the_full_recipes_commented_examples_validate(tmp_path, clip_dir, name):
    """Uncommented (with a real folder), the examples in the full recipes load and are used by name."""
    text = (RECIPES / "full" / f"{name}.toml").read_text()
    block = re.search(r"\[reward_models\]\n((?:#.*\n)+)", text)
    assert block and "[reward_models.clip]" in block.group(1) and "[reward_models.judge]" in block.group(1)
    examples = re.sub(r"(?m)^# ?", "", block.group(1)).replace("/models/clip-vit-large-patch14", str(clip_dir))
    text = text.replace(block.group(1), examples)
    text = text.replace("[rewards.composition]\n", "[rewards.composition]\nclip = 0.5\njudge = 0.5\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    config = load_recipe(path)
    assert set(config.reward_models) == {"clip", "judge"}
    assert {"clip", "judge"} <= set(config.rewards["composition"])


# ----------------------------------------------------------------------------- RL scoring


def test_rl_config_with_reward_models_scores_with_them(tmp_path, clip_dir):
    reference = clip_reference(clip_dir)
    models = (f'[reward_models.clip]\nkind = "image_text_similarity"\npath = "{clip_dir}"\ndevice = "cpu"\n'
              '[reward_models.judge]\nkind = "vlm_judge"\nurl = "{url}"\nmodel = "stub"\nretry_wait_s = 0.0\n')
    with StubJudge(lambda text, n: "Score: 8") as stub:
        config = load_recipe(mllm_recipe(tmp_path, models.replace("{url}", stub.url),
                                         rewards="clip = 1.0\njudge = 3.0", text="judge = 1.0"))
        rewards = ScenarioRewards(config.rewards, num_workers=2, reward_models=config.reward_models)
        prompts = ["a red square", "blue", "the word sale"]
        images = [IMAGES["red"], IMAGES["white"], IMAGES["black"]]
        totals, named = rewards(["composition", "composition", "text"], prompts, images, specs=[None] * 3)
        rewards.close()
    clips = [reference(p, im) for p, im in zip(prompts[:2], images[:2])]
    assert named["clip"][:2] == pytest.approx(clips, abs=1e-5) and named["clip"][2] is None
    assert named["judge"] == [0.8, 0.8, 0.8]
    assert totals == pytest.approx([(c + 3 * 0.8) / 4 for c in clips] + [0.8], abs=1e-5)
    assert len(stub.requests) == 3


@pytest.mark.parametrize("stage", ["mllm_grpo", "dit_grpo"])
def test_rl_stages_train_on_declared_reward_models(tmp_path, clip_dir, stage):
    import importlib

    import rl_support

    make_config = rl_support.mllm_config if stage == "mllm_grpo" else rl_support.dit_config
    with StubJudge(lambda text, n: "Score: 7") as stub:
        config = dataclasses.replace(
            make_config(tmp_path / "run", max_steps=1),
            rewards={"default": {"clip": 1.0, "judge": 1.0}},
            reward_models={"clip": {"kind": "image_text_similarity", "path": str(clip_dir), "device": "cpu"},
                           "judge": {"kind": "vlm_judge", "url": stub.url, "model": "stub", "retry_wait_s": 0.0}},
        )
        metrics = importlib.import_module(f"thinkgen.rl.{stage}").train(config).history[0]
    assert metrics["rewards/judge"] == pytest.approx(0.7)
    assert 0.0 <= metrics["rewards/clip"] <= 1.0
    assert len(stub.requests) == config.prompts.prompts_per_step * config.grpo.num_generations
