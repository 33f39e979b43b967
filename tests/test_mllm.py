"""MLLM wrapper, conditioning capture, thinking controls and VGI-refine, on a tiny Qwen3-VL built here."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from thinkgen.models.capture import ConditioningCapture
from thinkgen.models.mllm import SYSTEM_PROMPT, ThinkGenMLLM, ThinkingConfig, build_prompt, thought_text
from thinkgen.models.refine import vgi_refine
from thinkgen.models.tiny import TinyQwen3VLSpec, build_tiny_mllm

ATOL = 1e-5


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tiny_mllm")
    build_tiny_mllm(seed=0, save_directory=directory)
    return directory


@pytest.fixture(scope="module")
def mllm(saved_dir) -> ThinkGenMLLM:
    return build_tiny_mllm(seed=0)


@pytest.fixture(scope="module")
def red_image() -> Image.Image:
    image = Image.new("RGB", (100, 60), (220, 30, 30))
    image.paste((30, 30, 220), (10, 10, 40, 40))
    return image


class BanTokens(LogitsProcessor):
    """Test helper: the model may never choose these tokens by itself."""

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids = token_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.token_ids] = float("-inf")
        return scores


class ForceTokenAt(LogitsProcessor):
    """Test helper: force `token_id` as generated token number `step` (0-based)."""

    def __init__(self, prompt_length: int, step: int, token_id: int) -> None:
        self.prompt_length, self.step, self.token_id = prompt_length, step, token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores[:] = float("-inf")
            scores[:, self.token_id] = 0.0
        return scores


def prompt_inputs(mllm: ThinkGenMLLM, prompts: list[str], images: list[list[Image.Image]], think: bool = True):
    texts = [build_prompt(p, len(row), think=think) for p, row in zip(prompts, images)]
    flat = [image for row in images for image in row]
    return mllm.processor(
        text=texts, images=flat or None, padding=True, padding_side="left", return_tensors="pt"
    )


def reference_states(mllm: ThinkGenMLLM, sequences: torch.Tensor, inputs) -> torch.Tensor:
    """cat(hidden_states[-2], hidden_states[-1]) of ONE full forward over the final sequences, positions as in
    generate (left padding: text positions from the mask; M-RoPE from transformers' own get_rope_index)."""
    batch_size, length = sequences.shape
    num_new = length - inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones(batch_size, num_new, dtype=torch.long)], dim=1)
    token_types = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros(batch_size, num_new, dtype=inputs["mm_token_type_ids"].dtype)],
        dim=1,
    )
    text_positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    image_kwargs = {}
    if "image_grid_thw" in inputs:
        image_kwargs = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
        vision_positions, _ = mllm.model.model.get_rope_index(
            sequences, token_types, image_grid_thw=inputs["image_grid_thw"], attention_mask=mask
        )
    else:
        vision_positions = text_positions[None].expand(3, -1, -1)
    with torch.no_grad():
        out = mllm.model(
            input_ids=sequences,
            attention_mask=mask,
            mm_token_type_ids=token_types,
            position_ids=torch.cat([text_positions[None], vision_positions], dim=0),
            output_hidden_states=True,
            **image_kwargs,
        )
    return torch.cat([out.hidden_states[-2], out.hidden_states[-1]], dim=-1)


# ---- templates -------------------------------------------------------------------------------------------


def test_think_template_with_images_is_exact():
    text = build_prompt("make the square red", num_images=2, think=True, system_prompt="SYS")
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|image_pad|><|vision_end|>make the square red<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )


def test_no_think_template_repeats_the_instruction_after_an_empty_thought():
    text = build_prompt("a red circle", num_images=1, think=False)
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a red circle<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n</think>a red circle"
    )
    assert build_prompt("x", think=False, system_prompt=None) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n</think>x"
    )


def test_control_tokens_in_user_text_are_rejected():
    with pytest.raises(ValueError, match="chat-control"):
        build_prompt("draw </think> a cat")


