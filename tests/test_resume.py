"""Interrupt and resume `hf-selfish compare`: a killed run loses nothing, and the re-run ends where an uninterrupted one does.

The tiny recipe (a 1-layer 32-dim GPT-2 on 60k characters of tinyshakespeare, 24 steps, a checkpoint every 4)
runs in about a second per arm on one CPU thread; the subprocess tests pay mostly for Python's imports.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_selfish.lab.compare import compare
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import last_checkpoint
from hf_selfish.metric_names import RESULTS_FILE, RUN_RESULT_FILE

from .conftest import REPO_ROOT

SEED = 7
LOSS_TOLERANCE = 1e-6


def recipe_text(output_dir: Path, data_file: Path, *, max_steps: int = 24, arms: str | None = None) -> str:
    """A tiny two-arm comparison: checkpoints every 4 steps, evaluation every 8 (and before training)."""
    arms = arms or "  - {name: baseline, selfish_margin: null}\n  - {name: selfish, selfish_margin: 0.1}\n"
    return f"""\
output_dir: {output_dir}
arms:
{arms}dataset_name: tinyshakespeare
data_file: {data_file}
tokenizer_name: char
block_size: 32
bucket_size: 10
max_eval_samples: 32
model_type: gpt2
config_overrides: n_layer=1,n_head=2,n_embd=32,n_positions=32
per_device_train_batch_size: 4
per_device_eval_batch_size: 32
max_steps: {max_steps}
learning_rate: 1.0e-3
lr_scheduler_type: cosine
warmup_steps: 2
seed: {SEED}
use_cpu: true
dataloader_num_workers: 0
eval_strategy: steps
eval_steps: 8
eval_on_start: true
logging_steps: 2
save_strategy: steps
save_steps: 4
report_to: none
disable_tqdm: true
"""


def write_recipe(path: Path, output_dir: Path, data_file: Path, **kwargs) -> Path:
    path.write_text(recipe_text(output_dir, data_file, **kwargs))
    return path


def cli_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def cli_command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "hf_selfish.cli", "compare", str(recipe)]


def wait_for(path: Path, process: subprocess.Popen, log: Path, timeout: float = 240.0) -> None:
    """Poll (every 10 ms) until ``path`` exists; fail with the child's log if it ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (status {process.returncode}) before {path} appeared:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def needs_cli_compare() -> None:
    """`hf-selfish compare` imports the reporting plots and report (plots and report.md at the end)."""
    for name in ("reporting.plots", "reporting.report"):
        if importlib.util.find_spec(f"hf_selfish.{name}") is None:
            pytest.skip(f"hf_selfish.{name} is not there yet: `hf-selfish compare` cannot run")


def assert_close_entries(actual: list[dict], expected: list[dict], what: str) -> None:
    """Log-history entries: same steps and keys; floats within `LOSS_TOLERANCE` (runtimes excepted)."""
    assert [e["step"] for e in actual] == [e["step"] for e in expected], what
    for got, want in zip(actual, expected):
        keys = {k for k in want if not k.endswith(("_runtime", "_per_second"))}
        assert keys <= got.keys(), (what, want["step"], keys - got.keys())
        for key in keys:
            if isinstance(want[key], float):
                assert math.isclose(got[key], want[key], rel_tol=0, abs_tol=LOSS_TOLERANCE), (what, want["step"], key)
            else:
                assert got[key] == want[key], (what, want["step"], key)


def assert_same_record(actual: dict, expected: dict) -> None:
    where = f"{expected['arm']}-seed{expected['seed']}"
    assert actual["global_step"] == expected["global_step"], where
    assert_close_entries(actual["history"], expected["history"], f"{where} eval history")
    assert_close_entries(actual["train_history"], expected["train_history"], f"{where} train history")


