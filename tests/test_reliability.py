"""Issue 15: inputs a new user tries that lost data, escaped the run directory or scored nothing with exit 0.

Each test fails on the code before the fix. CLI errors are one line (``cli_error``) and come before training.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerControl

from hf_selfish.callbacks import StopOnNonFiniteLossCallback, TrainingDivergedError
from hf_selfish.evaluation import target_nll_and_rank
from hf_selfish.files import atomic_write_json, atomic_write_text
from hf_selfish.lab.compare import compare
from hf_selfish.lab.guards import RunDirLock, check_output_dir, remove_inside
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import has_labelled_token, last_checkpoint
from hf_selfish.metric_names import LOCK_FILE, RUN_RESULT_FILE

from .test_bad_input import cli_error, write_recipe


def arms_recipe(tmp_path: Path, name: str) -> Path:
    return write_recipe(tmp_path, f"arms:\n  - {{name: base, selfish_margin: null}}\n  - {{name: '{name}'}}\n")


# ------------------------------------------------------------------------------------ 1. arm names


@pytest.mark.parametrize("name", ["../../other/baseline", "sub/dir", "/abs/path", "..", ".hidden", "a b"])
def test_arm_names_must_be_one_safe_folder_name(tmp_path, capsys, name):
    error = cli_error(capsys, "compare", str(arms_recipe(tmp_path, name)))
    assert f"arm name {name!r} must be one folder name" in error
    assert not (tmp_path / "run").exists() and not (tmp_path.parent / "other").exists()


def test_deletes_stay_inside_the_run_directory(tmp_path):
    victim = tmp_path / "other" / "baseline-seed1"
    victim.mkdir(parents=True)
    for target in (tmp_path / "run" / ".." / "other" / "baseline-seed1", tmp_path / "run"):
        with pytest.raises(ValueError, match="refusing to delete"):
            remove_inside(tmp_path / "run", target)
    assert victim.is_dir()
    inner = tmp_path / "run" / "arm-seed1"
    inner.mkdir(parents=True)
    remove_inside(tmp_path / "run", inner)
    assert not inner.exists() and (tmp_path / "run").is_dir()


# ------------------------------------------------------------------------------ 2. diverged runs


def test_nan_logits_never_count_as_a_correct_rank():
    logits = torch.tensor([[1.0, float("nan"), 0.0], [float("nan")] * 3, [0.0, 2.0, 1.0]])  # [3, V=3]
    targets = torch.tensor([0, 1, 1])
    _, rank = target_nll_and_rank(logits, targets)
    assert rank.tolist() == [3, 3, 1]  # NaN rows rank last; a finite row is unchanged


@pytest.mark.parametrize("key", ["loss", "eval_loss"])
def test_a_non_finite_loss_stops_the_run(key):
    args = type("Args", (), {"learning_rate": 1e6, "output_dir": "out"})()
    state = type("State", (), {"global_step": 3})()
    control = TrainerControl()
    callback = StopOnNonFiniteLossCallback()
    callback.on_log(args, state, control, logs={key: 2.5})  # finite: nothing happens
    callback.raise_if_diverged()
    assert not control.should_training_stop
    callback.on_log(args, state, control, logs={key: float("nan")})
    assert control.should_training_stop and not control.should_save
    message = rf"training diverged: {key} is nan at step 3 \(learning_rate 1e\+06\)"
    with pytest.raises(TrainingDivergedError, match=message):
        callback.raise_if_diverged()


def test_a_diverging_run_exits_with_one_line_and_writes_no_verdict(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "learning_rate: 1.0e6\nwarmup_steps: 0\nlogging_steps: 1\n")
    error = cli_error(
        capsys, "compare", str(recipe), "--max_steps", "4", "--eval_steps", "2", "--eval_strategy", "steps"
    )
    assert error.startswith("hf-selfish compare: error: training diverged:")
    assert not (tmp_path / "run" / "report.md").exists()


# ------------------------------------------------------------------------- 4. nothing to train on


def test_block_size_one_is_refused_before_any_data(tmp_path, capsys):
    error = cli_error(capsys, "train", str(write_recipe(tmp_path)), "--block_size", "1")
    assert "block_size=1 leaves no label after the causal shift" in error
    assert not (tmp_path / "run").exists()


def test_a_split_without_labelled_tokens_is_detected():
    assert has_labelled_token(Dataset.from_dict({"labels": [[-100, -100, 5], [1, -100, -100]]}))
    assert not has_labelled_token(Dataset.from_dict({"labels": [[7, -100, -100], [3, -100, -100]]}))


# ------------------------------------------------------------------ 5. the command line always wins


def test_train_an_arm_with_a_command_line_margin_uses_and_records_it(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path, "arms:\n  - {name: base, selfish_margin: null}\n  - {name: selfish, selfish_margin: 2.0}\n"
    )
    assert main(["train", str(recipe), "--arm", "selfish", "--selfish_margin", "0", "--save_strategy", "no"]) == 0
    record = json.loads((tmp_path / "run" / RUN_RESULT_FILE).read_text())
    assert record["selfish_margin"] == 0.0 and record["selfish_margin_setting"] == 0.0


# ------------------------------------------------------------------------------- 6. step counts


def test_max_steps_zero_is_refused_and_minus_one_is_said(tmp_path, capsys, caplog):
    error = cli_error(capsys, "train", str(write_recipe(tmp_path)), "--max_steps", "0")
    assert "max_steps=0 trains nothing" in error and not (tmp_path / "run").exists()
    caplog.set_level("WARNING")
    recipe = write_recipe(tmp_path, "num_train_epochs: 1\nsave_strategy: 'no'\n")
    assert main(["train", str(recipe), "--max_steps", "-1"]) == 0
    assert "max_steps=-1, so the run trains num_train_epochs=1 epochs" in caplog.text


# --------------------------------------------------------------- 7. a finished run of other settings


def test_a_finished_run_is_not_reused_with_other_settings(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "save_strategy: 'no'\n")
    assert main(["train", str(recipe)]) == 0
    for flag, value in (("--learning_rate", "0.002"), ("--max_steps", "2"), ("--selfish_margin", "4")):
        error = cli_error(capsys, "train", str(recipe), flag, value)
        assert "holds a run with other settings" in error and f"{flag[2:]}:" in error
    assert main(["train", str(recipe)]) == 0  # the same settings: the finished run is returned


# --------------------------------------------------------------------------- 8. one process per dir


def test_a_second_process_on_one_run_directory_is_refused(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        error = cli_error(capsys, "compare", str(recipe))
        assert f"is in use by another hf-selfish process (pid {sleeper.pid}" in error
        assert not (tmp_path / "run" / "results.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunDirLock(tmp_path / "run") as lock:  # the owner is gone: a stale lock is taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# -------------------------------------------------------------------------- 9. damaged checkpoints


def test_resume_skips_a_checkpoint_with_a_truncated_model(tmp_path):
    from safetensors.torch import save_file

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.zeros(256)}, str(folder / "model.safetensors"))
    assert last_checkpoint(tmp_path).endswith("checkpoint-4")
    whole = (tmp_path / "checkpoint-4" / "model.safetensors").read_bytes()
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    assert last_checkpoint(tmp_path).endswith("checkpoint-2")
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    assert last_checkpoint(tmp_path) is None


# ------------------------------------------------------------------ tracebacks and misleading lines


def test_output_dir_that_is_a_file_the_root_or_read_only(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="is the filesystem root"):
        check_output_dir("/")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests run as root, who may write anywhere
    with pytest.raises(ValueError, match="cannot be written"):
        check_output_dir(tmp_path / "new" / "run")


@pytest.mark.parametrize("row", ['{"text": 5}', '{"text": ["a", "b"]}'])
def test_a_text_column_that_is_not_text_is_one_line(tmp_path, capsys, row):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello there, world"}\n' * 30 + row + "\n", encoding="utf-8")
    error = cli_error(capsys, "train", str(write_recipe(tmp_path)), "--train_file", str(corpus))
    assert "text_column='text' of the train split holds" in error and "not text" in error


def test_recipe_files_that_are_binary_empty_or_a_directory(tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01garbage")
    (tmp_path / "empty.yaml").write_text("")
    cases = {"binary.yaml": "is not a text file", "empty.yaml": "holds no settings", ".": "is a directory"}
    for name, message in cases.items():
        error = cli_error(capsys, "train", str(tmp_path / name))
        assert message in error and str(tmp_path / name) in error


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--per_device_train_batch_size", "0", "per_device_train_batch_size must be an integer of at least 1, got 0"),
        ("--seed", "-1", "seed must be an integer >= 0"),
        ("--eval_steps", "0", "eval_steps must be positive with eval_strategy=steps, got 0"),
    ],
)
def test_training_numbers_are_refused_before_the_data(tmp_path, capsys, monkeypatch, flag, value, message):
    import hf_selfish.lab.run as run

    monkeypatch.setattr(run, "prepare_lm_data", lambda *a, **k: pytest.fail("data was prepared"))
    error = cli_error(capsys, "train", str(write_recipe(tmp_path, "eval_strategy: steps\n")), flag, value)
    assert message in error


def test_a_difference_that_rounds_to_zero_is_a_tie():
    from hf_selfish.reporting.report import _clause
    from hf_selfish.reporting.summary import Stat

    text, word = _clause("ranks 1-10", "selfish", "baseline", Stat(values=(-0.00001,)), "nll")
    assert word == "same" and text == "ranks 1-10: selfish equal to baseline"


def test_written_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        for path in (atomic_write_text(tmp_path / "report.md", "x"), atomic_write_json(tmp_path / "r.json", {})):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(previous)


def test_compare_refuses_before_writing_when_a_later_arm_is_bad(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "arms:\n  - {name: base, selfish_margin: null}\n  - {name: bad, max_steps: 0}\n")
    error = cli_error(capsys, "compare", str(recipe))
    assert "max_steps=0 trains nothing" in error and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="max_steps=0"):
        compare(load_recipe(recipe))


from hf_selfish.cli import main  # noqa: E402  (after the helpers, as test_bad_input does)
