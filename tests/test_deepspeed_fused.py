"""The selfish loss under DeepSpeed ZeRO-2 and ZeRO-3 on two gloo processes equals one unfused process.

`tests/deepspeed_steps_worker.py` trains one step with `apply_selfish_loss` (fused: tied and untied
heads, a soft-capped Gemma 2 head; and unfused) under `deepspeed.initialize`; at stage 3 the head is
partitioned (`stage3_param_persistence_threshold: 0`), and the fused loss reads it whole inside the
engine's forward. The reference is computed here, independently: one process, the model's full logits
(soft cap included), the unfused `selfish_causal_lm_loss` on the whole batch, the same SGD step.
Skipped where deepspeed is not installed (`pip install hf-selfish[deepspeed]`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_selfish.ops.loss import selfish_causal_lm_loss

from .fused_steps_worker import LR, MARGIN, VOCAB, step_batch
from .tolerances import assert_close_scaled
from .torchrun import run_two_processes

pytest.importorskip("deepspeed")

from .deepspeed_steps_worker import LAYOUTS, layout_model  # noqa: E402  (imports deepspeed)

WORKER = Path(__file__).with_name("deepspeed_steps_worker.py")
STAGES = (2, 3)


def reference_step(layout: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameters after one unfused selfish SGD step on the whole batch, in this process."""
    model = layout_model(layout)
    model.train()
    batch = step_batch()
    labels = batch.pop("labels")
    logits = model(**batch).logits  # [4, 12, V], soft-capped by the model itself where it caps
    loss, masked_fraction = selfish_causal_lm_loss(logits, labels, MARGIN, return_masked_fraction=True)
    assert 0.1 < masked_fraction < 0.9  # the margin masks: the comparison tests the selfish loss, not CE
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return loss.detach(), {name: p.detach() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def deepspeed_steps(tmp_path_factory) -> Path:
    """Every layout at ZeRO-2 and at ZeRO-3 (two torchrun launches); returns the folder of their results."""
    out = tmp_path_factory.mktemp("deepspeed_steps")
    for stage in STAGES:
        run_two_processes(WORKER, str(stage), ",".join(LAYOUTS), out, timeout=600)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_step_equals_one_process_unfused_step(deepspeed_steps, stage, layout, one_thread):
    result = torch.load(deepspeed_steps / f"zero{stage}_{layout}.pt")
    head = result["head"]
    if stage == 3:  # partitioned: empty outside its forward, half of it (rounded up) on each rank
        assert head["local_numel"] == 0 and head["ds_numel"] == VOCAB * 32
        assert head["partition_numel"] == (VOCAB * 32 + 1) // 2
    else:
        assert head["local_numel"] == VOCAB * 32 and head["ds_numel"] == -1
    assert result["logits_built"] == (layout == "unfused")  # fused: the loss came from the patch, no logits
    loss, params = reference_step(layout)
    assert_close_scaled(result["loss"], loss, rel=1e-5)
    initial = dict(layout_model(layout).named_parameters())
    assert set(result["params"]) == set(params)
    for name, expected in params.items():
        assert not torch.equal(expected, initial[name]), f"{name} did not move: the test would not see a wrong step"
        assert_close_scaled(result["params"][name], expected, rel=1e-5, msg=name)