def run_reference(recipe: Path) -> dict:
    """The uninterrupted comparison, in this process (one thread)."""
    return compare(load_recipe(recipe), progress=lambda _: None)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_matches_uninterrupted_run(tmp_path, small_text, one_thread):
    needs_cli_compare()
    run_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "tiny.yaml", run_dir, small_text)
    log = tmp_path / "interrupted.log"
    with log.open("w") as out:
        process = subprocess.Popen(cli_command(recipe), stdout=out, stderr=subprocess.STDOUT, env=cli_env(), text=True)
        # the second arm's first checkpoint is complete once its trainer_state.json is written (it is last)
        wait_for(run_dir / f"selfish-seed{SEED}" / "checkpoint-4" / "trainer_state.json", process, log)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=120)
    output = log.read_text()
    assert status == 130, output[-3000:]
    assert "hf-selfish compare: interrupted; re-run the same command to resume" in output

    # the finished arm is intact and recorded; the running arm has checkpoints but no result
    baseline_result = run_dir / f"baseline-seed{SEED}" / RUN_RESULT_FILE
    finished_bytes = baseline_result.read_bytes()
    partial = json.loads((run_dir / RESULTS_FILE).read_text())
    assert [(r["arm"], r["status"]) for r in partial["runs"]] == [("baseline", "finished")]
    selfish_dir = run_dir / f"selfish-seed{SEED}"
    assert not (selfish_dir / RUN_RESULT_FILE).exists()
    checkpoint = last_checkpoint(selfish_dir)
    assert checkpoint is not None
    interrupted_at = int(Path(checkpoint).name.split("-")[1])
    assert 4 <= interrupted_at <= 24
    assert not list(run_dir.rglob("*.tmp")), "a half-written temporary file was left behind"

    resumed = subprocess.run(cli_command(recipe), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert baseline_result.read_bytes() == finished_bytes, "the finished arm was trained or rewritten again"
    assert "baseline is finished already" in resumed.stdout + resumed.stderr

    results = json.loads((run_dir / RESULTS_FILE).read_text())
    reference_dir = tmp_path / "reference"
    reference = run_reference(write_recipe(tmp_path / "reference.yaml", reference_dir, small_text))
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [("baseline", SEED), ("selfish", SEED)]
    for actual, expected in zip(results["runs"], reference["runs"]):
        assert_same_record(actual, expected)
    resumed_record = results["runs"][1]
    assert Path(resumed_record["resumed_from"]).name == f"checkpoint-{interrupted_at}"
    assert [e["step"] for e in resumed_record["history"]] == [0, 8, 16, 24]  # no second eval_on_start entry
    # the arms differ: the test would notice a run that silently trained the wrong arm
    assert results["runs"][0]["final"]["eval_loss"] != results["runs"][1]["final"]["eval_loss"]
    assert results["groups"] == reference["groups"] and results["train_counts"] == reference["train_counts"]


def break_checkpoint(checkpoint: Path) -> None:
    """What a kill in the middle of `Trainer._save_checkpoint` leaves: a half-written model, no trainer_state.json."""
    (checkpoint / "trainer_state.json").unlink()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (checkpoint / "optimizer.pt").unlink()


def test_resume_skips_a_half_written_checkpoint_and_a_missing_run_result(tmp_path, small_text, one_thread):
    run_dir = tmp_path / "run"
    one_arm = "  - {name: selfish, selfish_margin: 0.1}\n"
    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", run_dir, small_text, max_steps=8, arms=one_arm))
    reference = compare(recipe)["runs"][0]
    out = run_dir / f"selfish-seed{SEED}"

    # killed after the last checkpoint, before run_result.json: resumes at the end, evaluates nothing twice
    (out / RUN_RESULT_FILE).unlink()
    (run_dir / RESULTS_FILE).unlink()
    record = compare(recipe)["runs"][0]
    assert Path(record["resumed_from"]).name == "checkpoint-8"
    assert_same_record(record, reference)

    # killed while writing checkpoint-8: that checkpoint is skipped, training resumes from checkpoint-4
    (out / RUN_RESULT_FILE).unlink()
    break_checkpoint(out / "checkpoint-8")
    assert last_checkpoint(out) == str(out / "checkpoint-4")
    record = compare(recipe)["runs"][0]
    assert Path(record["resumed_from"]).name == "checkpoint-4"
    assert_same_record(record, reference)
    assert (out / "checkpoint-8" / "trainer_state.json").is_file()  # rewritten whole by the resumed run


def test_last_checkpoint_needs_a_readable_trainer_state(tmp_path):
    for step, state in ((4, "{}"), (8, '{"global_step": 8'), (12, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-16").write_text("a file, not a checkpoint")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    shutil.rmtree(tmp_path / "checkpoint-4")
    assert last_checkpoint(tmp_path) is None
    assert last_checkpoint(tmp_path / "missing") is None


# ------------------------------------------------------------------------------ run directories and files


def quick_recipe(tmp_path: Path, run_dir: Path, data_file: Path, name: str, learning_rate: str = "1.0e-3") -> Path:
    """One arm, 2 steps, no checkpoints: a finished comparison in about a second."""
    text = recipe_text(run_dir, data_file, max_steps=2, arms="  - {name: selfish, selfish_margin: 0.1}\n")
    text = text.replace("save_strategy: steps", "save_strategy: 'no'").replace(
        "eval_on_start: true", "eval_on_start: false"
    )
    text = text.replace("learning_rate: 1.0e-3", f"learning_rate: {learning_rate}")
    path = tmp_path / name
    path.write_text(text)
    return path


def test_compare_refuses_a_different_recipe_unless_overwrite(tmp_path, small_text, one_thread, capsys):
    from hf_selfish.cli import main

    run_dir = tmp_path / "run"
    first = quick_recipe(tmp_path, run_dir, small_text, "first.yaml")
    compare(load_recipe(first))
    results = run_dir / RESULTS_FILE
    before = results.read_bytes()

    second = quick_recipe(tmp_path, run_dir, small_text, "second.yaml", learning_rate="2.0e-3")
    capsys.readouterr()
    assert main(["compare", str(second)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"hf-selfish compare: error: {run_dir} holds the runs of a different recipe (differing in learning_rate): "
        "choose another --output_dir, or pass --overwrite to DELETE them (1 finished run: "
    )
    assert results.read_bytes() == before

    # the same recipe, with or without --overwrite, finds its finished run and trains nothing
    for overrides in ({}, {"overwrite": "true"}):
        assert (
            compare(load_recipe(first, overrides))["runs"][0]["train_seconds"]
            == json.loads(before)["runs"][0]["train_seconds"]
        )

    replaced = compare(load_recipe(second, {"overwrite": "true"}))
    assert replaced["recipe"]["learning_rate"] == 0.002
    assert replaced["runs"][0]["history"] != json.loads(before)["runs"][0]["history"]


def test_a_recipe_that_adds_an_arm_extends_the_comparison(tmp_path, small_text, one_thread, monkeypatch):
    import hf_selfish.lab.run as run_module

    run_dir = tmp_path / "run"
    first = quick_recipe(tmp_path, run_dir, small_text, "first.yaml")
    compare(load_recipe(first))
    kept = (run_dir / f"selfish-seed{SEED}" / RUN_RESULT_FILE).read_bytes()
    arm = "  - {name: selfish, selfish_margin: 0.1}\n"
    added = tmp_path / "added.yaml"
    added.write_text(first.read_text().replace(arm, "  - {name: baseline, selfish_margin: null}\n" + arm))
    trained = []
    real_train = run_module._train
    monkeypatch.setattr(
        run_module, "_train", lambda args, data, arm, *a: trained.append(arm) or real_train(args, data, arm, *a)
    )
    results = compare(load_recipe(added))
    # only the new arm trains; the recorded run is collected as it was, and results.json holds both
    assert trained == ["baseline"]
    assert (run_dir / f"selfish-seed{SEED}" / RUN_RESULT_FILE).read_bytes() == kept
    assert [a["name"] for a in results["arms"]] == ["baseline", "selfish"]
    assert sorted(r["arm"] for r in results["runs"]) == ["baseline", "selfish"]
    # an arm changed while another is added is another recipe
    changed = tmp_path / "changed.yaml"
    changed.write_text(added.read_text().replace("selfish_margin: 0.1", "selfish_margin: 0.2"))
    with pytest.raises(ValueError, match=r"holds the runs of a different recipe \(differing in arm selfish: "):
        compare(load_recipe(changed))


def test_an_unfinished_comparison_is_not_resumed_under_another_recipe(tmp_path, small_text, monkeypatch):
    import hf_selfish.lab.compare as experiment

    def interrupted_after_a_checkpoint(args, data, **kwargs):
        checkpoint = Path(args.training.output_dir) / "checkpoint-4"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text("{}")
        raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    first = load_recipe(quick_recipe(tmp_path, run_dir, small_text, "first.yaml"))
    second = load_recipe(quick_recipe(tmp_path, run_dir, small_text, "second.yaml", learning_rate="2.0e-3"))
    monkeypatch.setattr(experiment, "train_run", interrupted_after_a_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        compare(first)
    started = json.loads((run_dir / RESULTS_FILE).read_text())
    assert started["runs"] == [] and started["recipe"]["learning_rate"] == 0.001
    with pytest.raises(ValueError, match=r"holds the runs of a different recipe \(differing in learning_rate\)"):
        compare(second)
    assert experiment.check_run_dir(run_dir, first, overwrite=False) is False  # the same recipe resumes


def test_a_recipe_that_failed_before_training_can_be_fixed_without_overwrite(tmp_path, small_text):
    import hf_selfish.lab.compare as experiment

    run_dir = tmp_path / "run"
    path = quick_recipe(tmp_path, run_dir, small_text, "r.yaml")
    with pytest.raises(ValueError, match="block_size=64 exceeds the model's 32 positions"):
        compare(load_recipe(path, {"block_size": "64"}))
    assert json.loads((run_dir / RESULTS_FILE).read_text())["runs"] == []
    assert experiment.check_run_dir(run_dir, load_recipe(path), overwrite=False) is True  # replaced, not refused


def test_seeds_below_one_is_refused_before_anything_runs(tmp_path, small_text):
    recipe = load_recipe(quick_recipe(tmp_path, tmp_path / "run", small_text, "r.yaml"), {"seeds": "0"})
    with pytest.raises(ValueError, match=r"^seeds=0 runs nothing; set seeds to 1 or more$"):
        compare(recipe)
    assert not (tmp_path / "run").exists()


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
    from hf_selfish import files

    target = tmp_path / "results.json"
    files.atomic_write_json(target, {"runs": [1]})
    old = target.read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and renaming it

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_json(target, {"runs": [1, 2]})
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
    monkeypatch.undo()
    files.atomic_write_json(target, {"runs": [1, 2]})
    assert json.loads(target.read_text()) == {"runs": [1, 2]}
