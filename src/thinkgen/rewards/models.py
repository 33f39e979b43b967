"""Model-based rewards: image–text similarity from a local CLIP / SigLIP folder, and a VLM judge behind an
OpenAI-compatible endpoint.

They need settings (a model folder, a judge's address), so a recipe declares each one in a table and then
uses its name like a built-in reward::

    [reward_models.clip]
    kind = "image_text_similarity"
    path = "/models/clip-vit-large-patch14"

    [reward_models.judge]
    kind = "vlm_judge"
    url = "http://127.0.0.1:8000/v1"
    model = "qwen2.5-vl-72b"

    [rewards.composition]
    geneval = 1.0
    clip = 0.5
    judge = 0.5

:func:`build_reward_models` checks every table (kind, keys, types, that the folder exists, that the URL is
one) without loading anything; a model loads on the reward's first call and stays loaded for the process.
Both rewards are plain callables with the reward interface, so evaluation code calls them as RL does.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from thinkgen.rewards.registry import REWARDS, RewardFunc


class RewardModelError(RuntimeError):
    """A model-based reward could not score (its judge stayed down or kept answering garbage): raised, never
    turned into zeros, so RL does not train on scores nobody gave."""


# ---- image–text similarity ----------------------------------------------------------------------

# SigLIP was trained on texts padded to a fixed length and pools its last token, so its text embedding
# depends on the padding: always pad to the model's length, or a text's score would depend on its batch.
_PAD_TO_MAX_LENGTH = {"siglip", "siglip2"}


@dataclass(frozen=True)
class _LoadedModel:
    """A loaded dual encoder, its processor, and a lock for the tokenizer: a fast tokenizer's padding and
    truncation state is shared, so two threads tokenizing at once can fail ("Already borrowed")."""

    model: Any
    processor: Any
    tokenizer_lock: threading.Lock

    def cosines(self, texts: Sequence[str], images: Sequence[Any]) -> list[float]:
        """Cosine similarity of each image to its text (one batched forward per tower)."""
        import torch

        config = self.model.config
        padding = "max_length" if config.model_type in _PAD_TO_MAX_LENGTH else True
        with self.tokenizer_lock:
            text = self.processor(text=list(texts), padding=padding, truncation=True,
                                  max_length=config.text_config.max_position_embeddings, return_tensors="pt")
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        with torch.inference_mode():
            text_features = _pooled(self.model.get_text_features(**text.to(self.model.device)))
            image_features = _pooled(self.model.get_image_features(**pixels.to(self.model.device)))
        return torch.nn.functional.cosine_similarity(image_features.float(), text_features.float(), dim=-1).tolist()


def _pooled(features: Any) -> Any:
    """The projected embeddings: transformers 4 returns them as a tensor, 5 as a model output's
    ``pooler_output``."""
    import torch

    return features if isinstance(features, torch.Tensor) else features.pooler_output


_LOADED: dict[tuple[str, str], _LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def _loaded_model(path: str, device: str) -> _LoadedModel:
    """The model of ``path`` on ``device``, loaded once per process (under a lock: reward threads may ask
    for it at the same time)."""
    from thinkgen.eval import clip

    key = (str(Path(path).resolve()), device)
    with _LOADED_LOCK:
        if key not in _LOADED:
            model, processor = clip.load_image_text_model(key[0], device)
            _LOADED[key] = _LoadedModel(model, processor, threading.Lock())
        return _LOADED[key]


def _resolve_device(device: str) -> str:
    """``auto``: this process's GPU (``LOCAL_RANK``, as the launcher sets it: reward threads do not share
    the main thread's current CUDA device), else cpu."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"


