"""The fused selfish loss inside model.forward on two gloo processes equals one unfused process.

FSDP2 (`fully_shard`, four placements of the head) and DDP: each rank trains on half the batch with
`num_items_in_batch` = the labelled positions of the whole batch (`tests/fused_steps_worker.py`). The
reference is computed here, independently: one process, the model's full logits, the unfused
`selfish_causal_lm_loss` on the whole batch, the same SGD step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .fused_steps_worker import step_model, unfused_reference_step
from .tolerances import assert_close_scaled
from .torchrun import run_two_processes

WORKER = Path(__file__).with_name("fused_steps_worker.py")
FSDP2_LAYOUTS = ("root", "tail", "tied", "head", "head_bf16")
TOLERANCE = {"head_bf16": 3e-2}  # bf16 compute against the float32 reference; a wrong gradient is off by ~100%


def reference_step(layout: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameters after one unfused selfish SGD step on the whole batch, in this process."""
    model = step_model(layout)
    return unfused_reference_step(model)


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory) -> Path:
    """Run every FSDP2 layout and DDP once (two torchrun launches); returns the folder of their results."""
    out = tmp_path_factory.mktemp("fused_steps")
    run_two_processes(WORKER, "fsdp2", ",".join(FSDP2_LAYOUTS), out)
    run_two_processes(WORKER, "ddp", "root", out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode, layout", [("fsdp2", layout) for layout in FSDP2_LAYOUTS] + [("ddp", "root")])
def test_two_process_fused_step_equals_one_process_unfused_step(two_process_steps, mode, layout, one_thread):
    result = torch.load(two_process_steps / f"{mode}_{layout}.pt")
    loss, params = reference_step(layout)
    tol = TOLERANCE.get(layout, 1e-5)
    assert_close_scaled(result["loss"], loss, rel=tol)
    initial = dict(step_model(layout).named_parameters())
    assert set(result["params"]) == set(params)
    for name, expected in params.items():
        assert not torch.equal(expected, initial[name]), f"{name} did not move: the test would not see a wrong step"
        assert_close_scaled(result["params"][name], expected, rel=tol, msg=name)


def test_a_zero3_partitioned_head_is_refused_and_a_gathered_one_passes_through():
    from hf_selfish.distributed import whole_head_parameters

    head = torch.nn.Linear(4, 6, bias=True)
    weight, bias = whole_head_parameters(head)
    assert weight is head.weight and bias is head.bias  # whole (one process, DDP): the parameters themselves
    # what DeepSpeed ZeRO-3 attaches to the parameters it partitions; gathered (inside the engine's forward)
    head.weight.ds_id, head.weight.ds_numel, head.weight.ds_shape = 7, 24, torch.Size([6, 4])
    weight, _ = whole_head_parameters(head)
    assert weight is head.weight
    head.weight.data = torch.empty(0)  # partitioned: outside its module's forward the data is a (0,) placeholder
    with pytest.raises(ValueError, match=r"partitioned by DeepSpeed ZeRO-3 \(local shape \(0,\), whole \(6, 4\)\)"):
        whole_head_parameters(head)


@pytest.mark.parametrize(
    "zero, fused, readers, refused",
    [
        ({"stage": 3, "offload_param": {"device": "cpu"}}, True, (), "untested with DeepSpeed ZeRO-3 offload_param"),
        ({"stage": 3, "offload_param": {"device": "nvme"}}, True, (), "ZeRO-3 offload_param \\(device='nvme'\\)"),
        ({"stage": 3, "offload_param": {"device": "cpu"}}, False, (), None),  # unfused: the model's own head
        ({"stage": 3, "offload_param": {"device": "none"}}, True, (), None),
        ({"stage": 3, "offload_optimizer": {"device": "cpu"}}, True, (), None),
        ({"stage": 3}, True, ("agg (adaptive gradient gating)",), "agg \\(adaptive gradient gating\\) reads"),
        ({"stage": 2}, True, ("agg (adaptive gradient gating)",), None),  # ZeRO-2 keeps parameters whole
        ({"stage": 2, "offload_param": {"device": "cpu"}}, True, (), None),  # ignored by DeepSpeed below stage 3
        ({"stage": 3}, True, (), None),
    ],
)
def test_untested_deepspeed_settings_are_refused_by_name(zero, fused, readers, refused):
    from hf_selfish.distributed import refuse_untested_deepspeed

    config = {"zero_optimization": zero}
    if refused:
        with pytest.raises(ValueError, match=refused):
            refuse_untested_deepspeed(config, fused=fused, head_readers=readers)
    else:
        refuse_untested_deepspeed(config, fused=fused, head_readers=readers)


@pytest.mark.parametrize(
    "loss_name, fused, scenarios, readers",
    [
        ("selfish", True, False, []),
        ("selfish", False, False, []),
        ("agg", False, False, ["agg (adaptive gradient gating)"]),
        ("selfish_head", False, False, ["selfish_head"]),
        ("selfish_hidden", False, False, ["selfish_hidden"]),
        ("selfish_head", True, False, []),  # fused: inside the patched forward, where ZeRO-3 gathers the head
        ("focal", False, False, []),  # a loss of the logits
        ("selfish", True, True, ["the gradient scenarios (GradientScenarioCallback, selfish_log_scenarios_every)"]),
    ],
)
def test_zero3_head_readers_are_named(loss_name, fused, scenarios, readers):
    """What SelfishTrainer hands to refuse_untested_deepspeed: the features reading the head outside forward."""
    from types import SimpleNamespace

    from hf_selfish import SelfishTrainer
    from hf_selfish.scenario_recorder import GradientScenarioCallback

    callbacks = [GradientScenarioCallback(1)] if scenarios else []
    trainer = SimpleNamespace(
        args=SimpleNamespace(loss_name=loss_name, selfish_fused=fused),
        callback_handler=SimpleNamespace(callbacks=callbacks),
    )
    assert SelfishTrainer._head_readers(trainer) == readers
