"""Load the released DiT's golden outputs (tests/fixtures/dit_oracle) and the tiny model they come from."""

import json
from pathlib import Path

import torch
from safetensors import safe_open

from thinkgen.models.dit import ThinkGenTransformer2DModel

FIXTURES = Path(__file__).parent / "fixtures"
ORACLE = FIXTURES / "dit_oracle"


def load_oracle(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(ORACLE / f"{case}.safetensors"), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def oracle_model(case: str = "edit_one_ref", **overrides) -> ThinkGenTransformer2DModel:
    """The tiny configuration with the released code's random weights (non-trivial modulation)."""
    meta, tensors = load_oracle(case)
    model = ThinkGenTransformer2DModel(**{**json.loads(meta["config"]), **overrides})
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if overrides.get("num_prepad_states") == 0:
        weights["prepad_embed"] = weights["prepad_embed"][:, :0]
        weights["prepad_mask"] = weights["prepad_mask"][:, :0]
    model.load_state_dict(weights, strict=True)
    return model.eval()


def velocity(model, latents, t, text, mask, refs=None) -> torch.Tensor:
    with torch.no_grad():
        return model(latents, t, text, mask, refs).sample