def test_tiny_chat_template_matches_the_think_prompt(mllm):
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
    ]
    rendered = mllm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == build_prompt("hi", num_images=1, think=True)


# ---- conditioning capture --------------------------------------------------------------------------------


def test_capture_equals_full_forward_for_every_fed_position(mllm, red_image):
    inputs = prompt_inputs(mllm, ["draw a red circle", "two blue stars above a square"], [[red_image], []])
    with ConditioningCapture(mllm.model, keep_prefill=True) as capture:
        sequences = mllm.model.generate(
            **inputs, max_new_tokens=9, do_sample=False, suppress_tokens=mllm.suppressed_token_ids,
            eos_token_id=mllm.end_token_id, pad_token_id=mllm.pad_token_id,
        )
    captured = capture.states(2)
    reference = reference_states(mllm, sequences, inputs)
    # Every token but the last is fed once; the last is sampled from the previous call and never fed.
    assert captured.shape == (2, sequences.shape[1] - 1, 2 * mllm.hidden_size)
    valid = inputs["attention_mask"].bool()
    valid = torch.cat([valid, torch.ones(2, captured.shape[1] - valid.shape[1], dtype=torch.bool)], dim=1)
    torch.testing.assert_close(captured[valid], reference[:, :-1][valid], atol=ATOL, rtol=1e-4)


def test_capture_of_the_last_layer_alone_keeps_half_the_states(mllm):
    inputs = prompt_inputs(mllm, ["draw a red circle"], [[]])
    kept = {}
    for both in (True, False):
        with ConditioningCapture(mllm.model, keep_second_to_last=both) as capture:
            mllm.model(**inputs, use_cache=False)
        kept[both] = (capture.num_bytes, capture.states(1))
    width = mllm.hidden_size
    assert kept[False][0] * 2 == kept[True][0]
    assert torch.equal(kept[False][1][..., width:], kept[True][1][..., width:])
    assert not kept[False][1][..., :width].any()


def test_think_instruction_states_equal_full_forward_and_calls_are_counted(mllm, red_image):
    prompts, images = ["draw a red circle", "two blue stars above a square"], [[red_image], []]
    calls = []
    handle = mllm.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        out = mllm.encode_prompt(
            prompts, images, think=True,
            thinking=ThinkingConfig(seed=3, temperature=1.0, max_thinking_tokens=12, max_instruction_tokens=6),
        )
    finally:
        handle.remove()
    inputs = prompt_inputs(mllm, prompts, images)
    prompt_length = inputs["input_ids"].shape[1]
    num_generated = max(len(ids) for ids in out.generated_ids)
    sequences = torch.full((2, prompt_length + num_generated), mllm.pad_token_id)
    sequences[:, :prompt_length] = inputs["input_ids"]
    for row, ids in enumerate(out.generated_ids):
        sequences[row, prompt_length : prompt_length + len(ids)] = ids
    # Prefill + one call per fed token: the generated length, nothing more.
    assert len(calls) == out.num_forward_calls == num_generated
    reference = reference_states(mllm, sequences, inputs)
    expected = vgi_refine(
        reference[:, prompt_length:], sequences[:, prompt_length:], mllm.think_end_token_id, mllm.end_token_id
    )
    assert out.is_thought_closed.all()
    torch.testing.assert_close(out.instruction_mask, expected.instruction_mask)
    torch.testing.assert_close(out.instruction_ids, expected.instruction_ids)
    torch.testing.assert_close(out.instruction_states, expected.instruction_states, atol=ATOL, rtol=1e-4)
    for row in range(2):
        ids = out.generated_ids[row]
        span = out.instruction_ids[row][out.instruction_mask[row]]
        close = int((ids == mllm.think_end_token_id).nonzero()[0])
        assert ids[-1] == mllm.end_token_id
        assert torch.equal(span, ids[close + 1 : -1])
        assert mllm.tokenizer.decode(span, skip_special_tokens=True).strip() == out.instruction[row]


