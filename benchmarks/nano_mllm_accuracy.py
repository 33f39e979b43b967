"""How well a nano MLLM thinks: exact instruction match on the world's test split, per scenario.

The MLLM thinks (greedy) on each test prompt, with the input images for edit and reflection samples; its
instruction after ``</think>`` is compared with the world's answer (case and spaces normalised). This
measures the MLLM alone, before any DiT draws.

Then the position prompts among the first ``--positions`` composition test prompts: is the relation the
instruction states the prompt's, either way round ("X above Y" or "Y below X"), by the form of the prompt
(the related object named first, named second, or "Y with X above it")?

    python benchmarks/nano_mllm_accuracy.py --mllm runs/nano/mllm/final/mllm [--processor DIR] [-n 20]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from thinkgen.glyphs import planned_objects
from thinkgen.models.mllm import ThinkGenMLLM, ThinkingConfig
from thinkgen.models.refine import normalise_instruction
from thinkgen.world.phrasing import CONVERSE
from thinkgen.world.scenarios import SCENARIOS, generate
from thinkgen.world.scene import get_preset

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--mllm", required=True, help="folder of the MLLM weights")
parser.add_argument("--processor", default=None, help="folder of its processor (default: the same)")
parser.add_argument("-n", type=int, default=20, help="test prompts per scenario")
parser.add_argument("--positions", type=int, default=300, help="composition test prompts searched for position ones")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

mllm = ThinkGenMLLM.from_pretrained(args.mllm, args.processor)
thinking = ThinkingConfig(temperature=0.0, max_thinking_tokens=96, max_instruction_tokens=48,
                          on_missing_think_end="empty")

print(f"{'scenario':<15} {'exact':>6} {'closed':>7}  example (expected | got)")
start = time.perf_counter()
totals = []
for scenario in SCENARIOS:
    samples = [generate(scenario, i, split="test") for i in range(args.n)]
    out = mllm.encode_prompt([s.instruction for s in samples], [s.input_images() for s in samples],
                             think=True, thinking=thinking)
    exact = [normalise_instruction(got) == normalise_instruction(s.answer) for got, s in zip(out.instruction, samples)]
    closed = out.is_thought_closed.float().mean().item()
    miss = next((k for k, ok in enumerate(exact) if not ok), 0)
    totals.append(sum(exact) / len(exact))
    print(f"{scenario:<15} {totals[-1]:>6.2f} {closed:>7.2f}  {samples[miss].answer!r} | {out.instruction[miss]!r}")
print(f"mean {sum(totals) / len(totals):.3f} over {len(SCENARIOS)} scenarios, {time.perf_counter() - start:.0f} s")


def stated_relation(text: str) -> tuple[str, str, str, int] | None:
    """``(shape, relation, shape, i)`` of an instruction or prompt relating its object ``i`` to the other one,
    else ``None``."""
    plan = planned_objects(text, get_preset("nano"))
    if plan is None or plan.relation is None:
        return None
    name, i, j = plan.relation
    return plan.shapes[i], name, plan.shapes[j], i


samples = [s for i in range(args.positions) if (s := generate("composition", i, split="test")).spec.tag == "position"]
out = mllm.encode_prompt([s.instruction for s in samples], [[] for _ in samples], think=True, thinking=thinking)
right, total = Counter(), Counter()
for sample, instruction in zip(samples, out.instruction):
    wanted = stated_relation(sample.instruction)
    if wanted is None:
        raise ValueError(f"the planner reads no relation in the world's prompt {sample.instruction!r}")
    x, name, y, related = wanted
    got = stated_relation(instruction)
    # The prompt's form: "Y with X above it" (the planner relates its second object), or whether it names the
    # object the spec relates (its last clause) first.
    form = ("Y with X ... it" if related == 1
            else "related object first" if x == sample.spec.include[-1].shape else "related object second")
    total[form] += 1
    right[form] += got is not None and got[:3] in ((x, name, y), (y, CONVERSE[name], x))
print(f"position prompts ({sum(total.values())} among {args.positions} composition test prompts): "
      "relation stated right")
for form in ("related object first", "related object second", "Y with X ... it"):
    print(f"  {form:<24} {right[form]}/{total[form]}")
print(f"  {'all':<24} {sum(right.values())}/{sum(total.values())}")
