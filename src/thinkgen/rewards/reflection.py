"""The reflection reward: was the verdict right, and does the corrective edit fix the image?

A reflection item shows the MLLM an image made for a prompt (``input_images``) and asks whether it
matches (ThinkGen Sec. 3, reflection scenario). The MLLM's instruction is either the match verdict
("The image already matches the prompt.") or a corrective edit, which the DiT applies to that image:

* the input already satisfies the spec: 1 for the verdict, 0 for any edit (it should have stopped);
* it does not: 0 for the verdict (a missed error); for an edit, the world judge's partial credit of the
  *edited* image (the one rendered from this rollout) against the spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from thinkgen.models.refine import is_match_verdict
from thinkgen.rewards.world import SpecLike, as_spec
from thinkgen.world.detect import Detector
from thinkgen.world.reflection import NO_FLAW_ANSWER
from thinkgen.world.score import score_spec


def reflection_reward(
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    instructions: Sequence[str] | None = None,
    specs: Sequence[SpecLike] | None = None,
    input_images: Sequence[Sequence[Image.Image]] | None = None,
    detector: Detector | None = None,
    match_verdict: str = NO_FLAW_ANSWER,
    **columns: Any,
) -> list[float | None]:
    """Score reflection items (see the module docstring); ``None`` for items without an input image.

    Args:
        prompts: The reflection prompts (unused).
        images: Per item, the image the DiT drew from the MLLM's instruction (the edited image).
        instructions: Per item, the instruction the MLLM wrote after its thought.
        specs: Per item, the spec of the original prompt.
        input_images: Per item, the images the MLLM was shown; the first is the one it judged.
        detector: The world judge's detector (default: the rule detector).
        match_verdict: The instruction that means "the image already matches".

    Returns:
        One score in [0, 1] per item, ``None`` where the item is no reflection item.
    """
    if instructions is None or specs is None or input_images is None:
        raise ValueError("reflection_reward needs the instructions, specs and input_images columns")
    if not len(instructions) == len(specs) == len(input_images) == len(images):
        raise ValueError(
            f"reflection_reward got {len(images)} images, {len(instructions)} instructions, {len(specs)} specs "
            f"and {len(input_images)} input image lists; give one of each per item"
        )
    out: list[float | None] = []
    for image, instruction, spec_like, shown in zip(images, instructions, specs, input_images):
        spec = as_spec(spec_like)
        if spec is None or not shown:
            out.append(None)
            continue
        input_matches = score_spec(shown[0], spec, detector).correct
        says_match = is_match_verdict(instruction, match_verdict)
        if input_matches or says_match:
            out.append(float(input_matches and says_match))
        else:
            out.append(score_spec(image, spec, detector).score)
    return out