def test_no_think_is_one_forward_over_the_repeated_instruction(mllm, red_image):
    calls = []
    handle = mllm.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        out = mllm.encode_prompt(["a red circle", "three green stars left of a square"], [[red_image], []], think=False)
    finally:
        handle.remove()
    assert len(calls) == out.num_forward_calls == 1
    for row, prompt in enumerate(["a red circle", "three green stars left of a square"]):
        span = out.instruction_ids[row][out.instruction_mask[row]]
        assert mllm.tokenizer.decode(span) == prompt
        single = mllm.encode_prompt(prompt, [red_image] if row == 0 else None, think=False)
        length = int(single.instruction_mask.sum())
        torch.testing.assert_close(
            out.instruction_states[row, :length], single.instruction_states[0], atol=ATOL, rtol=1e-4
        )


class ForceSequence(LogitsProcessor):
    """Test helper: force the generation to be exactly `token_ids` `(B, n)`."""

    def __init__(self, prompt_length: int, token_ids: torch.Tensor) -> None:
        self.prompt_length, self.token_ids = prompt_length, token_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(scores.shape[0]), self.token_ids[:, step]] = 0.0
        return forced


def test_a_given_thought_encodes_as_think_mode_generation_of_it(mllm, red_image):
    """encode_thought's one teacher-forced pass gives the states think mode gives when the MLLM writes that
    very thought and answer: the states the DiT reads at think-mode inference."""
    prompts, images = ["draw what a ripe banana looks like", "fix the picture"], [[], [red_image]]
    reasonings, answers = ["bananas are yellow", ""], ["one yellow star", "make the square green"]
    written = [thought_text(r, a) + "<|im_end|>" for r, a in zip(reasonings, answers)]
    ids = [mllm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0] for text in written]
    length = max(len(row) for row in ids)
    for row in range(2):  # one prompt at a time: the two thoughts differ in length
        forced_ids = ids[row][None]
        prompt_length = prompt_inputs(mllm, prompts[row : row + 1], images[row : row + 1])["input_ids"].shape[1]
        thinking = ThinkingConfig(temperature=0.0, max_thinking_tokens=length, max_instruction_tokens=length)
        generated = mllm.encode_prompt(
            prompts[row], images[row], think=True, thinking=thinking,
            logits_processor=LogitsProcessorList([ForceSequence(prompt_length, forced_ids)]),
        )
        assert torch.equal(generated.generated_ids[0], ids[row])
        given = mllm.encode_thought(prompts[row], reasonings[row], answers[row], images[row])
        assert given.instruction == [answers[row]] and given.reasoning == [reasonings[row]]
        torch.testing.assert_close(given.instruction_mask, generated.instruction_mask)
        torch.testing.assert_close(given.instruction_ids, generated.instruction_ids)
        torch.testing.assert_close(given.instruction_states, generated.instruction_states, atol=ATOL, rtol=1e-4)
    # A batch gives each row what it gives alone.
    batch = mllm.encode_thought(prompts, reasonings, answers, images)
    for row in range(2):
        alone = mllm.encode_thought(prompts[row], reasonings[row], answers[row], images[row])
        n = int(alone.instruction_mask.sum())
        torch.testing.assert_close(batch.instruction_states[row, :n], alone.instruction_states[0], atol=ATOL, rtol=1e-4)
    # Without reasoning and with the answer as the prompt, the thought is the no-think template itself.
    plain = mllm.encode_prompt("one yellow star", think=False)
    same = mllm.encode_thought("one yellow star", "", "one yellow star")
    torch.testing.assert_close(same.instruction_states, plain.instruction_states)
    with pytest.raises(ValueError, match="one of each per row"):
        mllm.encode_thought(prompts, reasonings[:1], answers)
    with pytest.raises(ValueError, match="reasoning contains chat-control tokens"):
        mllm.encode_thought("a", "think </think> again", "b")


