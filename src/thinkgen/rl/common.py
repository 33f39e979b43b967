"""What both GRPO stages share: the pipeline, prompts, per-scenario rewards, group advantages, evaluation
and the export of the best-evaluated pipeline.

Each piece is a plain function or a small class used from the loops in :mod:`.mllm_grpo` and
:mod:`.dit_grpo`, which stay the place to read what happens in which order.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from transformers import PreTrainedModel

from thinkgen.imageio import load_image
from thinkgen.models.mllm import ThinkingConfig
from thinkgen.pipeline import TORCH_DTYPES, ThinkGenPipeline
from thinkgen.rewards.models import build_reward_models
from thinkgen.rewards.registry import WeightedReward, build_rewards, combine_rewards
from thinkgen.rl.config import DEFAULT_REWARD_KEY, PromptConfig, RLEvalConfig, RLModelConfig, RolloutSampleConfig
from thinkgen.train.checkpoint import fsync_tree
from thinkgen.train.distributed import build_accelerator
from thinkgen.world.detect import DetectorConfig, WorldDetector
from thinkgen.world.scenarios import generate, pick_kind, pick_scenario
from thinkgen.world.scene import Spec, get_preset

logger = logging.getLogger(__name__)

# A DiT for `pipeline = "tiny"` when the recipe gives no [model].tiny_dit: 32x32 pixels, patch 4.
TINY_DIT_DEFAULTS: dict[str, Any] = {
    "patch_size": 4, "hidden_size": 48, "num_layers": 1, "num_refiner_layers": 1, "num_attention_heads": 2,
    "num_kv_heads": 1, "multiple_of": 16, "axes_dim_rope": [8, 8, 8], "num_prepad_states": 4,
}


# ---- compute and models -------------------------------------------------------------------------


def rl_accelerator(mixed_precision: str, no_split_modules: list[str]) -> Accelerator:
    """One accelerator per RL run: DDP (or one process), mixed precision, no implicit gradient accumulation
    (the loops accumulate over rollouts themselves and step the optimizer explicitly)."""
    processes = PartialState(cpu=not torch.cuda.is_available()).num_processes
    return build_accelerator("auto", mixed_precision, processes, 1, no_split_modules, find_unused_parameters=True)


def load_pipeline(model: RLModelConfig, seed: int) -> ThinkGenPipeline:
    """The pipeline RL starts from: a folder, or ``tiny`` (a tiny random MLLM + DiT over pixels, seeded)."""
    dtype = TORCH_DTYPES[model.dtype]
    if model.pipeline != "tiny":
        return ThinkGenPipeline.from_pretrained(model.pipeline, torch_dtype=dtype)
    from thinkgen.models.dit import ThinkGenTransformer2DModel
    from thinkgen.models.tiny import build_tiny_mllm
    from thinkgen.models.vae import PixelCodec
    from thinkgen.pipeline import PipelineConfig

    mllm = build_tiny_mllm(seed=seed)
    kwargs = {**TINY_DIT_DEFAULTS, **model.tiny_dit, "text_feat_dim": mllm.hidden_size, "in_channels": 3}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = ThinkGenTransformer2DModel(**kwargs)
    if dtype != torch.float32:
        mllm.model.to(dtype)
        dit.to(dtype)
    return ThinkGenPipeline(mllm, dit.eval(), PixelCodec(), PipelineConfig(height=32, width=32))


def add_lora(model: torch.nn.Module, rank: int, alpha: float, target_modules: list[str]) -> torch.nn.Module:
    """Wrap ``model`` in a peft LoRA model (no dropout: rollout and update must score tokens alike).

    The adapters are injected into ``model`` itself, so the original object runs with them (generation,
    the pipeline); the returned peft model is what trains and what ``disable_adapter()`` turns back into
    the reference policy.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules))
    return get_peft_model(model, config)


