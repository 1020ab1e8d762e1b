"""Two CPU runs of the same recipe and seed give the same eval metrics, float for float."""

from __future__ import annotations

import json
import math

from hf_selfish.lab.compare import compare
from hf_selfish.lab.recipe import load_recipe

from .test_resume import recipe_text


def eval_metrics(results: dict) -> list[dict]:
    """Every eval entry of every run, without the wall-clock keys."""
    return [
        {k: v for k, v in entry.items() if not k.endswith(("_runtime", "_per_second"))}
        for run in results["runs"]
        for entry in run["history"]
    ]


def run(tmp_path, small_text, name: str, seed: int) -> dict:
    text = recipe_text(tmp_path / name, small_text, max_steps=8).replace("seed: 7", f"seed: {seed}")
    text = text.replace("save_strategy: steps", "save_strategy: 'no'").replace("eval_steps: 8", "eval_steps: 4")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return compare(load_recipe(path))


def test_same_seed_same_eval_metrics_exactly(tmp_path, small_text, one_thread):
    first = eval_metrics(run(tmp_path, small_text, "first", seed=7))
    second = eval_metrics(run(tmp_path, small_text, "second", seed=7))
    assert len(first) == 6  # 2 arms x evaluations at steps 0, 4, 8
    assert first == second  # exact float equality, every metric of every group
    json.dumps(first, allow_nan=False)
    assert all(math.isfinite(v) for entry in first for v in entry.values() if isinstance(v, float))

    # the comparison can fail: another seed (other init, other batches) changes the metrics
    other = eval_metrics(run(tmp_path, small_text, "other", seed=8))
    assert [e["eval_loss"] for e in other] != [e["eval_loss"] for e in first]