@dataclass(frozen=True)
class ImageTextSimilarityReward:
    """``max(cos, 0)`` between the image's and the prompt's embeddings of a local dual encoder
    (``kind = "image_text_similarity"``).

    The scale is CLIPScore's without its 2.5 weight (Hessel et al. 2021), the number CVTG's CLIPScore
    reports, so an RL curve and the benchmark read alike; it stays in [0, 1] like the rule rewards it is
    averaged with (negative similarity only means unrelated). Typical CLIP values are 0.2–0.35; group
    advantages depend on differences within a group, not on the level.

    Attributes:
        path: The model folder (:func:`~thinkgen.eval.clip.load_image_text_model`: CLIP, SigLIP, SigLIP 2,
            or a preference model fine-tuned as one, e.g. PickScore, with its processor saved beside it).
        device: torch device; ``auto`` is this process's GPU, else cpu.
        batch_size: Pairs per forward.
    """

    path: str
    device: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        folder = Path(self.path)
        if not folder.is_dir():
            raise ValueError(f"path: no model folder at {self.path}")
        if not (folder / "config.json").is_file():
            raise ValueError(f"path: {self.path} has no config.json (not a transformers model folder)")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"device: {self.device!r} is not a torch device ({err})") from None
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def __call__(self, prompts: Sequence[str], images: Sequence[Any], **columns: Any) -> list[float | None]:
        """The score of each image against its prompt; ``None`` where there is no image."""
        loaded = _loaded_model(self.path, _resolve_device(self.device))
        scores: list[float | None] = [None] * len(prompts)
        rows = [i for i, image in enumerate(images) if image is not None]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            cosines = loaded.cosines([prompts[i] for i in batch], [images[i] for i in batch])
            for i, cosine in zip(batch, cosines):
                scores[i] = max(cosine, 0.0)
        return scores


# ---- VLM judge ------------------------------------------------------------------------------------

JUDGE_SCORE_MAX = 10
_SCORE_INSTRUCTIONS = (
    "Reply with one short sentence of reasoning, then a last line 'Score: N', where N is an integer from 0 "
    f"(unrelated) to {JUDGE_SCORE_MAX} (right in every detail)."
)
JUDGE_PROMPT = (
    "You judge how well an image generated from a prompt matches it.\n"
    "Prompt: {prompt}\n\n"
    "Check every object, count, colour, attribute, spatial relation and piece of text the prompt asks for. "
    + _SCORE_INSTRUCTIONS
)
"""What the judge is asked about a generated image (``{prompt}`` is the prompt)."""
EDIT_JUDGE_PROMPT = (
    "You judge an image edit. The first {count} image(s) are the input; the last image is the result of "
    "editing them by the instruction below.\n"
    "Instruction: {prompt}\n\n"
    "Check that the result carries out the instruction and keeps unchanged what the instruction does not "
    "mention. " + _SCORE_INSTRUCTIONS
)
"""What the judge is asked when the item has input images (edits, reflection): they are shown first."""


def parse_judge_score(text: str) -> float:
    """The judge's last ``Score: N`` divided by :data:`JUDGE_SCORE_MAX`.

    Raises:
        ValueError: no score, or one outside 0..10 (the client then asks again).
    """
    from thinkgen.eval.judge import parse_labelled_scores

    return parse_labelled_scores(text, ["Score"], 0, JUDGE_SCORE_MAX)["Score"] / JUDGE_SCORE_MAX