# ---- thinking controls -----------------------------------------------------------------------------------


def test_thinking_budget_forces_think_end_then_an_instruction_follows(mllm):
    thinking = ThinkingConfig(seed=0, temperature=1.0, max_thinking_tokens=7, max_instruction_tokens=4)
    # The model may not close its thought or its turn by itself: the budget must do both.
    ban = LogitsProcessorList([BanTokens([mllm.think_end_token_id, mllm.end_token_id])])
    out = mllm.encode_prompt(["a red circle", "a cat"], think=True, thinking=thinking, logits_processor=ban)
    for row in range(2):
        ids = out.generated_ids[row]
        assert len(ids) == 7 + 1 + 4 + 1
        assert ids[7] == mllm.think_end_token_id
        assert ids[-1] == mllm.end_token_id
        assert int(out.instruction_mask[row].sum()) == 4
        assert out.reasoning[row] and out.instruction[row]
    assert out.num_forward_calls == 13


def test_budget_is_an_upper_bound_on_free_generation(mllm):
    thinking = ThinkingConfig(seed=5, temperature=1.0, max_thinking_tokens=5, max_instruction_tokens=3,
                              on_missing_think_end="empty")
    out = mllm.encode_prompt(["a", "b", "c", "d"], think=True, thinking=thinking)
    for row, ids in enumerate(out.generated_ids):
        closes = (ids == mllm.think_end_token_id).nonzero().flatten()
        if out.is_thought_closed[row]:
            assert int(closes[0]) <= 5 and len(ids) - int(closes[0]) - 2 <= 3
        assert len(ids) <= thinking.max_new_tokens


def test_left_padded_batch_equals_single_rows(mllm, red_image):
    thinking = ThinkingConfig(temperature=0.0, max_thinking_tokens=10, max_instruction_tokens=6,
                              on_missing_think_end="empty")
    prompts = ["draw a red circle", "two blue stars above a big square on the left"]
    images = [[red_image], []]
    batch = mllm.encode_prompt(prompts, images, think=True, thinking=thinking)
    for row in range(2):
        single = mllm.encode_prompt(prompts[row], images[row], think=True, thinking=thinking)
        assert torch.equal(batch.generated_ids[row], single.generated_ids[0])
        assert batch.instruction[row] == single.instruction[0]
        length = int(single.instruction_mask.sum())
        assert int(batch.instruction_mask[row].sum()) == length
        torch.testing.assert_close(
            batch.instruction_states[row, :length], single.instruction_states[0, :length], atol=ATOL, rtol=1e-4
        )


def test_seed_makes_sampling_reproducible_and_leaves_the_global_rng_alone(mllm):
    def run(seed: int):
        thinking = ThinkingConfig(seed=seed, temperature=1.0, top_k=0, top_p=1.0, max_thinking_tokens=16,
                                  max_instruction_tokens=8, on_missing_think_end="empty")
        return mllm.encode_prompt(["a red circle", "a star"], think=True, thinking=thinking)

    rng_before = torch.get_rng_state()
    first, again, other = run(11), run(11), run(12)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for row in range(2):
        assert torch.equal(first.generated_ids[row], again.generated_ids[row])
    torch.testing.assert_close(first.instruction_states, again.instruction_states, atol=0.0, rtol=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(first.generated_ids, other.generated_ids))


def test_thought_that_never_closes_is_reported(mllm):
    prompt_length = prompt_inputs(mllm, ["a red circle"], [[]])["input_ids"].shape[1]
    end_early = LogitsProcessorList([ForceTokenAt(prompt_length, 2, mllm.end_token_id)])
    with pytest.raises(ValueError, match="never closed"):
        mllm.encode_prompt("a red circle", think=True, thinking=ThinkingConfig(seed=0), logits_processor=end_early)
    empty = mllm.encode_prompt(
        "a red circle", think=True, thinking=ThinkingConfig(seed=0, on_missing_think_end="empty"),
        logits_processor=end_early,
    )
    assert not empty.is_thought_closed[0] and not empty.instruction_mask.any()
    everything = mllm.encode_prompt(
        "a red circle", think=True, thinking=ThinkingConfig(seed=0, on_missing_think_end="all"),
        logits_processor=end_early,
    )
    assert not everything.is_thought_closed[0] and int(everything.instruction_mask.sum()) == 2


