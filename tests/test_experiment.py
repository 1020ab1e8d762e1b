"""`hf-selfish compare` end to end on a tiny model: every file, plots, resume keeps the history."""

import json

import pytest
from PIL import Image

from hf_selfish.cli import main
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import eval_history, prepare_data, train_run

TINY = """
dataset_name: tinyshakespeare
tokenizer_name: char
block_size: 32
model_type: gpt2
config_overrides: n_layer=1,n_head=2,n_embd=32,n_positions=32
per_device_train_batch_size: 8
per_device_eval_batch_size: 64
max_steps: 6
learning_rate: 1.0e-3
eval_strategy: steps
eval_steps: 3
eval_on_start: true
max_eval_samples: 64
logging_steps: 2
save_strategy: steps
save_steps: 3
report_to: none
use_cpu: true
disable_tqdm: true
seed: 7
"""


@pytest.fixture
def tiny_recipe(tmp_path, tinyshakespeare_file):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_compare_writes_every_file(tmp_path, tiny_recipe, capsys):
    out = tmp_path / "run"
    assert main(["compare", str(tiny_recipe), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] baseline" in printed and "[2/2] selfish" in printed and "compare took" in printed
    results = json.loads((out / "results.json").read_text())
    assert [a["name"] for a in results["arms"]] == ["baseline", "selfish"]
    assert results["vocab_size"] == 65 and len(results["train_counts"]) == 65
    assert list(results["groups"])[:2] == ["rank_1-10", "rank_11-20"]
    for run in results["runs"]:
        assert run["status"] == "finished"
        assert [h["step"] for h in run["history"]] == [0, 3, 6]
        assert "eval_rank_1-10_nll" in run["final"]
        assert (out / run["output_dir"] / "run_result.json").is_file()
        assert (out / run["output_dir"] / "model.safetensors").is_file()
    selfish = [r for r in results["runs"] if r["arm"] == "selfish"][0]
    assert selfish["selfish_margin"] == 2.0
    assert all("selfish_masked_fraction" in e for e in selfish["train_history"])
    for name in ("report.md", "summary.json", "token_frequency.json"):
        assert (out / name).is_file()
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"token_distribution.png", "eval_loss.png", "eval_nll_by_group.png"}
    for png in pngs:
        with Image.open(png) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    report = (out / "report.md").read_text()
    assert "ranks 41-50" in report and "nan" not in report.lower()
    # the same command again skips the finished runs
    assert main(["compare", str(tiny_recipe), "--output_dir", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["train_seconds"] for r in again["runs"]] == [r["train_seconds"] for r in results["runs"]]
    # plots and report are rebuilt from the files alone
    (out / "report.md").unlink()
    assert main(["plot", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_resume_keeps_eval_history(tmp_path, tiny_recipe):
    """Train 3 steps (checkpoint), then resume to 6: the step-0 and step-3 evals are still logged."""
    recipe = load_recipe(tiny_recipe)
    arm = recipe.arms[1]
    args = recipe.arguments(arm, output_dir=str(tmp_path / "a"), max_steps=3)
    data = prepare_data(args.model, args.data)
    first = train_run(args, data, arm="selfish")
    assert [h["step"] for h in first["history"]] == [0, 3]
    (tmp_path / "a" / "run_result.json").unlink()  # pretend it stopped after the checkpoint
    resumed_args = recipe.arguments(arm, output_dir=str(tmp_path / "a"), max_steps=6)
    resumed = train_run(resumed_args, data, arm="selfish")
    assert resumed["resumed_from"].endswith("checkpoint-3")
    steps = [h["step"] for h in resumed["history"]]
    assert steps[:2] == [0, 3] and steps[-1] == 6
    assert resumed["history"][1]["eval_rank_1-10_nll"] == first["history"][1]["eval_rank_1-10_nll"]
    state = json.loads((tmp_path / "a" / "trainer_state.json").read_text())
    assert [e["step"] for e in eval_history(state["log_history"])] == steps
