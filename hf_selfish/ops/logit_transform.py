"""Logit scaling and soft-capping inside the fused loss, with their chain rule.

Some causal LMs transform the head's output ``z = hidden @ weight.T`` before the loss:

    Cohere (``logit_scale``), Granite (``1 / logits_scaling``):  L = s * z
    Gemma 2 / 3 (``final_logit_softcapping``):                  L = cap * tanh(z / cap)

Applied in that order (scale, then cap): ``L = cap * tanh(s * z / cap)``. The selfish loss must mask
on ``L`` (the threshold is ``L[target] - margin``), so the transform runs on each chunk's logits
before the masking, and the logit gradient ``dloss/dL`` (exactly 0 on masked entries) becomes
``dloss/dz = dloss/dL * s * (1 - tanh^2(s * z / cap))``. The constant factor ``s`` folds into the
chunk's gradient scale; the softcap's factor needs ``[chunk, V]`` values, kept in a second buffer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["LogitTransform", "make_logit_transform"]


class LogitTransform(NamedTuple):
    """``L = softcap * tanh(scale * z / softcap)``; ``None`` fields are the identity."""

    scale: float | None = None
    softcap: float | None = None

    @property
    def gradient_factor(self) -> float:
        """The constant part of ``dL/dz``: ``scale`` (1 without scaling)."""
        return 1.0 if self.scale is None else self.scale

    def apply_(self, logits: torch.Tensor, derivative_out: torch.Tensor | None) -> torch.Tensor | None:
        """Transform ``logits [c, V]`` (float32) in place; return ``1 - tanh^2`` in ``derivative_out [c, V]``.

        Returns ``None`` without soft-capping (the derivative is then the constant ``gradient_factor``)
        or when ``derivative_out`` is ``None`` (no gradient wanted).
        """
        if self.scale is not None:
            logits.mul_(self.scale)
        if self.softcap is None:
            return None
        tanh = logits.div_(self.softcap).tanh_()  # [c, V] = tanh(s * z / cap), in place
        derivative = None
        if derivative_out is not None:
            derivative = torch.mul(tanh, tanh, out=derivative_out).neg_().add_(1.0)  # [c, V] = 1 - tanh^2
        logits.mul_(self.softcap)  # [c, V] = cap * tanh(...)
        return derivative

    def chain_(self, grad: torch.Tensor, derivative: torch.Tensor | None, rows=None, columns=None) -> None:
        """Multiply a block of ``dloss/dL`` (``rows`` x ``columns`` of the chunk; ``None``: all) by
        ``1 - tanh^2`` in place. The constant ``gradient_factor`` is applied through the gradient scale."""
        if derivative is None:
            return
        block = derivative if rows is None else derivative[rows]  # [r, V]
        if columns is not None:
            block = block.index_select(1, columns)  # [r, k]
        grad.mul_(block)


def make_logit_transform(scale: float | None, softcap: float | None) -> LogitTransform | None:
    """A :class:`LogitTransform`, or ``None`` when both are the identity; a ``ValueError`` names a bad value."""
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"logit_scale must be a finite positive number or None, got {scale!r}")
        if scale == 1.0:
            scale = None
    if softcap is not None:
        softcap = float(softcap)
        if not (math.isfinite(softcap) and softcap > 0):
            raise ValueError(f"softcap must be a finite positive number or None, got {softcap!r}")
    if scale is None and softcap is None:
        return None
    return LogitTransform(scale, softcap)
