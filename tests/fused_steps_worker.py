"""One fused selfish training step on each of two gloo processes (FSDP2 or DDP); rank 0 saves the result.

    torchrun --nproc_per_node 2 tests/fused_steps_worker.py {fsdp2|ddp} LAYOUT[,LAYOUT...] OUT_DIR

Each rank trains on its half of `step_batch()` with `num_items_in_batch` = the labelled positions of the
whole batch, scales the loss by the world size (as `Trainer` does when it averages tokens across devices:
DDP and FSDP2 average gradients), takes one SGD step and saves `OUT_DIR/LAYOUT.pt`: the summed loss of
both ranks and every parameter, whole. `tests/test_distributed_fused.py` compares them with a
one-process unfused step on the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.tiny_models import tiny_model
from tests.torchrun import run_each_layout

MARGIN = 1.0  # masks ~30% of the logits (below): a wrong mask would show
INIT_STD = 0.2  # transformers' 0.02 gives near-uniform logits, which no margin of 1 masks
VOCAB = 97
LR = 0.5  # SGD: large, so a wrong gradient moves the parameters visibly


def step_model(layout: str) -> torch.nn.Module:
    """The tiny Llama every run starts from (same seed on every rank and in the reference)."""
    tied = layout == "tied"
    return tiny_model("llama", VOCAB, seed=0, num_hidden_layers=1, tie_word_embeddings=tied, initializer_range=INIT_STD)


def step_batch() -> dict[str, torch.Tensor]:
    """4 right-padded rows of 12 tokens: ranks get 2 rows each, with different numbers of labels."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, VOCAB, (4, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # rank 0 has 2 padded positions fewer than rank 1
    attention_mask[2, 4:] = 0
    attention_mask[3, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def unfused_reference_step(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, parameters)`` after one unfused selfish SGD step of ``model`` on the whole batch, in this process:
    the reference every multi-process fused step (DDP, FSDP2, DeepSpeed) must equal."""
    from hf_selfish.ops.loss import selfish_causal_lm_loss

    model.train()
    batch = step_batch()
    labels = batch.pop("labels")
    logits = model(**batch).logits  # [4, 12, V], soft-capped by the model itself where it caps
    loss, masked_fraction = selfish_causal_lm_loss(logits, labels, MARGIN, return_masked_fraction=True)
    assert 0.1 < masked_fraction < 0.9  # the margin masks: the comparison tests the selfish loss, not CE
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=LR).step()
    return loss.detach(), {name: p.detach() for name, p in model.named_parameters()}


def label_count(labels: torch.Tensor) -> int:
    """Positions with a loss after the causal shift (what Trainer passes as num_items_in_batch)."""
    return int((labels[:, 1:] != -100).sum())


def shard(model: torch.nn.Module, mode: str, layout: str) -> torch.nn.Module:
    """Wrap ``model`` for ``mode``; ``layout`` picks the FSDP2 units of the embedding, final norm and head."""
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if layout == "head_bf16":  # the same units, computing in bf16 (the sharded parameters stay float32)
        fully_shard = _with_policy(fully_shard, MixedPrecisionPolicy(param_dtype=torch.bfloat16))
    for layer in model.model.layers:
        fully_shard(layer)
    if layout == "tail":  # accelerate's FSDP2 preparation: [final norm, head] kept unsharded after forward
        fully_shard(model.model.embed_tokens)
        fully_shard([model.model.norm, model.lm_head], reshard_after_forward=False)
    elif layout == "tied":  # accelerate with tied embeddings: the shared weight in one unit
        fully_shard([model.model.norm, model.model.embed_tokens, model.lm_head], reshard_after_forward=False)
    elif layout in ("head", "head_bf16"):  # the head alone, resharded after its forward: a DTensor shard in the loss
        fully_shard(model.lm_head, reshard_after_forward=True)
    fully_shard(model)  # "root": the head is in the root unit
    return model


def _with_policy(fully_shard, policy):
    def shard_with_policy(module, **kwargs):
        return fully_shard(module, mp_policy=policy, **kwargs)

    return shard_with_policy


def whole(param: torch.Tensor) -> torch.Tensor:
    """A parameter as a whole tensor (FSDP2 keeps DTensor shards)."""
    return (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().clone()


def run(mode: str, layout: str, out_dir: Path) -> None:
    from hf_selfish import apply_selfish_loss

    rank, world = dist.get_rank(), dist.get_world_size()
    model = step_model(layout)
    apply_selfish_loss(model, margin=MARGIN)
    wrapped = shard(model, mode, layout)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=LR)
    batch = step_batch()
    rows = slice(2 * rank, 2 * rank + 2)
    local = {key: value[rows] for key, value in batch.items()}
    wrapped.train()
    loss = wrapped(**local, num_items_in_batch=label_count(batch["labels"])).loss  # this rank's share of the mean
    (loss * world).backward()  # DDP and FSDP2 average gradients over ranks
    optimizer.step()
    total = loss.detach().clone()
    dist.all_reduce(total)
    params = {name: whole(p) for name, p in model.named_parameters()}
    if rank == 0:
        torch.save({"loss": total, "params": params}, out_dir / f"{mode}_{layout}.pt")


def main() -> None:
    layouts, out_dir = sys.argv[2].split(","), Path(sys.argv[3])
    run_each_layout(run, sys.argv[1], layouts, out_dir, lambda: dist.init_process_group("gloo"))


if __name__ == "__main__":
    main()
