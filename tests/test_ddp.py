"""Two-process CPU DDP (gloo) through `accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml`.

A few training steps of a tiny GPT-2 on 2 processes; the eval set (13 blocks) does not split evenly over
2 processes x 4 per batch, so the distributed sampler pads it with 3 duplicated blocks that the Trainer must
drop when it gathers the per-position statistics. The bucket metrics logged by the 2-process run must equal
those of a 1-process evaluation of the saved model, and the positions they count must be the eval set's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.training_args import ParallelMode

from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import build_trainer, check_distributed_launch, prepare_data
from hf_selfish.metric_names import split_metric_key

from .conftest import REPO_ROOT
from .test_any_causal_lm import BLOCK_SIZE, TINY_CONFIGS, write_corpus

EVAL_BLOCKS = 13  # odd: 2 processes x 4 per batch pad it to 16
RECIPE = f"""
tokenizer_name: char
block_size: {BLOCK_SIZE}
model_type: gpt2
config_overrides: {TINY_CONFIGS["gpt2"]}
max_steps: 3
per_device_train_batch_size: 4
per_device_eval_batch_size: 4
max_eval_samples: {EVAL_BLOCKS}
learning_rate: 1.0e-2
eval_strategy: steps
eval_steps: 2
logging_steps: 1
save_strategy: "no"
ddp_find_unused_parameters: false
report_to: none
use_cpu: true
disable_tqdm: true
seed: 0
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on timeout kill it and its workers."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def group_metrics(entry: dict) -> dict:
    """The ``eval_{group}_{stat}`` metrics of a log entry (not eval_loss, runtime or speed)."""
    return {k: v for k, v in entry.items() if split_metric_key(k) is not None}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Train with `accelerate launch` on 2 gloo processes; returns (recipe path, output dir, completed process)."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = write_corpus(root / "corpus.txt", n_lines=300)
    recipe = root / "ddp.yaml"
    recipe.write_text(RECIPE + f"train_file: {corpus}\n")
    out = root / "out"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "recipes" / "accelerate" / "cpu_ddp.yaml"),
        "--main_process_port",
        str(free_port()),
        str(REPO_ROOT / "scripts" / "train.py"),
        str(recipe),
        "--output_dir",
        str(out),
    ]
    return recipe, out, launch(command)


@pytest.mark.slow
def test_two_process_run_finishes(ddp_run):
    _, out, done = ddp_run
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert done.stdout.count("run: eval_loss") == 2  # one line per process
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    record = json.loads((out / "run_result.json").read_text())
    assert record["status"] == "finished" and record["final"]["step"] == 3


@pytest.mark.slow
def test_bucket_metrics_equal_a_one_process_evaluation(ddp_run, tmp_path):
    recipe, out, done = ddp_run
    assert done.returncode == 0, done.stderr[-4000:]
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e][-1]
    assert logged["step"] == 3

    args = load_recipe(recipe, {"output_dir": str(tmp_path / "eval")}).arguments()
    data = prepare_data(args.model, args.data)
    model = AutoModelForCausalLM.from_pretrained(out)
    single = build_trainer(args, model, data).evaluate()  # the same groups, one process

    distributed, reference = group_metrics(logged), group_metrics(single)
    assert set(distributed) == set(reference) and len(reference) >= 10
    for key, value in reference.items():
        if isinstance(value, int):
            assert distributed[key] == value, key
        else:
            assert distributed[key] == pytest.approx(value, abs=1e-5), key

    # the duplicated tail blocks were dropped: every eval position counted exactly once
    blocks = torch.tensor(data.lm.datasets["validation"]["input_ids"])  # [13, 32]
    assert blocks.shape == (EVAL_BLOCKS, BLOCK_SIZE)
    tokens = {k: v for k, v in distributed.items() if k.endswith("_tokens")}
    assert sum(tokens.values()) == EVAL_BLOCKS * (BLOCK_SIZE - 1)
    # and the NLL they average is the model's cross-entropy on those positions
    with torch.no_grad():
        logits = model(input_ids=blocks).logits  # [13, 32, V]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), blocks[:, 1:].flatten(), reduction="sum").item()
    groups = [k[: -len("_tokens")] for k in tokens]
    logged_sum = sum(
        distributed[f"{g}_nll_weighted"] * distributed[f"{g}_tokens"] for g in groups if tokens[f"{g}_tokens"]
    )
    assert logged_sum == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize(
    "world_size, mode, refused",
    [
        ("2", ParallelMode.NOT_PARALLEL, True),  # CPU processes without use_cpu: each would train alone
        ("2", ParallelMode.DISTRIBUTED, False),
        (None, ParallelMode.NOT_PARALLEL, False),
    ],
)
def test_a_launch_that_would_not_be_distributed_is_refused(monkeypatch, world_size, mode, refused):
    if world_size is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world_size)
    training = SimpleNamespace(parallel_mode=mode, device="cpu")
    if refused:
        with pytest.raises(ValueError, match="2 processes were launched, .* pass --use_cpu true"):
            check_distributed_launch(training)
    else:
        check_distributed_launch(training)
