"""Forward+backward time and peak memory of every training loss against F.cross_entropy.

    python benchmarks/bench_loss.py                 # the issue's sizes, fp32, CPU
    python benchmarks/bench_loss.py --sizes 4096x32000 --repeats 3 --device cuda --dtype bfloat16

Every logits-only loss of ``hf_selfish.ops.registry`` (plus the naive masked-fill selfish reference) runs
on the same ``[tokens, vocab]`` logits, side by side in this one process, so the ratios are comparable
even on a busy machine; times are the minimum over the repeats. The logits are viewed as
``[tokens / 1024, 1024, vocab]`` (unlikelihood needs rows). AGG takes hidden states and the head
weight, so it is measured apart (``--agg-size``) against ``F.linear`` + ``F.cross_entropy``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import markdown_table, measure_interleaved  # noqa: E402

from hf_selfish import selfish_cross_entropy  # noqa: E402
from hf_selfish.ops.registry import LOSSES, needs_hidden  # noqa: E402

ROW = 1024  # positions per row of the [B, T, V] view


def naive_masked(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The method's pseudocode: masked_fill(-inf) below logit[target] - margin, then cross-entropy."""
    x = logits.float()
    threshold = x.gather(1, labels.unsqueeze(1)) - margin  # [N, 1]
    return F.cross_entropy(x.masked_fill(x < threshold, float("-inf")), labels)


def zipf_counts(vocab: int, device: torch.device) -> torch.Tensor:
    """Train-split-like counts: Zipf over the ids, the last tenth never seen."""
    counts = (1e8 / torch.arange(1, vocab + 1, device=device, dtype=torch.float64)).floor()
    counts[-(vocab // 10) :] = 0
    return counts


def losses(margin: float, counts: torch.Tensor):
    table = {
        "F.cross_entropy": lambda x, y: F.cross_entropy(x.float(), y),
        f"selfish (margin {margin:g})": lambda x, y: selfish_cross_entropy(x, y, margin),
        "selfish + masked fraction": lambda x, y: selfish_cross_entropy(x, y, margin, return_masked_fraction=True)[0],
        "naive masked_fill + CE": lambda x, y: naive_masked(x, y, margin),
    }
    for name, fn in LOSSES.items():
        if needs_hidden(name) or name == "selfish":
            continue

        def rows(x, y, fn=fn):
            n, v = x.shape
            return fn(x.view(n // ROW, ROW, v), y.view(n // ROW, ROW), token_counts=counts)

        table[name] = rows
    return table


def _timed(cases: dict, tensors, device, repeats):
    """Every case interleaved repeat by repeat (a busy machine slows them alike); min and median of each."""

    def step(fn):
        def run():
            fn().backward()
            for t in tensors:
                t.grad = None  # freed inside the call, so its allocation counts in the peak

        return run

    return measure_interleaved({name: step(fn) for name, fn in cases.items()}, device, repeats=repeats)


def run_case(n: int, v: int, device: torch.device, dtype: torch.dtype, margin: float, repeats: int):
    if n % ROW:
        raise ValueError(f"tokens must be a multiple of {ROW} (rows of the [B, T, V] view), got {n}")
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, v, generator=gen, device=device) * 3).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    counts = zipf_counts(v, device)
    cases = {name: (lambda fn=fn: fn(logits, labels)) for name, fn in losses(margin, counts).items()}
    return _timed(cases, [logits], device, repeats)


def run_agg(n: int, d: int, v: int, device: torch.device, dtype: torch.dtype, repeats: int):
    """AGG vs the unfused head + cross-entropy on the same hidden states and weight."""
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, d, generator=gen, device=device).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, d, generator=gen, device=device) / d**0.5).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    counts = zipf_counts(v, device)
    cases = {
        "F.linear + F.cross_entropy": lambda: F.cross_entropy(F.linear(hidden, weight).float(), labels),
        "agg (alpha 0.03)": lambda: LOSSES["agg"](hidden, weight, labels, token_counts=counts),
    }
    return _timed(cases, [hidden, weight], device, repeats)


def _rows(label: str, results, base_name: str) -> list[list[str]]:
    base = results[base_name]
    return [
        [
            label,
            name,
            f"{m.min_s * 1e3:.1f}",
            f"{m.min_s / base.min_s:.2f}x",
            f"{m.peak_mib:.0f}",
            f"{m.peak_bytes / max(base.peak_bytes, 1):.2f}x",
        ]
        for name, m in results.items()
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4096x32000", "2048x128256"], help="TOKENSxVOCAB cases")
    parser.add_argument("--agg-size", default="2048x512x32000", help="TOKENSxHIDDENxVOCAB of the AGG case ('' skips)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    header = ["case", "loss", "fwd+bwd ms (min)", "time vs CE", "peak MiB", "memory vs CE"]
    rows = []
    for size in args.sizes:
        n, v = (int(s) for s in size.lower().split("x"))
        rows += _rows(f"{n} x {v}", run_case(n, v, device, dtype, args.margin, args.repeats), "F.cross_entropy")
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(markdown_table(header, rows))
    if args.agg_size:
        n, d, v = (int(s) for s in args.agg_size.lower().split("x"))
        results = run_agg(n, d, v, device, dtype, args.repeats)
        print()
        print(markdown_table(header, _rows(f"{n} x {d} -> {v}", results, "F.linear + F.cross_entropy")))


if __name__ == "__main__":
    main()
