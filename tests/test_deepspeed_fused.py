"""The selfish loss under DeepSpeed ZeRO-2 and ZeRO-3 on two gloo processes equals one unfused process.

`tests/deepspeed_steps_worker.py` trains one step with `apply_selfish_loss` (fused: tied and untied
heads, a soft-capped Gemma 2 head; and unfused) under `deepspeed.initialize`; at stage 3 the head is
partitioned (`stage3_param_persistence_threshold: 0`), and the fused loss reads it whole inside the
engine's forward. The reference is computed here, independently: one process, the model's full logits
(soft cap included), the unfused `selfish_causal_lm_loss` on the whole batch, the same SGD step.
`tests/deepspeed_trainer_worker.py` does the same through `SelfishTrainer` with
`SelfishTrainingArguments(use_cpu=True, deepspeed=...)`, fused and unfused, built under `zero.Init` at stage 3.
Skipped where deepspeed is not installed (`pip install hf-selfish[deepspeed]`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .fused_steps_worker import VOCAB, unfused_reference_step
from .tolerances import assert_close_scaled
from .torchrun import run_two_processes

pytest.importorskip("deepspeed")

from .deepspeed_steps_worker import LAYOUTS, layout_model  # noqa: E402  (imports deepspeed)

WORKER = Path(__file__).with_name("deepspeed_steps_worker.py")
TRAINER_WORKER = Path(__file__).with_name("deepspeed_trainer_worker.py")
STAGES = (2, 3)
TRAINER_LAYOUTS = ("untied", "tied", "unfused")  # selfish_fused=True, True, False


def reference_step(layout: str, initial: dict[str, torch.Tensor] | None = None):
    """``(loss, parameters)`` after one unfused selfish SGD step on the whole batch, in this process.

    ``initial``: parameters to start from (a model built under ``zero.Init`` draws other random weights).
    """
    model = layout_model(layout)
    if initial is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(initial[name])
    return unfused_reference_step(model)


@pytest.fixture(scope="module")
def deepspeed_steps(tmp_path_factory) -> Path:
    """Every layout at ZeRO-2 and at ZeRO-3 (two torchrun launches); returns the folder of their results."""
    out = tmp_path_factory.mktemp("deepspeed_steps")
    for stage in STAGES:
        run_two_processes(WORKER, str(stage), ",".join(LAYOUTS), out, timeout=600)
    return out


@pytest.fixture(scope="module")
def deepspeed_trainer_steps(tmp_path_factory) -> Path:
    """`SelfishTrainer` at ZeRO-2 and ZeRO-3, each layout (two torchrun launches); the folder of the results."""
    out = tmp_path_factory.mktemp("deepspeed_trainer_steps")
    for stage in STAGES:
        run_two_processes(TRAINER_WORKER, str(stage), ",".join(TRAINER_LAYOUTS), out, timeout=600)
    return out


def assert_head_storage(head: dict[str, int], stage: int) -> None:
    """ZeRO-3: the head partitioned (empty outside its forward, half of it, rounded up, on each rank); ZeRO-2: whole."""
    if stage == 3:
        assert head["local_numel"] == 0 and head["ds_numel"] == VOCAB * 32
        assert head["partition_numel"] == (VOCAB * 32 + 1) // 2
    else:
        assert head["local_numel"] == VOCAB * 32 and head["ds_numel"] == -1


def assert_step_matches(result: dict, loss: torch.Tensor, params: dict, initial: dict) -> None:
    """The two-process loss and every updated parameter equal the reference's, in float32."""
    assert_close_scaled(torch.as_tensor(result["loss"]), loss, rel=1e-5)
    assert set(result["params"]) == set(params)
    for name, expected in params.items():
        assert not torch.equal(expected, initial[name]), f"{name} did not move: the test would not see a wrong step"
        assert_close_scaled(result["params"][name], expected, rel=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_step_equals_one_process_unfused_step(deepspeed_steps, stage, layout, one_thread):
    result = torch.load(deepspeed_steps / f"zero{stage}_{layout}.pt")
    assert_head_storage(result["head"], stage)
    assert result["logits_built"] == (layout == "unfused")  # fused: the loss came from the patch, no logits
    loss, params = reference_step(layout)
    initial = {name: p.detach() for name, p in layout_model(layout).named_parameters()}
    assert_step_matches(result, loss, params, initial)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("layout", TRAINER_LAYOUTS)
def test_selfish_trainer_zero_step_equals_one_process_unfused_step(deepspeed_trainer_steps, stage, layout, one_thread):
    result = torch.load(deepspeed_trainer_steps / f"trainer_zero{stage}_{layout}.pt")
    assert result["engine"] == "DeepSpeedEngine"  # the Trainer really trained through DeepSpeed
    assert_head_storage(result["head"], stage)  # at stage 3 built partitioned, under zero.Init
    loss, params = reference_step("tied" if layout == "tied" else "untied", result["initial"])
    assert_step_matches(result, loss, params, result["initial"])  # the loss: what the Trainer logged


def torchrun_train(root: Path, ds_config: str) -> Path:
    """`torchrun scripts/train.py RECIPE --deepspeed recipes/deepspeed/{ds_config}`, fused; returns its output dir."""
    import sys

    from .conftest import REPO_ROOT
    from .test_ddp import free_port, launch

    out = root / f"torchrun_{ds_config}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    command += [str(REPO_ROOT / "scripts" / "train.py"), str(root / "recipe.yaml"), "--output_dir", str(out)]
    command += ["--selfish_fused", "true", "--deepspeed", str(REPO_ROOT / "recipes" / "deepspeed" / ds_config)]
    done = launch(command)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def accelerate_zero3_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """recipes/accelerate/deepspeed_zero3_cpu.yaml fused and unfused, and torchrun with
    recipes/deepspeed/zero3.json fused (three launches)."""
    from .test_any_causal_lm import write_corpus
    from .test_fsdp2_trainer import RECIPE, train

    root = tmp_path_factory.mktemp("deepspeed_accelerate")
    corpus = write_corpus(root / "corpus.txt", n_lines=300)
    (root / "recipe.yaml").write_text(RECIPE + f"train_file: {corpus}\n")
    fused = train(root, "deepspeed_zero3_cpu.yaml", fused=True)
    unfused = train(root, "deepspeed_zero3_cpu.yaml", fused=False)
    return fused, unfused, torchrun_train(root, "zero3.json")


@pytest.mark.slow
def test_zero3_recipes_fused_runs_equal_the_unfused_run(accelerate_zero3_runs):
    """The recipes as a user runs them (scripts/train.py, three AdamW steps): fused equals the model's own logits,
    under ``accelerate launch`` (the YAML) and under ``torchrun`` (``--deepspeed`` with the JSON).

    Both runs build the model under ``zero.Init`` (other random weights than DDP's for the same seed), so
    the reference is the unfused run under the same config, not DDP.
    """
    from safetensors.torch import load_file

    from .test_fsdp2_trainer import STEPS, train_logs

    fused, unfused, torchrun = accelerate_zero3_runs
    expected_logs, expected = train_logs(unfused), load_file(unfused / "model.safetensors")
    assert len(expected_logs) == STEPS and "lm_head.weight" in expected  # zero3_save_16bit_model gathers them
    for run in (fused, torchrun):  # torchrun: the model built under zero.Init over the gloo group too
        logs = train_logs(run)
        assert len(logs) == STEPS
        for got, reference in zip(logs, expected_logs):
            assert got["loss"] == pytest.approx(reference["loss"], rel=1e-5)
            assert got["selfish_masked_fraction"] == pytest.approx(reference["selfish_masked_fraction"], abs=2e-6)
            assert 0.05 < reference["selfish_masked_fraction"] < 0.95  # the margin masks: not plain CE in disguise
        weights = load_file(run / "model.safetensors")
        assert set(weights) == set(expected)
        for name, tensor in expected.items():
            assert_close_scaled(weights[name], tensor, rel=1e-4, msg=name)  # three AdamW steps, as for FSDP2
