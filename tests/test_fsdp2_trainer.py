"""`SelfishTrainer(selfish_fused=True)` under accelerate's FSDP2 (two CPU processes) trains as unfused DDP does.

Two `accelerate launch` runs of `scripts/train.py` on the same recipe and data: FSDP2 with the fused loss
(`recipes/accelerate/fsdp2_cpu.yaml`: accelerate's own sharding, decoder layers + [final norm, head] units)
and DDP with the unfused loss of the full logits (`cpu_ddp.yaml`). Both shard the data alike, so every step
sees the same batches: the logged losses, masked fractions and the saved weights must agree.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from .conftest import REPO_ROOT
from .test_any_causal_lm import BLOCK_SIZE, TINY_CONFIGS, write_corpus
from .test_ddp import free_port, launch

STEPS = 3
RECIPE = f"""
tokenizer_name: char
block_size: {BLOCK_SIZE}
model_type: llama
config_overrides: {TINY_CONFIGS["llama"]},tie_word_embeddings=False,initializer_range=0.2
max_steps: {STEPS}
per_device_train_batch_size: 4
learning_rate: 1.0e-2
max_grad_norm: 0.0
logging_steps: 1
eval_strategy: "no"
save_strategy: "no"
report_to: none
use_cpu: true
disable_tqdm: true
seed: 0
selfish_margin: 1.0
"""


def train(root, config: str, fused: bool):
    """`accelerate launch --config_file recipes/accelerate/{config}` of a short run; returns its output dir."""
    out = root / f"{config}_{fused}"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "recipes" / "accelerate" / config),
        "--main_process_port",
        str(free_port()),
        str(REPO_ROOT / "scripts" / "train.py"),
        str(root / "recipe.yaml"),
        "--output_dir",
        str(out),
        "--selfish_fused",
        str(fused).lower(),
    ]
    done = launch(command)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    corpus = write_corpus(root / "corpus.txt", n_lines=300)
    (root / "recipe.yaml").write_text(RECIPE + f"train_file: {corpus}\n")
    return train(root, "fsdp2_cpu.yaml", fused=True), train(root, "cpu_ddp.yaml", fused=False)


def train_logs(out) -> list[dict]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.mark.slow
def test_fsdp2_fused_run_equals_ddp_unfused_run(runs):
    fsdp2, ddp = runs
    fsdp2_logs, ddp_logs = train_logs(fsdp2), train_logs(ddp)
    assert len(fsdp2_logs) == len(ddp_logs) == STEPS
    for sharded, reference in zip(fsdp2_logs, ddp_logs):
        assert sharded["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert sharded["selfish_masked_fraction"] == pytest.approx(reference["selfish_masked_fraction"], abs=2e-6)
        assert 0.05 < reference["selfish_masked_fraction"] < 0.95  # the margin masks: not plain CE in disguise
    weights, expected = load_file(fsdp2 / "model.safetensors"), load_file(ddp / "model.safetensors")
    assert set(weights) == set(expected) and "lm_head.weight" in expected
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