def test_understand_returns_the_answer_after_the_thought(mllm, red_image):
    thinking = ThinkingConfig(seed=0, max_thinking_tokens=4, max_instruction_tokens=3, on_missing_think_end="all")
    answer = mllm.understand([red_image], "what color is it", thinking)
    assert isinstance(answer, str)
    assert mllm.understand([red_image], "what color is it", thinking) == answer


def test_thinking_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        ThinkingConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="on_missing_think_end"):
        ThinkingConfig(on_missing_think_end="use-everything")
    with pytest.raises(ValueError, match="max_instruction_tokens"):
        ThinkingConfig(max_instruction_tokens=0)


# ---- VGI-refine on hand-made ids -------------------------------------------------------------------------

THINK_END, END, PAD = 90, 91, 0


def test_refine_keeps_tokens_strictly_after_the_first_think_end():
    input_ids = torch.tensor([
        [5, 6, THINK_END, 7, THINK_END, 8, END, PAD],   # a second </think> stays in the span
        [PAD, PAD, 9, THINK_END, 10, END, 11, 12],      # left padded; tokens after <|im_end|> are dropped
        [THINK_END, END, PAD, PAD, PAD, PAD, PAD, PAD],  # empty instruction
    ])
    attention_mask = torch.tensor([[1] * 7 + [0], [0, 0] + [1] * 6, [1, 1] + [0] * 6])
    hidden_states = torch.arange(3 * 8 * 2, dtype=torch.float32).reshape(3, 8, 2)
    out = vgi_refine(hidden_states, input_ids, THINK_END, END, attention_mask, pad_token_id=PAD)
    assert out.instruction_states.shape == (3, 3, 2)
    assert out.instruction_mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert out.instruction_ids.tolist() == [[7, THINK_END, 8], [10, PAD, PAD], [PAD, PAD, PAD]]
    torch.testing.assert_close(out.instruction_states[0], hidden_states[0, 3:6])
    torch.testing.assert_close(out.instruction_states[1, 0], hidden_states[1, 4])
    assert (out.instruction_states[1, 1:] == 0).all() and (out.instruction_states[2] == 0).all()
    assert out.is_thought_closed.all()


def test_refine_without_think_end_errors_or_falls_back_explicitly():
    input_ids = torch.tensor([[5, THINK_END, 6, END], [5, 6, 7, END]])
    hidden_states = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        vgi_refine(hidden_states, input_ids, THINK_END, END)
    empty = vgi_refine(hidden_states, input_ids, THINK_END, END, on_missing="empty")
    assert empty.is_thought_closed.tolist() == [True, False]
    assert empty.instruction_mask.tolist() == [[True], [False]]
    everything = vgi_refine(hidden_states, input_ids, THINK_END, END, on_missing="all")
    assert everything.instruction_ids.tolist() == [[6, PAD, PAD], [5, 6, 7]]
    torch.testing.assert_close(everything.instruction_states[1], hidden_states[1, :3])


# ---- saving and loading ----------------------------------------------------------------------------------


