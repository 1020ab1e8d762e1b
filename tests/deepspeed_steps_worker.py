"""One selfish training step under DeepSpeed ZeRO on each of two gloo processes; rank 0 saves the result.

    torchrun --nproc_per_node 2 tests/deepspeed_steps_worker.py STAGE LAYOUT[,LAYOUT...] OUT_DIR

The model is patched with ``apply_selfish_loss`` (fused, or unfused for the ``unfused`` layout) and
wrapped by ``deepspeed.initialize`` with ``stage3_param_persistence_threshold: 0``, so that at stage 3
even the tiny head is partitioned. Each rank trains on its half of ``step_batch()`` with
``num_items_in_batch`` = the labelled positions of the whole batch, scales the loss by the world size
(DeepSpeed averages gradients over ranks, as the Trainer assumes when it averages tokens across
devices), takes one SGD step and saves ``OUT_DIR/zeroSTAGE_LAYOUT.pt``: the summed loss of both ranks,
every parameter gathered whole, and how the head was stored. One step only: DeepSpeed's ZeRO optimizers
wrap an "untested" client optimizer such as SGD, and later steps drift from one process even for the
stock Trainer. ``tests/test_deepspeed_fused.py`` compares with a one-process unfused step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, Gemma2Config

from tests.fused_steps_worker import INIT_STD, LR, MARGIN, VOCAB, label_count, step_batch
from tests.tiny_models import tiny_model
from tests.torchrun import run_each_layout

LAYOUTS = ("untied", "tied", "softcap", "unfused")


def layout_model(layout: str) -> torch.nn.Module:
    """The tiny model every run of ``layout`` starts from (same seed on every rank and in the reference)."""
    if layout == "softcap":  # Gemma 2: tied head, logits soft-capped at 3 (the fused loss applies the cap itself)
        torch.manual_seed(0)
        config = Gemma2Config(
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            hidden_size=32,
            head_dim=16,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=VOCAB,
            final_logit_softcapping=3.0,
            initializer_range=INIT_STD,
            attention_dropout=0.0,
        )
        return AutoModelForCausalLM.from_config(config)
    tied = layout == "tied"
    return tiny_model("llama", VOCAB, seed=0, num_hidden_layers=1, tie_word_embeddings=tied, initializer_range=INIT_STD)


def ds_config(stage: int) -> dict:
    """Two ranks x 2 rows, fp32, the head partitioned at stage 3 however small."""
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "train_batch_size": 4,
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 by default; the reference does not clip
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def head_storage(head_weight: torch.Tensor) -> dict[str, int]:
    """How the head's weight is stored outside any forward: its local numel, and ZeRO-3's whole and partition."""
    partition = getattr(head_weight, "ds_tensor", None)
    return {
        "local_numel": head_weight.numel(),
        "ds_numel": getattr(head_weight, "ds_numel", -1),
        "partition_numel": -1 if partition is None else partition.numel(),
    }


def gathered_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole (ZeRO-3 gathers them for the copy; ZeRO-2 keeps them whole)."""
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: p.detach().clone() for name, p in model.named_parameters()}


def run(stage: int, layout: str, out_dir: Path) -> None:
    from hf_selfish import apply_selfish_loss

    rank, world = dist.get_rank(), dist.get_world_size()
    model = layout_model(layout)
    apply_selfish_loss(model, margin=MARGIN, fused=layout != "unfused")
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=ds_config(stage)
    )
    storage = head_storage(model.get_output_embeddings().weight)
    batch = step_batch()
    rows = slice(2 * rank, 2 * rank + 2)
    local = {key: value[rows] for key, value in batch.items()}
    engine.train()
    outputs = engine(**local, num_items_in_batch=label_count(batch["labels"]))  # this rank's share of the mean
    engine.backward(outputs.loss * world)  # DeepSpeed averages gradients over ranks
    engine.step()
    total = outputs.loss.detach().clone()
    dist.all_reduce(total)
    params = gathered_parameters(model)
    result = {"loss": total, "params": params, "head": storage, "logits_built": outputs.logits is not None}
    if rank == 0:
        torch.save(result, out_dir / f"zero{stage}_{layout}.pt")
    engine.destroy()


def main() -> None:
    layouts, out_dir = sys.argv[2].split(","), Path(sys.argv[3])
    run_each_layout(run, int(sys.argv[1]), layouts, out_dir, lambda: deepspeed.init_distributed(dist_backend="gloo"))


if __name__ == "__main__":
    main()
