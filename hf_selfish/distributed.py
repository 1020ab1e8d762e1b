"""The LM head's parameters as whole tensors, under FSDP2 too: what the fused loss multiplies by.

The fused loss reads ``lm_head.weight`` itself instead of calling ``lm_head(hidden)``. Under DDP and
in one process that weight is whole. Under FSDP2 (``torch.distributed.fsdp.fully_shard``) it is whole
only while its FSDP unit is unsharded:

- the head in the root unit, or in accelerate's tail unit ``[final norm, lm_head]`` (which is not
  resharded after forward): inside the model's forward it is an ordinary tensor; nothing to do;
- the head as its own unit, resharded after its forward: the weight is a ``DTensor`` shard here.
  :func:`whole_head_parameters` all-gathers it through an autograd function whose backward averages
  the rank-local gradient over the mesh and keeps this rank's shard: the reduction FSDP2 applies to
  every parameter it manages (a mean over data-parallel ranks). ``DTensor.full_tensor()`` alone
  would not: its backward takes the local shard of a gradient it assumes equal on every rank, so each
  rank would keep the gradient of its own micro-batch only.

DeepSpeed ZeRO-3 partitions parameters too (``param.ds_id``; outside its module's forward a parameter
is an empty ``(0,)`` tensor), but needs nothing from here: inside the engine's forward, reading
``lm_head.weight`` through the module attribute makes DeepSpeed gather it and register it as an
external parameter of the module whose forward runs (the patched causal LM): it stays whole for the
fused loss, is gathered again for its backward, and its gradient is reduce-scattered into this rank's
partition like any other. :func:`whole_parameter` passes a gathered ZeRO-3 parameter through and
refuses one still partitioned (read outside the engine's forward, or through a reference kept from
before) rather than train on an empty weight. ZeRO-2 keeps parameters whole: nothing to do.
A PEFT adapter on the head (``target_modules`` with ``lm_head``) is refused too
(:func:`refuse_adapted_head`): the head is then ``weight + B @ A`` and the fused loss, which multiplies by
``weight`` alone, would neither apply nor train the adapter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_deepspeed_distributed",
    "refuse_adapted_head",
    "refuse_untested_deepspeed",
    "whole_head_parameters",
    "whole_parameter",
]


def refuse_adapted_head(head: nn.Module, model_name: str) -> None:
    """Raise a ``ValueError`` naming the module when a PEFT adapter wraps the LM head (``head.base_layer``)."""
    if isinstance(getattr(head, "base_layer", None), nn.Module):  # peft's BaseTunerLayer keeps the wrapped layer
        raise ValueError(
            f"{model_name}'s LM head (get_output_embeddings()) is {type(head).__module__}.{type(head).__name__}, "
            "a PEFT adapter layer: the fused selfish loss multiplies by the head's weight alone and would ignore "
            "the adapter. Remove 'lm_head' from the LoraConfig's target_modules, or use "
            "apply_selfish_loss(model, fused=False) (selfish_fused=False)."
        )


def init_deepspeed_distributed(args) -> None:
    """Start DeepSpeed's process group before a model is built for ``args.deepspeed`` (a Trainer's arguments).

    At ZeRO-3 ``from_pretrained`` / ``from_config`` build the model under ``deepspeed.zero.Init``, which
    partitions it over DeepSpeed's process group. Launched by ``torchrun`` or ``deepspeed`` with
    ``use_cpu=True``, nothing has started that group yet, and ``zero.Init`` would fail on a world of one
    ("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size"). This sets
    up the Trainer's devices (``args.device``: gloo on CPUs) and hands that group to DeepSpeed. A no-op
    without ``args.deepspeed``, in one process, or when DeepSpeed's group exists (``accelerate launch``).
    """
    if not getattr(args, "deepspeed", None) or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    import deepspeed  # only here: the core never needs deepspeed otherwise

    if deepspeed.comm.is_initialized():
        return
    args.device  # noqa: B018  (the Trainer's process group: gloo for CPU processes)
    deepspeed.init_distributed(dist_backend="gloo" if args.use_cpu else None)


def refuse_untested_deepspeed(config: dict | None, *, fused: bool, head_readers: Sequence[str] = ()) -> None:
    """Raise a ``ValueError`` naming what is untested under the DeepSpeed ``config`` (a ZeRO config dict).

    ZeRO-2 and ZeRO-3 (parameters partitioned, in memory) are tested with the selfish loss, fused and
    unfused, on two processes (tests/test_deepspeed_fused.py). Refused at ZeRO-3:

    - the fused loss with ``offload_param`` (parameters kept on the CPU or NVMe between uses): untested;
    - ``head_readers``: features that read the LM head's weight outside the model's forward (AGG, the
      gradient scenarios), where ZeRO-3 keeps it partitioned (an empty tensor).
    """
    zero = (config or {}).get("zero_optimization") or {}
    if str(zero.get("stage", 0)) != "3":
        return
    if head_readers:  # the first is named: the run stops there
        raise ValueError(
            f"{head_readers[0]} reads the LM head's weight outside the model's forward, where DeepSpeed ZeRO-3 keeps it "
            "partitioned; it is untested under ZeRO-3. Use ZeRO-2 (zero_stage: 2), FSDP2 or DDP for it."
        )
    device = str((zero.get("offload_param") or {}).get("device", "none")).lower()
    if fused and device not in ("none", "auto"):
        raise ValueError(
            f"selfish_fused is untested with DeepSpeed ZeRO-3 offload_param (device={device!r}): the fused loss "
            "reads the LM head's partitioned weight itself. Remove zero_optimization.offload_param (offload_optimizer "
            "is fine), or train with selfish_fused=False"
        )


def whole_head_parameters(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [V, d], bias [V] or None)`` of ``head`` as whole tensors whose gradients reach the parameters."""
    refuse_adapted_head(head, "the model")
    dtype = _fsdp_param_dtype(head)
    return whole_parameter(head.weight, "weight", dtype), whole_parameter(getattr(head, "bias", None), "bias", dtype)