def test_a_folder_with_pickled_weights_only_is_refused_unread(saved_dir, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(saved_dir, folder)
    for weights in folder.glob("*.safetensors"):
        torch.save(load_file(weights), folder / "pytorch_model.bin")  # what an old checkpoint looks like
        weights.unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was read"))
    with pytest.raises(FileNotFoundError, match="only safetensors are loaded"):
        ThinkGenMLLM.from_pretrained(folder)


def test_save_load_roundtrip(saved_dir, mllm, red_image):
    loaded = ThinkGenMLLM.from_pretrained(saved_dir)
    reference = mllm.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    text = build_prompt("a red circle left of a square", num_images=1)
    assert loaded.tokenizer(text).input_ids == mllm.tokenizer(text).input_ids
    assert loaded.tokenizer.chat_template == mllm.tokenizer.chat_template
    assert loaded.think_end_token_id == mllm.think_end_token_id and loaded.end_token_id == mllm.end_token_id
    spec = TinyQwen3VLSpec()
    image_processor = loaded.processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size) == (spec.patch_size, spec.merge_size)
    a = loaded.encode_prompt("a red circle", [red_image], think=False)
    b = mllm.encode_prompt("a red circle", [red_image], think=False)
    torch.testing.assert_close(a.instruction_states, b.instruction_states, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_samples_equal_repeated_prompts(mllm, red_image, temperature):
    # Prompts of different lengths (left padding), one with an image (M-RoPE offsets), G = 3 each.
    thinking = ThinkingConfig(seed=5, temperature=temperature, top_k=0, top_p=1.0, max_thinking_tokens=12,
                              max_instruction_tokens=6, on_missing_think_end="empty")
    prompts = ["draw a red circle", "two blue stars above a big square on the left"]
    for images in ([[red_image], []], [[], []]):
        shared = mllm.encode_prompt(prompts, images, think=True, thinking=thinking, num_samples_per_prompt=3)
        repeated = mllm.encode_prompt([p for p in prompts for _ in range(3)], [r for r in images for _ in range(3)],
                                      think=True, thinking=thinking)
        assert len(shared.generated_ids) == 6
        for a, b in zip(shared.generated_ids, repeated.generated_ids):
            assert torch.equal(a, b)
        assert shared.instruction == repeated.instruction
        assert torch.equal(shared.instruction_mask, repeated.instruction_mask)
        torch.testing.assert_close(shared.instruction_states, repeated.instruction_states, atol=ATOL, rtol=1e-4)
        # The capture sees the same calls: the last prompt token (for the repeated rows, the whole prefill),
        # then one per decoding step.
        assert shared.num_forward_calls == repeated.num_forward_calls
    if temperature > 0:
        rows = shared.generated_ids[:3]
        assert any(not torch.equal(rows[0], other) for other in rows[1:])


def test_shared_prefill_needs_think_mode_and_a_positive_count(mllm):
    with pytest.raises(ValueError, match="think=True"):
        mllm.encode_prompt("a red circle", think=False, num_samples_per_prompt=2)
    with pytest.raises(ValueError, match="≥ 1"):
        mllm.encode_prompt("a red circle", think=True, num_samples_per_prompt=0)


@pytest.mark.parametrize("think", [False, True])
def test_embedding_and_last_puts_the_embeddings_in_place_of_hidden_states_minus_two(mllm, think):
    thinking = ThinkingConfig(seed=0, max_thinking_tokens=6, max_instruction_tokens=4)
    prompts = ["a red circle", "three green stars left of a square"]
    released = mllm.encode_prompt(prompts, think=think, thinking=thinking)
    mllm.caption_layers = "embedding_and_last"
    try:
        swapped = mllm.encode_prompt(prompts, think=think, thinking=thinking)
    finally:
        mllm.caption_layers = "last_two"
    width = mllm.hidden_size
    assert torch.equal(swapped.instruction_ids, released.instruction_ids)
    torch.testing.assert_close(swapped.instruction_states[..., width:], released.instruction_states[..., width:])
    mask = swapped.instruction_mask
    embedded = mllm.model.get_input_embeddings()(swapped.instruction_ids)
    expected = embedded / embedded.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(swapped.instruction_states[..., :width][mask], expected[mask])
    assert not swapped.instruction_states[..., :width][~mask].any()
    assert not torch.allclose(swapped.instruction_states[..., :width][mask],
                              released.instruction_states[..., :width][mask])
