"""How the tests compare tensors, so that the suite passes on every x86 CPU, not only the one it was written on.

Two kinds of comparison, and nothing in between:

* **Exactness** (fused vs unfused, patched vs reference, sparse vs dense, split vs whole): the same sums in
  another order. Run them in float64 (model and inputs in double; the ops compute in float64 for float64
  inputs), where reordering moves a result by ~1e-16 of its magnitude, and compare with
  :func:`assert_exact` at 1e-10: tight enough that any real difference (a masked entry kept, a row
  scaled twice) fails.
* **float32** (a path that only runs in float32, a multi-process step, a bf16/fp16 check): torch picks its
  kernels by the CPU's vector width (scalar, AVX2, AVX-512; ``ATEN_CPU_CAPABILITY``) and the thread count,
  and these change the order of float32 sums. Two equal computations then differ by a few units in the
  last place of the *largest terms that entered the sum*, not of each result: an entry that is small
  because of cancellation (a gradient summing positive and negative parts) can differ by 2e-6 absolute
  on one CPU and by nothing on another. A fixed ``atol=1e-6`` holds on one CPU and fails on the next, so
  :func:`assert_close_scaled` scales the absolute tolerance to the magnitude of the tensor compared
  (its largest absolute entry).

Never compare float32 data with a bare absolute tolerance below 1e-5: use one of the two.
"""

from __future__ import annotations

from typing import Any

import torch

EXACT = 1e-10  # float64: ~1e6 ulps of slack for reordered sums, far below any real difference
FLOAT32 = 1e-5  # float32: ~100 ulps of the largest term, several times what a change of kernel moves


def magnitude(tensor: torch.Tensor) -> float:
    """The largest finite absolute entry of ``tensor`` (1 for an empty or all-zero tensor)."""
    values = tensor.detach().double().abs()
    values = values[torch.isfinite(values)]
    largest = float(values.max()) if values.numel() else 0.0
    return largest if largest > 0 else 1.0


def assert_close_scaled(actual: Any, expected: Any, rel: float = FLOAT32, msg: Any = None) -> None:
    """``actual`` equals ``expected`` up to ``rel`` of ``expected``'s magnitude, entry by entry.

    ``rtol=rel`` per entry, plus ``atol = rel * max|expected|``: the float32 rounding of reordered sums.
    """
    expected_t = torch.as_tensor(expected)
    actual_t = torch.as_tensor(actual)
    atol = rel * magnitude(expected_t)
    torch.testing.assert_close(actual_t, expected_t.to(actual_t.dtype), rtol=rel, atol=atol, msg=msg)


def assert_exact(actual: Any, expected: Any, tol: float = EXACT, msg: Any = None) -> None:
    """``actual`` equals ``expected`` in float64 up to ``tol`` of the magnitude (reordered sums only).

    Both must be float64: in float32 ``tol=1e-10`` would be below the rounding itself.
    """
    actual_t, expected_t = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual_t.is_floating_point() or expected_t.is_floating_point():
        assert actual_t.dtype == torch.float64 and expected_t.dtype == torch.float64, (
            f"exactness compares float64, got {actual_t.dtype} and {expected_t.dtype}"
        )
    torch.testing.assert_close(actual_t, expected_t, rtol=tol, atol=tol * magnitude(expected_t), msg=msg)


def close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = FLOAT32) -> bool:
    """:func:`assert_close_scaled` as a bool (for ``assert not close_scaled(...)``)."""
    return torch.allclose(actual, expected.to(actual.dtype), rtol=rel, atol=rel * magnitude(expected))