@dataclass(frozen=True)
class VLMJudgeReward:
    """A multimodal LLM's 0–10 rating of how well the image matches the prompt, divided by 10
    (``kind = "vlm_judge"``), asked through :class:`~thinkgen.eval.judge.JudgeClient` with its retries.

    The prompts are :data:`JUDGE_PROMPT` and, for items with input images, :data:`EDIT_JUDGE_PROMPT`. The
    API key comes from ``THINKGEN_JUDGE_API_KEY``, never from the recipe (the run writes its config out).

    Attributes:
        url: Base URL of the OpenAI-compatible API (``http://host:port/v1``).
        model: The model name the endpoint serves.
        timeout_s: Per request.
        max_retries: Tries after the first, for a failed request and for an answer without a score alike.
        retry_wait_s: Wait before the first retry; doubles after each.
        max_tokens: Answer budget.
    """

    url: str
    model: str
    timeout_s: float = 120.0
    max_retries: int = 3
    retry_wait_s: float = 1.0
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"url: {self.url!r} is not an http:// or https:// URL with a host (e.g. http://127.0.0.1:8000/v1)"
            )
        if not self.model:
            raise ValueError("model: must name the model the endpoint serves")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.retry_wait_s < 0:
            raise ValueError(f"retry_wait_s must be >= 0, got {self.retry_wait_s}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def __call__(self, prompts: Sequence[str], images: Sequence[Any], **columns: Any) -> list[float | None]:
        """The judge's score of each image; ``None`` where there is no image. ``input_images`` (one list per
        item), where given, are shown before the image.

        Raises:
            RewardModelError: the endpoint stayed unreachable or failing, or its answers stayed malformed;
                the message names the endpoint.
        """
        from thinkgen.eval.judge import JudgeAnswerError, JudgeClient, JudgeConfig, JudgeUnavailable

        config = JudgeConfig(self.url, self.model, timeout_s=self.timeout_s, max_retries=self.max_retries,
                             retry_wait_s=self.retry_wait_s, max_tokens=self.max_tokens)
        inputs = columns.get("input_images")
        scores: list[float | None] = []
        # One client per call: calls may come from several reward threads at once.
        with JudgeClient(config) as client:
            for i, (prompt, image) in enumerate(zip(prompts, images)):
                if image is None:
                    scores.append(None)
                    continue
                sources = list(inputs[i] or []) if inputs is not None else []
                text = (EDIT_JUDGE_PROMPT.format(count=len(sources), prompt=prompt) if sources
                        else JUDGE_PROMPT.format(prompt=prompt))
                try:
                    scores.append(client.ask(text, [*sources, image], parse_judge_score))
                except (JudgeUnavailable, JudgeAnswerError) as err:
                    raise RewardModelError(f"the VLM judge at {config.endpoint} (model {self.model!r}) could not "
                                           f"score prompt {prompt!r}: {err}") from err
        return scores


# ---- recipe tables --------------------------------------------------------------------------------

REWARD_MODEL_KINDS: dict[str, type] = {
    "image_text_similarity": ImageTextSimilarityReward,
    "vlm_judge": VLMJudgeReward,
}
"""``kind`` of a ``[reward_models.<name>]`` table → the reward class its other keys construct."""


def _from_table(cls: type, where: str, table: Mapping[str, Any]) -> RewardFunc:
    """``cls`` from a table's keys, each checked against the field's type; errors name ``where.key``."""
    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls)
    allowed = ["kind"] + [f.name for f in fields]
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    missing = [f.name for f in fields if f.name not in table and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}.{missing[0]} is missing")
    kwargs = {}
    for key, value in table.items():
        if key == "kind":
            continue
        hint = hints[key]
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, hint) or isinstance(value, bool):
            raise ValueError(f"{where}.{key} must be {hint.__name__}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None


def build_reward_models(tables: Mapping[str, Any]) -> dict[str, RewardFunc]:
    """The rewards declared by ``[reward_models.<name>]`` tables, by name; checked, nothing loaded.

    Raises:
        ValueError: A name a built-in reward has, a missing or unknown ``kind``, an unknown or mistyped key,
            a missing model folder, a malformed URL … The message starts with ``reward_models.<name>``.
    """
    kinds = ", ".join(REWARD_MODEL_KINDS)
    out: dict[str, RewardFunc] = {}
    for name, table in tables.items():
        where = f"reward_models.{name}"
        if name in REWARDS:
            raise ValueError(f"{where}: {name!r} is a built-in reward's name; choose another")
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table (kind = {kinds}, and its settings)")
        kind = table.get("kind")
        if kind not in REWARD_MODEL_KINDS:
            found = "is missing" if kind is None else f"= {kind!r} is not allowed"
            raise ValueError(f"{where}.kind {found}; allowed: {kinds}")
        out[name] = _from_table(REWARD_MODEL_KINDS[kind], where, table)
    return out
