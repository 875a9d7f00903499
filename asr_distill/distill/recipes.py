"""Student recipes: the training overrides a distilled student may have (epochs, input perturbation), their
command-line forms, the ``select`` experiment's candidate grid, and the widths of compressed students."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

from ..nnet.models import build_model, count_parameters

__all__ = ["recipe_overrides", "parse_recipe", "parse_select_candidates", "student_dir", "hidden_for_params",
           "SELECT_PAIRS", "SELECT_RECIPES"]

# Stage 6's ``select`` candidates: (T, alpha) x student recipes.  The recipes: the teachers' own (10 epochs), a
# longer schedule, and the longer schedule with input perturbation of the windows that the live teachers label
# (asr_distill.nnet.augment).  Chosen on DEV frame accuracy only.
SELECT_PAIRS = ((2.0, 0.5), (2.0, 0.9), (5.0, 0.5))
SELECT_RECIPES = ({}, {"epochs": 30}, {"epochs": 30, "noise_std": 0.2, "freq_mask": 8})


def hidden_for_params(target: int, cfg: dict) -> int:
    """Hidden width of an MLP with ``cfg``'s depth/input/output whose parameter count is closest to ``target``."""
    def params(h: int) -> int:
        return count_parameters(build_model({**cfg, "hidden_dim": h}))

    lo, hi = 2, 512  # widths in steps of 8: 16 .. 4096; the count grows with the width, so bisect
    while lo < hi:
        mid = (lo + hi) // 2
        if params(8 * mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [8 * c for c in (lo - 1, lo) if 2 <= c <= 512]
    return min(candidates, key=lambda h: abs(params(h) - target))


def student_dir(T: float, alpha: float, recipe: Mapping[str, object]) -> str:
    """``sweep-T2-a0.5`` (the teachers' recipe), ``sweep-T2-a0.5-e30-f8-n0.2``: shared by ``select`` and ``sweep``,
    which then reuse each other's finished runs."""
    short = {"epochs": "e", "noise_std": "n", "freq_mask": "f"}
    return f"sweep-T{T:g}-a{alpha:g}" + "".join(f"-{short.get(k, k)}{v:g}" for k, v in sorted(recipe.items()))


def recipe_overrides(epochs: Optional[int] = None, noise_std: float = 0.0, freq_mask: int = 0) -> dict:
    """Training overrides of a recipe (a student's, or perturbation for the teachers): only what is set, so that
    everything else stays as inherited."""
    recipe: Dict[str, object] = {}
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if noise_std:
        recipe["noise_std"] = float(noise_std)
    if freq_mask:
        recipe["freq_mask"] = int(freq_mask)
    return recipe


def parse_recipe(spec: str) -> dict:
    """``"30:0.2:8"`` (``epochs[:noise_std[:freq_mask]]``, any part may be empty) -> :func:`recipe_overrides`."""
    parts = spec.split(":") if spec else []
    if len(parts) > 3:
        raise ValueError(f"recipe {spec!r}: expected epochs[:noise_std[:freq_mask]]")
    parts += [""] * (3 - len(parts))
    return recipe_overrides(int(parts[0]) if parts[0] else None, float(parts[1] or 0), int(parts[2] or 0))


def parse_select_candidates(spec: str) -> List[Tuple[float, float, dict]]:
    """``"2:0.5,2:0.9:30:0.2:8"`` -> ``[(2.0, 0.5, {}), (2.0, 0.9, {epochs: 30, noise_std: 0.2, freq_mask: 8})]``."""
    out = []
    for item in filter(None, (x.strip() for x in spec.replace(" ", ",").split(","))):
        parts = item.split(":")
        if not 2 <= len(parts) <= 5:
            raise ValueError(f"select candidate {item!r}: expected T:alpha[:epochs[:noise_std[:freq_mask]]]")
        try:
            t, a, recipe = float(parts[0]), float(parts[1]), parse_recipe(":".join(parts[2:]))
        except ValueError as e:
            raise ValueError(f"select candidate {item!r}: {e}") from None
        if a <= 0:
            raise ValueError(f"select candidate {item!r}: alpha must be > 0 (alpha 0 is the baseline)")
        out.append((t, a, recipe))
    if not out:
        raise ValueError(f"no select candidates in {spec!r}")
    return out