def whole_parameter(
    param: torch.Tensor | None, name: str = "weight", dtype: torch.dtype | None = None
) -> torch.Tensor | None:
    """``param`` itself when whole (ZeRO-3's gathered too); the all-gathered tensor of an FSDP2 ``DTensor`` shard.

    ``dtype``: the compute dtype of an FSDP2 ``MixedPrecisionPolicy`` (its ``param_dtype``), which FSDP2
    would have cast the unsharded parameter to; the shard itself keeps the storage dtype.
    """
    if param is None:
        return None
    if _is_zero3_partitioned(param):
        raise ValueError(
            f"the LM head's {name} is partitioned by DeepSpeed ZeRO-3 (local shape {tuple(param.shape)}, whole "
            f"{tuple(param.ds_shape)}): the fused selfish loss reads it inside the DeepSpeed engine's forward, where "
            "DeepSpeed gathers it. Call the model through the engine (deepspeed.initialize, or the Trainer with "
            "deepspeed=...), or train unfused (apply_selfish_loss(model, fused=False), selfish_fused=False)."
        )
    if _is_dtensor(param):
        whole = _GatherShards.apply(param)
        return whole if dtype is None else whole.to(dtype)  # the cast's backward returns the gradient in fp32
    return param


def _is_zero3_partitioned(param: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter not gathered now (``ds_id`` tags it; its data is then empty)."""
    if not hasattr(param, "ds_id"):
        return False
    return param.numel() != getattr(param, "ds_numel", param.numel())  # NOT_AVAILABLE: a (0,) placeholder


def _fsdp_param_dtype(module: nn.Module) -> torch.dtype | None:
    """``param_dtype`` of the FSDP2 mixed-precision policy of ``module``'s own unit (None: none, or not a unit)."""
    get_state = getattr(module, "_get_fsdp_state", None)  # FSDPModule's (private) accessor, torch >= 2.6
    policy = getattr(get_state(), "_mp_policy", None) if callable(get_state) else None
    return getattr(policy, "param_dtype", None)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (imported only when torch.distributed is built)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


class _GatherShards(torch.autograd.Function):
    """Forward: the whole tensor of a sharded ``DTensor``. Backward: the mean gradient's local shard.

    Each rank's loss covers its own micro-batch, so each rank's gradient of the whole weight differs;
    summing them over the mesh and dividing by its size gives FSDP2's default data-parallel mean.
    """

    @staticmethod
    def forward(ctx, shard):  # shard: DTensor [V, d] sharded over the mesh -> torch.Tensor [V, d]
        ctx.mesh, ctx.placements = shard.device_mesh, shard.placements
        return shard.full_tensor()

    @staticmethod
    def backward(ctx, grad):  # grad: torch.Tensor [V, d], this rank's micro-batch only
        from torch.distributed.tensor import DTensor, Replicate

        mesh = ctx.mesh
        grad = grad.contiguous().clone()  # all_reduce writes in place; autograd may reuse its buffer
        for dim in range(mesh.ndim):  # every mesh dimension: HSDP replicates over one and shards over the other
            dist.all_reduce(grad, group=mesh.get_group(dim))
        grad = grad / mesh.size()
        whole = DTensor.from_local(grad, mesh, [Replicate()] * mesh.ndim, run_check=False)
        return whole.redistribute(mesh, ctx.placements)  # Replicate -> Shard: a local slice, no communication
