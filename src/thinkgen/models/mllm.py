"""The MLLM side of ThinkGen: chat templates, thinking generation and conditioning-state capture.

ThinkGen's MLLM (Qwen3-VL) reasons inside ``<think>…</think>``, then writes a short instruction; the DiT is
conditioned on ``cat([hidden_states[-2], hidden_states[-1]], -1)`` of the instruction tokens. Two modes:

- think: the assistant turn is prefilled with ``<think>\\n`` and generated; the conditioning states are
  captured by forward hooks during that same ``generate`` call (no second pass over the sequence);
- no-think (the pseudo-CoT training template ``[SYS]+[C]+<think></think>+[C]``): the assistant turn is
  ``<think>\\n</think>`` followed by the instruction repeated, encoded in one forward pass.

Span convention: the conditioning span is every token strictly after the first ``</think>`` up to and
*excluding* the end-of-turn token ``<|im_end|>``. This matches the released inference code, whose generate
path never computes a state for the final ``<|im_end|>`` and whose no-think path appends none.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from transformers.cache_utils import Cache
from transformers.generation.streamers import BaseStreamer

from thinkgen.models.capture import ConditioningCapture
from thinkgen.models.refine import (
    ON_MISSING_THINK_END,
    OnMissingThinkEnd,
    RefinedInstruction,
    first_true_index,
    vgi_refine,
)

# The system prompt of the released ThinkGen inference code; the released weights were tuned with it.
SYSTEM_PROMPT = (
    "You are a helpful, general-purpose AI assistant with the ability to generate images and understand images."
    "\n\nYour primary goal is to assist the user effectively. When generating/edit an image, provide a clear, "
    "one-sentence caption or edit instruction that accurately describes the requested image.\n"
)
# Processor outputs with one entry per token; the shared prefill crops and repeats them along with the ids.
_TOKEN_ALIGNED_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")
# The image bound of the released inference code for the MLLM's view of input images (512 x 512).
RELEASED_MAX_IMAGE_PIXELS = 512 * 512


@dataclass(frozen=True)
class ChatTokens:
    """The chat-control tokens of the Qwen chat format (strings; ids are looked up from the tokenizer)."""

    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"
    vision_start: str = "<|vision_start|>"
    image_pad: str = "<|image_pad|>"
    vision_end: str = "<|vision_end|>"
    think_start: str = "<think>"
    think_end: str = "</think>"

    def all(self) -> tuple[str, ...]:
        """Every control token, in declaration order."""
        return (
            self.im_start, self.im_end, self.vision_start, self.image_pad, self.vision_end,
            self.think_start, self.think_end,
        )


CHAT_TOKENS = ChatTokens()


def _check_no_control_tokens(name: str, text: str) -> None:
    """Reject user text holding chat-control tokens: they would be tokenized as specials and break the turn."""
    found = [token for token in CHAT_TOKENS.all() if token in text]
    if found:
        raise ValueError(f"{name} contains chat-control tokens {found}; remove them (got {text!r})")


def build_prompt(
    instruction: str,
    num_images: int = 0,
    think: bool = True,
    system_prompt: str | None = SYSTEM_PROMPT,
) -> str:
    """The chat text the MLLM reads (Qwen chat format).

    Think: ``[system] user(<vision>*n + instruction) <|im_start|>assistant\\n<think>\\n`` — generation goes on
    from there. No-think: the assistant turn is ``<think>\\n</think>`` followed by the instruction repeated,
    with no end-of-turn token (nothing after it can change the span's states).

    Args:
        instruction (`str`): the user's prompt or edit instruction.
        num_images (`int`, defaults to 0): number of input images; each becomes
            ``<|vision_start|><|image_pad|><|vision_end|>`` before the instruction.
        think (`bool`, defaults to True): think mode (generated) or no-think mode (one forward pass).
        system_prompt (`str`, *optional*, defaults to the released ThinkGen system prompt): None drops the
            system turn.

    Returns:
        `str`: the prompt text, before the processor expands each image placeholder.
    """
    _check_no_control_tokens("instruction", instruction)
    if system_prompt is not None:
        _check_no_control_tokens("system_prompt", system_prompt)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    t = CHAT_TOKENS
    system = f"{t.im_start}system\n{system_prompt}{t.im_end}\n" if system_prompt is not None else ""
    images = f"{t.vision_start}{t.image_pad}{t.vision_end}" * num_images
    user = f"{t.im_start}user\n{images}{instruction}{t.im_end}\n"
    assistant = f"{t.im_start}assistant\n{t.think_start}\n"
    if not think:
        assistant += f"{t.think_end}{instruction}"
    return system + user + assistant


def thought_text(reasoning: str, answer: str) -> str:
    """What the MLLM writes after the ``<think>\\n`` prefill, up to its end of turn: ``{reasoning}\\n</think>{answer}``
    (``</think>{answer}`` without reasoning). The MLLM is trained to write this and the DiT may be trained on
    its states (:meth:`ThinkGenMLLM.encode_thought`)."""
    _check_no_control_tokens("reasoning", reasoning)
    _check_no_control_tokens("answer", answer)
    thought = f"{reasoning.strip()}\n" if reasoning.strip() else ""
    return f"{thought}{CHAT_TOKENS.think_end}{answer.strip()}"


class Qwen3VLImageProcessor(Qwen3VLProcessor):
    """Qwen3-VL's processor without its video branch.

    ThinkGen feeds images only, and Qwen3-VL's video processor needs torchvision; this subclass loads and saves
    the image processor and the tokenizer of any Qwen3-VL processor folder and works without torchvision.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


@dataclass
class ThinkingConfig:
    """Controls of the MLLM's thinking generation.

    Attributes:
        temperature (`float`, defaults to 0.6): sampling temperature; 0 means greedy decoding.
        top_p (`float`, defaults to 0.95): nucleus sampling mass.
        top_k (`int`, defaults to 20): keep the k most likely tokens; 0 disables.
        seed (`int`, *optional*): seeds the sampler for this call only (the global RNG is left as it was);
            None uses the global RNG. The rows of a batch share one stream, so a row's sample depends on the
            batch it is in; greedy decoding (temperature 0) does not.
        max_thinking_tokens (`int`, defaults to 2048): tokens allowed inside the thought; when spent,
            ``</think>`` is forced and the model goes on to write its instruction.
        max_instruction_tokens (`int`, defaults to 256): tokens allowed after ``</think>``; when spent,
            ``<|im_end|>`` is forced.
        on_missing_think_end (`str`, defaults to `"error"`): a row that ends its turn without closing its
            thought: `"error"` raises ValueError, `"all"` conditions on all its generated tokens, `"empty"` on
            none. Rows are always flagged in ``is_thought_closed``.

    The sampling defaults are Qwen3's recommended thinking-mode settings.
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 20
    seed: int | None = None
    max_thinking_tokens: int = 2048
    max_instruction_tokens: int = 256
    on_missing_think_end: OnMissingThinkEnd = "error"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_thinking_tokens < 0:
            raise ValueError(f"max_thinking_tokens must be >= 0, got {self.max_thinking_tokens}")
        if self.max_instruction_tokens < 1:
            raise ValueError(f"max_instruction_tokens must be >= 1, got {self.max_instruction_tokens}")
        if self.on_missing_think_end not in ON_MISSING_THINK_END:
            raise ValueError(
                f"on_missing_think_end={self.on_missing_think_end!r}; expected one of {ON_MISSING_THINK_END}"
            )

    @property
    def max_new_tokens(self) -> int:
        """The longest a generation can run: thought, ``</think>``, instruction, ``<|im_end|>``."""
        return self.max_thinking_tokens + 1 + self.max_instruction_tokens + 1


class ThinkingBudgetProcessor(LogitsProcessor):
    """Forces ``</think>`` when the thinking budget is spent and the end of turn when the instruction's is.

    Budgets count generated tokens only (the prefilled ``<think>\\n`` is part of the prompt). It must run last
    among the logits processors, so that no warper can undo the forcing.

    Args:
        prompt_length (`int`): length of the (padded) prompt; generated tokens start there.
        think_end_token_id (`int`): id of ``</think>``.
        end_token_id (`int`): id of the end-of-turn token.
        max_thinking_tokens (`int`): tokens allowed before ``</think>``.
        max_instruction_tokens (`int`): tokens allowed after ``</think>``.
    """

    def __init__(
        self,
        prompt_length: int,
        think_end_token_id: int,
        end_token_id: int,
        max_thinking_tokens: int,
        max_instruction_tokens: int,
    ) -> None:
        self.prompt_length = prompt_length
        self.think_end_token_id = think_end_token_id
        self.end_token_id = end_token_id
        self.max_thinking_tokens = max_thinking_tokens
        self.max_instruction_tokens = max_instruction_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated_ids = input_ids[:, self.prompt_length :]  # (B, n)
        num_generated = generated_ids.shape[1]
        is_think_end = generated_ids == self.think_end_token_id
        is_closed = is_think_end.any(dim=1)
        first_close = first_true_index(is_think_end)
        force_close = ~is_closed & (num_generated >= self.max_thinking_tokens)
        force_end = is_closed & (num_generated - first_close - 1 >= self.max_instruction_tokens)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.think_end_token_id] = torch.where(force_close, 0.0, float("-inf"))
        forced[:, self.end_token_id] = torch.where(force_end, 0.0, float("-inf"))
        return torch.where((force_close | force_end)[:, None], forced, scores)


@dataclass
class MLLMOutput:
    """What the MLLM hands to the DiT and to the user.

    Attributes:
        instruction_states (`torch.Tensor` of shape `(B, L, 2*D)`): conditioning states of the instruction span
            (strictly after the first ``</think>``, excluding ``<|im_end|>``), right-padded with zeros.
        instruction_mask (`torch.Tensor` of shape `(B, L)`, bool): True on real tokens.
        instruction_ids (`torch.Tensor` of shape `(B, L)`): the span's token ids.
        is_thought_closed (`torch.Tensor` of shape `(B,)`, bool): False where a row ended its turn inside the
            thought (only possible with ``on_missing_think_end`` other than `"error"`).
        text (`list[str]`): per row, the generated text up to the end of turn, special tokens kept
            (empty in no-think mode).
        reasoning (`list[str]`): per row, the text inside the thought.
        instruction (`list[str]`): per row, the text after the first ``</think>``.
        generated_ids (`list[torch.Tensor]`): per row, the generated ids up to and including the end token.
        num_forward_calls (`int`): MLLM forward calls spent (prefill + one per decoding step).
    """

    instruction_states: torch.Tensor
    instruction_mask: torch.Tensor
    instruction_ids: torch.Tensor
    is_thought_closed: torch.Tensor
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    instruction: list[str] = field(default_factory=list)
    generated_ids: list[torch.Tensor] = field(default_factory=list)
    num_forward_calls: int = 0


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Fork the RNG of the CPU and of `device`, so a seeded call leaves the global state untouched."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


class ThinkGenMLLM:
    """Qwen3-VL with ThinkGen's templates, thinking controls and conditioning capture.

    Args:
        model (`Qwen3VLForConditionalGeneration`): the MLLM.
        processor (`Qwen3VLProcessor`): its processor (tokenizer + image processor).
        max_image_pixels (`int`, *optional*): upper bound on an input image's pixels as the MLLM sees it;
            None keeps the processor's setting (the released model used ``RELEASED_MAX_IMAGE_PIXELS``).
        system_prompt (`str`, *optional*, defaults to ``SYSTEM_PROMPT``): None drops the system turn.

    Example:
        ```python
        mllm = ThinkGenMLLM.from_pretrained("ckpt/mllm", processor_directory="ckpt/processor")
        out = mllm.encode_prompt("a red circle left of a blue square", think=True,
                                 thinking=ThinkingConfig(seed=0, max_thinking_tokens=256))
        out.instruction_states.shape  # (1, L, 2 * hidden_size)
        ```
    """

    def __init__(
        self,
        model: Qwen3VLForConditionalGeneration,
        processor: Qwen3VLProcessor,
        max_image_pixels: int | None = None,
        system_prompt: str | None = SYSTEM_PROMPT,
    ) -> None:
        if max_image_pixels is not None and max_image_pixels <= 0:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_image_pixels = max_image_pixels
        self.system_prompt = system_prompt
        # Which layers the instruction states hold, as the DiT's ``caption_layers`` says (the pipeline and the
        # trainers set it from the DiT): the released pair, or the embeddings in place of hidden_states[-2].
        self.caption_layers = "last_two"
        self.think_end_token_id = self._token_id(CHAT_TOKENS.think_end)
        self.end_token_id = self._token_id(CHAT_TOKENS.im_end)
        pad_token_id = self.tokenizer.pad_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else self.end_token_id
        # Turn and image markers never belong in an answer; a generated <|image_pad|> would also break any
        # later forward over the sequence with its images (placeholder count != image features).
        self.suppressed_token_ids = [
            self._token_id(token)
            for token in (CHAT_TOKENS.im_start, CHAT_TOKENS.vision_start, CHAT_TOKENS.image_pad,
                          CHAT_TOKENS.vision_end, CHAT_TOKENS.think_start)
        ]

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token!r} token; ThinkGen needs the Qwen chat tokens")
        return int(token_id)

    # ---- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        processor_directory: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> ThinkGenMLLM:
        """Load the MLLM from `directory` and its processor from `processor_directory` (default: the same).

        Extra keyword arguments go to :class:`ThinkGenMLLM` (``max_image_pixels``, ``system_prompt``).
        """
        if not any(Path(directory).glob("*.safetensors")):
            raise FileNotFoundError(
                f"no safetensors weights in {directory}; only safetensors are loaded (never pickles)"
            )
        model, info = Qwen3VLForConditionalGeneration.from_pretrained(
            directory, dtype=torch_dtype, output_loading_info=True, use_safetensors=True
        )
        # transformers initialises missing weights at random and only warns; a half-loaded MLLM is an error here.
        problems = {k: v for k, v in info.items() if k != "error_msgs" and v} | (
            {"error_msgs": info["error_msgs"]} if info.get("error_msgs") else {}
        )
        if problems:
            raise ValueError(f"MLLM weights in {directory} do not match its config: {problems}")
        if device is not None:
            model = model.to(device)
        processor = Qwen3VLImageProcessor.from_pretrained(processor_directory or directory)
        return cls(model.eval(), processor, **kwargs)

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        processor_directory: str | os.PathLike | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Save the MLLM to `directory` and its processor to `processor_directory` (default: the same);
        `dtype` stores the floating-point weights in that dtype (the model in memory is not changed)."""
        state = None
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.model.state_dict().items()}
        self.model.save_pretrained(directory, state_dict=state)
        self.processor.save_pretrained(processor_directory or directory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        """D, the language model's width; the conditioning states have width 2*D."""
        return int(self.model.config.text_config.hidden_size)

    # ---- inputs -----------------------------------------------------------------------------------------

    def _normalize(
        self, prompt: str | Sequence[str], images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None
    ) -> tuple[list[str], list[list[Image.Image]]]:
        """One prompt with a list of images, or a list of prompts with one list of images each."""
        if isinstance(prompt, str):
            if images is not None and any(not isinstance(image, Image.Image) for image in images):
                raise TypeError("for a single prompt, images must be a list of PIL images")
            return [prompt], [list(images or [])]
        prompts = list(prompt)
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if images is None:
            return prompts, [[] for _ in prompts]
        per_row = [list(row) for row in images]
        if len(per_row) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(per_row)} image lists; give one list per prompt")
        if any(not isinstance(image, Image.Image) for row in per_row for image in row):
            raise TypeError("images must be PIL images")
        return prompts, per_row

    def _processor_inputs(
        self, texts: list[str], images: list[list[Image.Image]], padding_side: str
    ) -> dict[str, torch.Tensor]:
        flat_images = [image.convert("RGB") for row in images for image in row]
        kwargs: dict[str, Any] = {}
        if flat_images and self.max_image_pixels is not None:
            min_pixels = self.processor.image_processor.size["shortest_edge"]
            kwargs["size"] = {
                "shortest_edge": min(min_pixels, self.max_image_pixels),
                "longest_edge": self.max_image_pixels,
            }
        inputs = self.processor(
            text=texts,
            images=flat_images or None,
            padding=True,
            padding_side=padding_side,
            return_tensors="pt",
            **kwargs,
        )
        return {key: value.to(self.device) for key, value in inputs.items()}

    # ---- generation ---------------------------------------------------------------------------------------

    def _generate(
        self,
        inputs: dict[str, torch.Tensor],
        thinking: ThinkingConfig,
        logits_processor: LogitsProcessorList | None,
        streamer: BaseStreamer | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Run ``generate`` with the thinking budget; returns the full sequences `(B, T_prompt + n)`.

        A ``cache`` holding all prompt tokens but the last (:meth:`_shared_prefill`) is continued from."""
        prompt_length = inputs["input_ids"].shape[1]
        budget = ThinkingBudgetProcessor(
            prompt_length,
            self.think_end_token_id,
            self.end_token_id,
            thinking.max_thinking_tokens,
            thinking.max_instruction_tokens,
        )
        do_sample = thinking.temperature > 0
        generation_config = GenerationConfig(
            max_new_tokens=thinking.max_new_tokens,
            do_sample=do_sample,
            temperature=thinking.temperature if do_sample else None,
            top_p=thinking.top_p if do_sample else None,
            top_k=thinking.top_k if do_sample else None,
            eos_token_id=self.end_token_id,
            pad_token_id=self.pad_token_id,
            suppress_tokens=self.suppressed_token_ids,
        )
        processors = LogitsProcessorList([*(logits_processor or []), budget])
        with _fork_rng(self.device):
            if thinking.seed is not None:
                torch.manual_seed(thinking.seed)
            extra = {} if cache is None else {"cache": cache}
            return self.model.generate(
                **inputs, generation_config=generation_config, logits_processor=processors, streamer=streamer, **extra
            )

    def _shared_prefill(
        self, inputs: dict[str, torch.Tensor], num_samples: int
    ) -> tuple[dict[str, torch.Tensor], Cache]:
        """One prefill per prompt for ``num_samples`` continuations of it (GRPO's group rollouts).

        The prompts without their last token go through ``generate`` for one token, which leaves the KV cache
        and M-RoPE offsets exactly as a full ``generate`` would have them; both are repeated per sample. The
        returned row-repeated token inputs and cache then continue in :meth:`_generate`, which feeds only
        the last prompt token, so each of the ``P·G`` rows samples as if it had run its own prefill.

        Returns:
            The token inputs of shape `(P·G, T)` (rows of one prompt adjacent) and the cache of `T − 1` tokens.
        """
        if "mm_token_type_ids" in inputs and bool(inputs["mm_token_type_ids"][:, -1].any()):
            raise ValueError("a prompt's last token is an image token; the think prompt must end in text")
        prefix = {key: value[:, :-1] if key in _TOKEN_ALIGNED_INPUTS else value for key, value in inputs.items()}
        one_token = GenerationConfig(
            max_new_tokens=1, do_sample=False, pad_token_id=self.pad_token_id, return_dict_in_generate=True
        )
        prefilled = self.model.generate(**prefix, generation_config=one_token)
        cache = prefilled.cache
        cache.batch_repeat_interleave(num_samples)
        # generate continues from a cache with the M-RoPE offsets its prefill stored, one row per row.
        self.model.model.rope_deltas = self.model.model.rope_deltas.repeat_interleave(num_samples, dim=0)
        repeated = {
            key: inputs[key].repeat_interleave(num_samples, dim=0) for key in _TOKEN_ALIGNED_INPUTS if key in inputs
        }
        return repeated, cache

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | Sequence[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
        think: bool = True,
        thinking: ThinkingConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        streamer: BaseStreamer | None = None,
        num_samples_per_prompt: int = 1,
    ) -> MLLMOutput:
        """Turn prompts (+ input images) into the DiT's instruction states.

        Args:
            prompt (`str` or `list[str]`): one prompt or a batch.
            images (*optional*): for one prompt, a list of PIL images; for a batch, one list per prompt.
            think (`bool`, defaults to True): reason and write an instruction (generation, left-padded batch)
                or encode the no-think template in one forward pass (right-padded batch).
            thinking (`ThinkingConfig`, *optional*): generation controls (think mode only).
            logits_processor (`LogitsProcessorList`, *optional*): extra processors, run before the budget.
            streamer (`BaseStreamer`, *optional*): receives tokens as they are generated (think mode, batch 1).
            num_samples_per_prompt (`int`, defaults to 1): think mode: sampled continuations of each prompt,
                which share one prefill (GRPO's group rollouts). The output has ``B·G`` rows, the rows of one
                prompt adjacent, each as if that prompt had been given ``G`` times.

        Returns:
            :class:`MLLMOutput`.
        """
        if num_samples_per_prompt < 1:
            raise ValueError(f"num_samples_per_prompt must be ≥ 1, got {num_samples_per_prompt}")
        if num_samples_per_prompt > 1 and not think:
            raise ValueError("num_samples_per_prompt > 1 needs think=True: the no-think encoding has nothing to sample")
        prompts, images_per_row = self._normalize(prompt, images)
        texts = [
            build_prompt(p, len(row), think=think, system_prompt=self.system_prompt)
            for p, row in zip(prompts, images_per_row)
        ]
        if think:
            return self._encode_think(
                texts, images_per_row, thinking or ThinkingConfig(), logits_processor, streamer, num_samples_per_prompt
            )
        return self._encode_one_pass(prompts, texts, images_per_row)

    def encode_thought(
        self,
        prompt: str | Sequence[str],
        reasoning: str | Sequence[str],
        answer: str | Sequence[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
    ) -> MLLMOutput:
        """The instruction states a think-mode call gives when the MLLM writes ``reasoning`` and ``answer``,
        computed in one teacher-forced forward pass instead of by generation.

        In think mode the DiT reads the answer's states in the context of the user's prompt and the thought;
        the no-think template puts the caption itself in the user turn. Training the DiT on these states
        (``data.think_context``) trains it on what it reads at think-mode inference.

        Args:
            prompt (`str` or `list[str]`): the user prompts.
            reasoning (`str` or `list[str]`): the thought of each prompt (may be empty).
            answer (`str` or `list[str]`): the instruction written after ``</think>``.
            images (*optional*): as for :meth:`encode_prompt`.

        Returns:
            :class:`MLLMOutput` with ``reasoning`` and ``instruction`` as given.
        """
        prompts, images_per_row = self._normalize(prompt, images)
        reasonings = [reasoning] if isinstance(reasoning, str) else list(reasoning)
        answers = [answer] if isinstance(answer, str) else list(answer)
        if not len(prompts) == len(reasonings) == len(answers):
            raise ValueError(
                f"got {len(prompts)} prompts, {len(reasonings)} reasonings and {len(answers)} answers; "
                "give one of each per row"
            )
        texts = [
            build_prompt(p, len(row), think=True, system_prompt=self.system_prompt) + thought_text(r, a)
            for p, row, r, a in zip(prompts, images_per_row, reasonings, answers)
        ]
        out = self._encode_one_pass([a.strip() for a in answers], texts, images_per_row)
        out.reasoning = [r.strip() for r in reasonings]
        return out

    @property
    def _reads_second_to_last(self) -> bool:
        """Whether the DiT reads ``hidden_states[-2]``; under ``"last"`` and ``"embedding_and_last"`` the capture
        need not keep it (the DiT masks that half, or the embeddings replace it)."""
        return self.caption_layers == "last_two"

    def _caption_states(self, refined: RefinedInstruction) -> torch.Tensor:
        """The instruction states in the layout the DiT reads (:attr:`caption_layers`)."""
        states = refined.instruction_states
        if self.caption_layers != "embedding_and_last":
            return states
        # The instruction span is text only, so its hidden_states[0] are the embeddings of its ids.
        embedded = self.model.get_input_embeddings()(refined.instruction_ids.to(self.device)).float()
        embedded = torch.nn.functional.rms_norm(embedded, (self.hidden_size,), eps=1e-6)
        mask = refined.instruction_mask[..., None].to(self.device)
        return torch.cat([embedded.to(states.dtype) * mask, states[..., self.hidden_size :]], dim=-1)

    def _encode_one_pass(
        self, instructions: list[str], texts: list[str], images: list[list[Image.Image]]
    ) -> MLLMOutput:
        """States of the span after ``</think>`` of whole texts (the no-think template, or a given thought),
        in one forward pass."""
        # Right padding: the model's default positions (arange for text, M-RoPE from the mask for images)
        # are then exact for every real token.
        inputs = self._processor_inputs(texts, images, padding_side="right")
        with ConditioningCapture(
            self.model, keep_prefill=True, keep_second_to_last=self._reads_second_to_last
        ) as capture:
            self.model(**inputs, use_cache=False, logits_to_keep=1)
        states = capture.states(len(texts))
        refined = vgi_refine(
            states,
            inputs["input_ids"],
            self.think_end_token_id,
            self.end_token_id,
            attention_mask=inputs["attention_mask"],
            pad_token_id=self.pad_token_id,
        )
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        return MLLMOutput(
            instruction_states=self._caption_states(refined),
            instruction_mask=refined.instruction_mask,
            instruction_ids=refined.instruction_ids,
            is_thought_closed=refined.is_thought_closed,
            text=["" for _ in texts],
            reasoning=["" for _ in texts],
            instruction=list(instructions),
            generated_ids=[empty for _ in texts],
            num_forward_calls=capture.num_forward_calls,
        )

    def _encode_think(
        self,
        texts: list[str],
        images: list[list[Image.Image]],
        thinking: ThinkingConfig,
        logits_processor: LogitsProcessorList | None,
        streamer: BaseStreamer | None = None,
        num_samples: int = 1,
    ) -> MLLMOutput:
        inputs = self._processor_inputs(texts, images, padding_side="left")
        prompt_length = inputs["input_ids"].shape[1]
        cache = None
        if num_samples > 1:
            inputs, cache = self._shared_prefill(inputs, num_samples)
        with ConditioningCapture(
            self.model, keep_prefill=False, keep_second_to_last=self._reads_second_to_last
        ) as capture:
            sequences = self._generate(inputs, thinking, logits_processor, streamer, cache)
        generated_ids = sequences[:, prompt_length:]  # (B·G, n)
        # Token i of the generation is fed (and gets its states) at decoding step i + 1; the last one never is.
        num_fed = max(generated_ids.shape[1] - 1, 0)
        states = capture.states(len(texts) * num_samples)[:, :num_fed]
        refined = vgi_refine(
            states,
            generated_ids[:, :num_fed],
            self.think_end_token_id,
            self.end_token_id,
            on_missing=thinking.on_missing_think_end,
            pad_token_id=self.pad_token_id,
        )
        rows = [self._split_generation(row) for row in generated_ids]
        return MLLMOutput(
            instruction_states=self._caption_states(refined),
            instruction_mask=refined.instruction_mask,
            instruction_ids=refined.instruction_ids,
            is_thought_closed=refined.is_thought_closed,
            text=[row[0] for row in rows],
            reasoning=[row[1] for row in rows],
            instruction=[row[2] for row in rows],
            generated_ids=[row[3] for row in rows],
            num_forward_calls=capture.num_forward_calls,
        )

    def completion_inputs(
        self,
        prompt: Sequence[str],
        images: Sequence[Sequence[Image.Image]] | None,
        generated_ids: Sequence[torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Teacher-forcing inputs of think-mode prompts followed by their generated tokens.

        The layout is the one ``generate`` builds: the prompts left-padded, each row's generated ids after
        them, right-padded, so a forward over these inputs scores the generation as it was sampled (the
        policy-gradient log-probs of RL on the MLLM).

        Args:
            prompt (`list[str]`): the user prompts, one per row.
            images (*optional*): one list of PIL images per row.
            generated_ids (`list[torch.Tensor]`): per row, the ids generated after the ``<think>\n`` prefill
                (``MLLMOutput.generated_ids``).

        Returns:
            The model inputs (``input_ids`` and ``attention_mask`` of shape `(B, P + n)`, image tensors), and
            `completion_mask` of shape `(B, n)`, True on generated tokens. The generated ids sit at positions
            ``P … P + n − 1``; the logits at ``P − 1 … P + n − 2`` predict them.
        """
        prompts, images_per_row = self._normalize(list(prompt), images)
        if len(generated_ids) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(generated_ids)} generated rows")
        texts = [
            build_prompt(p, len(row), think=True, system_prompt=self.system_prompt)
            for p, row in zip(prompts, images_per_row)
        ]
        inputs = self._processor_inputs(texts, images_per_row, padding_side="left")
        length = max(int(ids.shape[0]) for ids in generated_ids)
        completion_ids = torch.full((len(prompts), length), self.pad_token_id, dtype=torch.long, device=self.device)
        completion_mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=self.device)
        for i, ids in enumerate(generated_ids):
            completion_ids[i, : ids.shape[0]] = ids.to(self.device)
            completion_mask[i, : ids.shape[0]] = True
        inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)  # (B, P + n)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], completion_mask.long()], dim=1)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.nn.functional.pad(inputs["mm_token_type_ids"], (0, length))
        return inputs, completion_mask

    def _split_generation(self, generated_ids: torch.Tensor) -> tuple[str, str, str, torch.Tensor]:
        """(text, reasoning, instruction, ids up to and including the end token) of one generated row."""
        ends = (generated_ids == self.end_token_id).nonzero().flatten()
        end = int(ends[0]) if ends.numel() else generated_ids.shape[0]
        turn = generated_ids[:end]
        closes = (turn == self.think_end_token_id).nonzero().flatten()
        close = int(closes[0]) if closes.numel() else end
        text = self.tokenizer.decode(turn, skip_special_tokens=False)
        reasoning = self.tokenizer.decode(turn[:close], skip_special_tokens=True).strip()
        instruction = self.tokenizer.decode(turn[close + 1 :], skip_special_tokens=True).strip()
        return text, reasoning, instruction, generated_ids[: end + 1]

    @torch.no_grad()
    def think_end_probability(
        self,
        prompt: str | Sequence[str],
        images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]] | None = None,
    ) -> torch.Tensor:
        """The model's probability of closing its thought at once, per prompt: ``p(</think> | … <think>\\n)``.

        One prefill forward over the think template. It is how ``think="auto"`` lets the model decide: a model
        that would write an empty thought does not need the (much longer) thinking generation.

        Returns:
            `torch.Tensor` of shape `(B,)`, float32.
        """
        prompts, images_per_row = self._normalize(prompt, images)
        texts = [
            build_prompt(p, len(row), think=True, system_prompt=self.system_prompt)
            for p, row in zip(prompts, images_per_row)
        ]
        # Left padding puts every row's last prompt token at the final position.
        inputs = self._processor_inputs(texts, images_per_row, padding_side="left")
        logits = self.model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1].float()  # (B, V)
        return logits.softmax(-1)[:, self.think_end_token_id]

    def understand(
        self,
        images: Sequence[Image.Image],
        question: str,
        thinking: ThinkingConfig | None = None,
    ) -> str:
        """Answer a question about images with the MLLM's own understanding (plain chat, no system turn).

        The model thinks first (same budget controls); the answer is the text after ``</think>``.

        Args:
            images (`list[PIL.Image.Image]`): input images (may be empty).
            question (`str`): the question.
            thinking (`ThinkingConfig`, *optional*): generation controls.

        Returns:
            `str`: the answer.
        """
        thinking = thinking or ThinkingConfig()
        prompts, images_per_row = self._normalize(question, images)
        text = build_prompt(prompts[0], len(images_per_row[0]), think=True, system_prompt=None)
        inputs = self._processor_inputs([text], images_per_row, padding_side="left")
        sequences = self._generate(inputs, thinking, None)
        generated_ids = sequences[0, inputs["input_ids"].shape[1] :]
        full_text, _, answer, ids = self._split_generation(generated_ids)
        if bool((ids == self.think_end_token_id).any()):
            return answer
        if thinking.on_missing_think_end == "error":
            raise ValueError(
                f"the answer never closed its thought ({full_text!r}); pass a ThinkingConfig with "
                "on_missing_think_end='all' to get the whole text"
            )
        if thinking.on_missing_think_end == "all":
            return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return ""