def merged_module(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The trained module with LoRA adapters folded in (or as it is without LoRA), unwrapped, for export."""
    unwrapped = accelerator.unwrap_model(model)
    return unwrapped.merge_and_unload() if hasattr(unwrapped, "merge_and_unload") else unwrapped


@torch.no_grad()
def merged_cpu_copy(peft_model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of the module under ``peft_model`` with its LoRA adapters folded in, for export.

    The copy is built on the meta device and given CPU tensors, each LoRA layer merged on its own device one
    at a time, so the trained model, its adapters and its device memory stay as they are (a ``deepcopy``
    before ``merge_and_unload`` would hold a second full model on the accelerator: 16 GB for the 8B MLLM).
    The weights equal those of ``copy.deepcopy(peft_model).merge_and_unload()``.
    """
    from peft.tuners.lora import LoraLayer  # peft is only needed by LoRA runs

    base = peft_model.get_base_model()
    state = {
        key.replace(".base_layer.", "."): value.to("cpu", copy=True)
        for key, value in base.state_dict().items()
        if ".lora_" not in key
    }
    for name, layer in base.named_modules():
        if isinstance(layer, LoraLayer):
            weight = layer.get_base_layer().weight
            merged = weight.clone()
            for adapter in layer.active_adapters:
                merged += layer.get_delta_weight(adapter)  # as peft's merge: added in place, in the base dtype
            state[f"{name}.weight"] = merged.to("cpu")
    with torch.device("meta"):
        if isinstance(base, PreTrainedModel):
            clone = type(base)._from_config(base.config, dtype=next(base.parameters()).dtype)
        else:
            clone = type(base).from_config(base.config)
    clone.load_state_dict(state, strict=True, assign=True)
    # Buffers outside the state dict (rotary frequencies) were built on the meta device: take the live ones.
    for key, buffer in base.named_buffers():
        key = key.replace(".base_layer.", ".")
        if key not in state:
            owner, _, attr = key.rpartition(".")
            clone.get_submodule(owner).register_buffer(attr, buffer.to("cpu", copy=True), persistent=False)
    return clone.eval()


def nonempty_states(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Instruction states ``(B, L, 2·D)`` and mask ``(B, L)`` with ``L ≥ 1``: when every instruction of a
    batch is empty, one masked position keeps the DiT's shapes valid (it then reads its prepadding only)."""
    if states.shape[1] > 0:
        return states, mask
    return states.new_zeros(states.shape[0], 1, states.shape[2]), mask.new_zeros(mask.shape[0], 1)


# ---- prompts ------------------------------------------------------------------------------------


@dataclass
class PromptItem:
    """One RL prompt and what its rewards need.

    Attributes:
        prompt: The user prompt.
        images: Input images (edits, reflection); empty for text-to-image.
        scenario: Which reward table scores it.
        spec: What a correct image shows (rule rewards); ``None`` where unknown.
        columns: Further per-item values handed to the rewards as keyword arguments.
    """

    prompt: str
    images: list[Any]
    scenario: str
    spec: Spec | None
    columns: dict[str, Any] = field(default_factory=dict)


class PromptSource:
    """Deterministic prompt stream: item ``index`` is always the same prompt (resume-safe).

    ``world``: the scenario of each index is drawn from the mix with :func:`~thinkgen.world.scenarios.pick_scenario`
    and the sample comes from :func:`~thinkgen.world.scenarios.generate`. ``jsonl``: the records, reshuffled
    every pass by ``seed`` and the pass number.
    """

    def __init__(self, config: PromptConfig, split: str | None = None) -> None:
        self.config = config
        self.split = split or config.split
        self.records: list[dict[str, Any]] = []
        self.detector: WorldDetector | None = None
        if config.kind == "jsonl":
            path = Path(config.path)
            if not path.is_file():
                raise FileNotFoundError(f"prompts.path: no JSONL file at {path}")
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.records = [json.loads(line) for line in lines]
            if not self.records or any("instruction" not in r for r in self.records):
                raise ValueError(f"{path}: every record needs an 'instruction' (and there must be at least one)")
        else:
            self.world = get_preset(config.preset)
            # Thresholds for this world's object sizes: the tightest judge of its images.
            self.detector = WorldDetector(DetectorConfig.for_world(self.world))

    def get(self, index: int) -> PromptItem:
        """Prompt number ``index`` of the stream."""
        if self.config.kind == "world":
            mix = {name: float(weight) for name, weight in self.config.scenarios.items()}
            scenario = pick_scenario(mix, seed=self.config.seed, split=self.split, index=index)
            kind = pick_kind(self.config.kinds, scenario, seed=self.config.seed, split=self.split, index=index)
            sample = generate(scenario, index, config=self.world, seed=self.config.seed, split=self.split,
                              kind=kind)
            return PromptItem(sample.instruction, sample.input_images(), sample.scenario, sample.spec,
                              {"answer": sample.answer})
        num = len(self.records)
        order = list(range(num))
        random.Random(f"{self.config.seed}:{index // num}").shuffle(order)
        record = dict(self.records[order[index % num]])
        folder = Path(self.config.path).parent
        images = [load_image(folder / p) for p in record.pop("input_images", [])]
        spec = Spec.from_dict(record.pop("spec")) if record.get("spec") else None
        return PromptItem(record.pop("instruction"), images, str(record.pop("scenario", DEFAULT_REWARD_KEY)), spec,
                          record)


def process_slots(prompts_per_step: int, accelerator: Accelerator) -> list[int]:
    """The prompt slots of a step this process rolls out (slot ``k`` is stream item ``step · P + k``)."""
    processes = accelerator.num_processes
    if prompts_per_step % processes:
        raise ValueError(
            f"prompts.prompts_per_step ({prompts_per_step}) must be a multiple of the number of processes ({processes})"
        )
    return list(range(accelerator.process_index, prompts_per_step, processes))


# ---- rewards -------------------------------------------------------------------------------------


class ScenarioRewards:
    """The reward combination of each scenario (``[rewards.<scenario>]``, ``default`` for the rest).

    With ``num_workers`` > 0, :meth:`submit` scores in a thread pool: each scenario's items are split into
    up to ``num_workers`` batches scored concurrently, while the caller goes on (MLLM-GRPO scores the old
    log-probs meanwhile). Threads suit the rewards here: OCR and torch release the GIL, and judges over
    HTTP wait on the network. Rewards must then be safe to call from several threads at once.

    Args:
        tables: Scenario → ``{reward name or dotted path: weight}``.
        num_workers: Scoring threads; 0 scores in the caller's thread, inside :meth:`submit`.
        reward_models: ``[reward_models]``: name → table of a model-based reward the tables may name.
    """

    def __init__(
        self,
        tables: Mapping[str, Mapping[str, float]],
        num_workers: int = 0,
        reward_models: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        models = build_reward_models(reward_models or {})
        self.rewards: dict[str, list[WeightedReward]] = {s: build_rewards(t, models) for s, t in tables.items()}
        self.num_workers = num_workers
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="reward") if num_workers else None

    def terms(self, scenario: str) -> list[WeightedReward]:
        if scenario in self.rewards:
            return self.rewards[scenario]
        if DEFAULT_REWARD_KEY in self.rewards:
            return self.rewards[DEFAULT_REWARD_KEY]
        raise ValueError(f"no rewards for scenario {scenario!r}; configured: {', '.join(self.rewards)}")

    def submit(
        self, scenarios: Sequence[str], prompts: Sequence[str], images: Sequence[Any], **columns: Sequence[Any]
    ) -> PendingRewards:
        """Start scoring every item with its scenario's rewards (batched per scenario); ``result()`` waits.

        Args:
            scenarios, prompts, images: One per item.
            columns: Per-item sequences (``specs``, ``instructions`` …) or one shared value (a detector).
        """
        batches = []
        for scenario in dict.fromkeys(scenarios):
            rows = [i for i, s in enumerate(scenarios) if s == scenario]
            size = -(-len(rows) // max(self.num_workers, 1))
            for start in range(0, len(rows), size):
                batch = rows[start:start + size]
                sub = {k: [v[i] for i in batch] if _per_item(v, len(prompts)) else v for k, v in columns.items()}
                args = (self.terms(scenario), [prompts[i] for i in batch], [images[i] for i in batch])
                if self._pool is None:
                    done: Future = Future()
                    done.set_result(combine_rewards(*args, **sub))
                    batches.append((batch, done))
                else:
                    batches.append((batch, self._pool.submit(combine_rewards, *args, **sub)))
        return PendingRewards(batches, list(scenarios), list(prompts))

    def __call__(
        self, scenarios: Sequence[str], prompts: Sequence[str], images: Sequence[Any], **columns: Sequence[Any]
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        """Score every item and wait: :meth:`submit` then :meth:`PendingRewards.result`."""
        return self.submit(scenarios, prompts, images, **columns).result()

    def close(self) -> None:
        """Stop the scoring threads (after the last result)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@dataclass
class PendingRewards:
    """Rewards being scored: per batch of item indices, the future of its ``combine_rewards`` result."""

    batches: list[tuple[list[int], Future]]
    scenarios: list[str]
    prompts: list[str]

    @staticmethod
    def chain(parts: Sequence[PendingRewards]) -> PendingRewards:
        """The parts' items one after the other, as one submission."""
        batches, offset = [], 0
        for part in parts:
            batches += [([i + offset for i in rows], future) for rows, future in part.batches]
            offset += len(part.prompts)
        return PendingRewards(batches, [s for p in parts for s in p.scenarios], [q for p in parts for q in p.prompts])

    def result(self) -> tuple[list[float], dict[str, list[float | None]]]:
        """The combined reward per item, and each named reward's scores (``None`` where it did not apply or
        the item's scenario does not use it).

        Raises:
            ValueError: An item that none of its scenario's rewards applies to.
        """
        total: list[float | None] = [None] * len(self.prompts)
        named: dict[str, list[float | None]] = defaultdict(lambda: [None] * len(self.prompts))
        for rows, future in self.batches:
            scores, per_reward = future.result()
            for k, i in enumerate(rows):
                total[i] = scores[k]
                for name, values in per_reward.items():
                    named[name][i] = values[k]
        missing = [i for i, t in enumerate(total) if t is None]
        if missing:
            raise ValueError(
                f"no reward applies to item {missing[0]} (scenario {self.scenarios[missing[0]]!r}, prompt "
                f"{self.prompts[missing[0]]!r}); add one to [rewards.{self.scenarios[missing[0]]}]"
            )
        return [float(t) for t in total], dict(named)


def _per_item(value: Any, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length


def group_advantages(rewards: torch.Tensor, scale_rewards: bool, std_eps: float) -> torch.Tensor:
    """GRPO's group-relative advantages (DeepSeekMath Sec. 4.1.2).

    Args:
        rewards: ``(P, G)``: G rollouts of each of P prompts.
        scale_rewards: Divide by the group's std (GRPO, Flow-GRPO); ``False`` keeps ``r − mean`` (Dr. GRPO).
        std_eps: Added to the std (the population std, ``unbiased=False``) before dividing.

    Returns:
        ``(P, G)`` float32, zero-mean in every group (a group of equal rewards gets all zeros).
    """
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_rewards:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, unbiased=False) + std_eps)


def reward_metrics(
    scenarios: Sequence[str], rewards: Sequence[float], named: Mapping[str, Sequence[float | None]], prefix: str = ""
) -> dict[str, float]:
    """Mean reward overall, per scenario (``reward/<scenario>``) and per named reward (``rewards/<name>``),
    over the items of every process (the lists are gathered; with one process they are used as they are)."""
    local = [(s, r, {n: v[i] for n, v in named.items()}) for i, (s, r) in enumerate(zip(scenarios, rewards))]
    rows = gather_object(local)
    scenarios, rewards = [row[0] for row in rows], [row[1] for row in rows]
    named = {n: [row[2].get(n) for row in rows] for n in sorted({n for row in rows for n in row[2]})}
    out = {f"{prefix}reward": sum(rewards) / len(rewards)}
    by_scenario: dict[str, list[float]] = defaultdict(list)
    for scenario, reward in zip(scenarios, rewards):
        by_scenario[scenario].append(reward)
    out.update({f"{prefix}reward/{s}": sum(v) / len(v) for s, v in sorted(by_scenario.items())})
    for name, values in sorted(named.items()):
        present = [v for v in values if v is not None]
        if present:
            out[f"{prefix}rewards/{name}"] = sum(present) / len(present)
    return out


def reward_columns(items: Sequence[PromptItem], repeat: int, source: PromptSource) -> dict[str, Any]:
    """The reward columns of ``items``, each repeated ``repeat`` times (one row per rollout)."""
    rows = [item for item in items for _ in range(repeat)]
    keys = sorted({k for item in items for k in item.columns})
    columns: dict[str, Any] = {
        "specs": [item.spec for item in rows],
        "input_images": [item.images for item in rows],
        **{k: [item.columns.get(k) for item in rows] for k in keys},
    }
    if source.detector is not None:
        columns["detector"] = source.detector
    return columns


# ---- results and evaluation --------------------------------------------------------------------------


@dataclass
class GRPOResult:
    """What an RL stage's ``train`` returns: last step, per-step mean reward and loss, the groups of the
    last step, the logged metrics of each step, and the pipeline (trained model inside; main process)."""

    step: int
    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    last_groups: list[Any] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    pipeline: ThinkGenPipeline | None = None

    def record(self, step_metrics: dict[str, float], groups: list[Any]) -> None:
        """Keep one step's metrics (they must hold ``reward`` and ``loss``) and its groups."""
        self.rewards.append(step_metrics["reward"])
        self.losses.append(step_metrics["loss"])
        self.history.append(step_metrics)
        self.last_groups = groups


def greedy_thinking(max_thinking_tokens: int, max_instruction_tokens: int) -> ThinkingConfig:
    """Greedy thinking within the rollouts' budgets, never stopped by an unclosed thought: the frozen MLLM's
    conditioning in DiT-GRPO, and every evaluation."""
    return ThinkingConfig(temperature=0.0, max_thinking_tokens=max_thinking_tokens,
                          max_instruction_tokens=max_instruction_tokens, on_missing_think_end="all")


@torch.no_grad()
def evaluate(
    pipeline: ThinkGenPipeline,
    prompts: PromptConfig,
    eval_config: RLEvalConfig,
    sample: RolloutSampleConfig,
    rewards: ScenarioRewards,
    thinking: ThinkingConfig | None,
    seed: int,
) -> dict[str, float]:
    """Mean reward of the pipeline as it is now on the first ``eval.num_prompts`` prompts of ``eval.split``.

    Images are drawn with the ODE sampler and ``eval.num_inference_steps`` (more than rollouts use), from
    fixed noise, with ``thinking`` (make it greedy) or in no-think mode when ``None``, so successive
    evaluations are comparable. The format reward does not apply here (the pipeline returns no raw text).

    Returns:
        ``eval_reward``, ``eval_reward/<scenario>`` and ``eval_rewards/<name>``.
    """
    source = PromptSource(prompts, split=eval_config.split)
    items = [source.get(i) for i in range(eval_config.num_prompts)]
    images, instructions = [], []
    for k, item in enumerate(items):
        out = pipeline(
            item.prompt, images=item.images or None, think=thinking is not None, height=sample.image_size,
            width=sample.image_size, num_inference_steps=eval_config.num_inference_steps,
            guidance_scale=sample.guidance_scale, image_guidance_scale=sample.image_guidance_scale,
            negative_prompt=sample.negative_prompt, seed=seed + k, thinking=thinking,
        )
        images.append(out.images[0])
        instructions.append(out.instruction[0])
    scenarios = [item.scenario for item in items]
    totals, named = rewards(scenarios, [i.prompt for i in items], images, instructions=instructions,
                            **reward_columns(items, 1, source))
    return reward_metrics(scenarios, totals, named, prefix="eval_")


def evaluate_step(
    pipeline: ThinkGenPipeline,
    model: torch.nn.Module,
    step: int,
    prompts: PromptConfig,
    eval_config: RLEvalConfig,
    sample: RolloutSampleConfig,
    rewards: ScenarioRewards,
    thinking: ThinkingConfig | None,
    seed: int,
    best: BestPipeline | None,
) -> dict[str, float]:
    """:func:`evaluate` at ``step``, offered to ``best`` (``eval_best_reward`` added) when it is kept. Step 0
    is the starting pipeline: scored before the first update, it lets ``best/`` be the start itself when no
    RL step beats it."""
    scores = evaluate(pipeline, prompts, eval_config, sample, rewards, thinking, seed)
    if best is not None:
        best.offer(pipeline, model, step, scores["eval_reward"])
        scores["eval_best_reward"] = best.reward
    return scores


# ---- eval.keep_best ------------------------------------------------------------------------------------

BEST_DIR = "best"
BEST_RECORD = "best.json"


class BestPipeline:
    """``eval.keep_best``: the pipeline of the highest held-out reward so far, kept in ``{output_dir}/best``.

    An export holds the live weights of its step, exactly those the evaluation scored (DiT-GRPO's EMA is not
    applied, unlike ``final``); LoRA is merged into a copy of the trained module, never into the one that
    trains. ``best.json`` inside records ``{"step", "eval_reward"}`` and is where a resumed run reads its
    threshold back: runs are deterministic, so an evaluation repeated after a resume scores the same and,
    not beating itself, is not exported again.

    Args:
        output_dir: The run's folder.
        trained: Where the trained module sits in the pipeline: ``mllm`` (its model) or ``transformer``.
        accelerator: Only its main process writes.
    """

    def __init__(self, output_dir: Path, trained: Literal["mllm", "transformer"], accelerator: Accelerator) -> None:
        self.folder = output_dir / BEST_DIR
        self.trained = trained
        self.accelerator = accelerator
        if accelerator.is_main_process:
            _settle_swap(self.folder)
        accelerator.wait_for_everyone()
        record = self.folder / BEST_RECORD
        self.reward = json.loads(record.read_text())["eval_reward"] if record.is_file() else -math.inf

    def offer(self, pipeline: ThinkGenPipeline, model: torch.nn.Module, step: int, eval_reward: float) -> None:
        """Export the pipeline with the trained ``model`` (as wrapped for training) if ``eval_reward`` beats the
        best so far; every process calls it, so all keep the same threshold."""
        if not eval_reward > self.reward:  # strictly better only (a NaN never is)
            return
        self.reward = eval_reward
        if not self.accelerator.is_main_process:
            return
        unwrapped = self.accelerator.unwrap_model(model)
        # Saving leaves a module as it is; merging LoRA does not, hence the merged copy (built on the CPU).
        module = merged_cpu_copy(unwrapped) if hasattr(unwrapped, "merge_and_unload") else unwrapped
        exported = copy.copy(pipeline)
        if self.trained == "mllm":
            exported.mllm = copy.copy(pipeline.mllm)
            exported.mllm.model = module
        else:
            exported.transformer = module
        _swap_in(self.folder, exported, {"step": step, "eval_reward": eval_reward})
        logger.info("new best eval_reward %.4f at step %d: wrote %s", eval_reward, step, self.folder)


def _staging(folder: Path) -> tuple[Path, Path]:
    """The siblings of ``folder`` a swap goes through: the new export, and the old one on its way out."""
    return folder.with_name(f"{folder.name}.tmp"), folder.with_name(f"{folder.name}.old")


def _swap_in(folder: Path, pipeline: ThinkGenPipeline, record: dict[str, Any]) -> None:
    """Replace ``folder`` by ``pipeline`` and ``record`` (:data:`BEST_RECORD`, written last) with renames: at
    any crash point either ``folder`` is complete or :func:`_settle_swap` finds a complete one to restore."""
    new, old = _staging(folder)
    shutil.rmtree(new, ignore_errors=True)
    pipeline.save_pretrained(new)
    (new / BEST_RECORD).write_text(json.dumps(record) + "\n")
    fsync_tree(new)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _settle_swap(folder: Path) -> None:
    """Finish or undo a swap a crash interrupted: with ``folder`` gone, the new export if complete, else the old
    one; then drop the leftovers."""
    new, old = _staging(folder)
    if not folder.exists():
        if (new / BEST_RECORD).is_file():
            new.rename(folder)
        elif old.exists():
            old.rename(folder)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
