"""Forward+backward time and peak memory: F.cross_entropy vs selfish loss vs the naive masked reference.

    python benchmarks/bench_loss.py                 # the issue's sizes, fp32, CPU
    python benchmarks/bench_loss.py --sizes 4096x32000 --repeats 3 --device cuda --dtype bfloat16

Every case runs in this one process, interleaved repeat by repeat, so the ratios are comparable even on
a busy machine; "time vs CE" compares the minima over the repeats (the least disturbed run of each).
"selfish + masked fraction" is what the trainer runs every step (``return_masked_fraction=True``).
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


def naive_masked(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The seed's pseudocode: masked_fill(-inf) below logit[target] - margin, then cross-entropy."""
    x = logits.float()
    threshold = x.gather(1, labels.unsqueeze(1)) - margin  # [N, 1]
    return F.cross_entropy(x.masked_fill(x < threshold, float("-inf")), labels)


def losses(margin: float):
    return {
        "F.cross_entropy": lambda x, y: F.cross_entropy(x.float(), y),
        f"selfish (margin {margin:g})": lambda x, y: selfish_cross_entropy(x, y, margin),
        "selfish + masked fraction": lambda x, y: selfish_cross_entropy(x, y, margin, return_masked_fraction=True)[0],
        "naive masked_fill + CE": lambda x, y: naive_masked(x, y, margin),
    }


def run_case(n: int, v: int, device: torch.device, dtype: torch.dtype, margin: float, repeats: int):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(n, v, generator=gen, device=device) * 3).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=gen, device=device)
    steps = {}
    for name, loss_fn in losses(margin).items():

        def step(loss_fn=loss_fn):
            loss_fn(logits, labels).backward()
            logits.grad = None  # freed inside the call, so its allocation counts in the peak

        steps[name] = step
    return measure_interleaved(steps, device, repeats=repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", nargs="+", default=["4096x65", "4096x32000", "2048x128256"], help="TOKENSxVOCAB cases"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for size in args.sizes:
        n, v = (int(s) for s in size.lower().split("x"))
        results = run_case(n, v, device, dtype, args.margin, args.repeats)
        base = results["F.cross_entropy"]
        for name, m in results.items():
            rows.append(
                [
                    f"{n} x {v}",
                    name,
                    f"{m.min_s * 1e3:.1f}",
                    f"{m.median_s * 1e3:.1f}",
                    f"{m.min_s / base.min_s:.2f}x",
                    f"{m.peak_mib:.0f}",
                    f"{m.peak_bytes / max(base.peak_bytes, 1):.2f}x",
                ]
            )
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(
        markdown_table(
            ["tokens x vocab", "loss", "min ms", "median ms", "time vs CE", "peak MiB", "memory vs CE"], rows
        )
    )


if __name__ == "__main__":
    main()
