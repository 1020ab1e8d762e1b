"""Time and peak memory of linear + loss, forward + backward: plain CE, unfused selfish, fused selfish.

The unfused selfish loss runs two ways: the explicit reference (``masked_fill`` then
``F.cross_entropy``, the ratio baseline) and ``hf_selfish.loss.selfish_cross_entropy`` (what the
trainer runs without fusion; it keeps one ``[N, V]`` tensor for backward instead of several).

All three run side by side in one process on the same random ``hidden [N, d]``, ``weight [V, d]``
and labels, interleaved repeat by repeat (so a busy machine slows them alike), and the script
prints a markdown table with the ratios to the unfused selfish loss. Targets of the fused loss: at
V=128256 the fused loss needs <= 25% of the unfused selfish peak memory and <= 1.3x its time.

Peak memory is the increase over what was allocated before the call (inputs and weights excluded,
gradients included):

* CUDA: ``torch.cuda.max_memory_allocated``.
* CPU: the process's peak resident set. On Linux the kernel's high-water mark (``VmHWM``) is reset
  before each call through ``/proc/self/clear_refs``, which is exact; elsewhere a background thread
  samples the RSS with psutil every millisecond (torch's CPU allocations are invisible to
  tracemalloc). glibc's ``malloc_trim`` runs first, so memory freed by the previous call is not
  silently reused (which would hide part of this call's peak).

``--realistic`` compares the fused loss's dense and sparse backward on random inputs that
mask like a trained model's (``realistic_masking.py``: 98-99% of the entries masked at margin 2, labels
drawn from the model's own softmax), by default at N=4096, d=576, V=49152 (SmolLM2-135M) and N=2048,
d=640, V=262144 (Gemma 3), and prints the masked fraction and what the sparse backward skips.

Real hidden states and LM heads (SmolLM2-135M, gemma-3-270m) instead of random ones, with Cut
Cross-Entropy beside: ``benchmarks/bench_fused_real.py``.

Usage::

    python benchmarks/bench_fused.py                          # N=8192, d=1024, V in {32000, 128256}
    python benchmarks/bench_fused.py --n 1024 --vocab 32000 --repeats 2   # a quick run
    python benchmarks/bench_fused.py --device cuda --dtype bfloat16
    python benchmarks/bench_fused.py --realistic              # dense vs sparse backward
    python benchmarks/bench_fused.py --realistic --shapes 1024x576x49152 --repeats 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realistic_masking import masking_stats, realistic_inputs  # noqa: E402

from hf_selfish.ops.fused import default_chunk_size, linear_selfish_cross_entropy  # noqa: E402
from hf_selfish.ops.loss import selfish_cross_entropy  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BenchConfig:
    n: int
    d: int
    vocab: int
    margin: float
    device: str
    dtype: torch.dtype
    chunk_size: int | None
    seed: int = 0
    realistic: bool = False  # inputs from realistic_masking.realistic_inputs
    prior: float = 1.0  # weight of its Zipf unigram prior


@dataclass
class Measurement:
    method: str
    times_s: list[float]
    peak_bytes: list[int]
    loss: float

    @property
    def time_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def peak(self) -> int:
        return max(self.peak_bytes)


# ---- the three losses: (hidden, weight, labels, config) -> scalar loss ----


def linear_cross_entropy(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    logits = hidden @ weight.T  # [N, V]
    return F.cross_entropy(logits.float(), labels)


def linear_selfish_unfused(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    """The explicit reference: masked_fill below ``logit[target] - margin``, then cross-entropy."""
    logits = (hidden @ weight.T).float()  # [N, V]
    threshold = logits.gather(1, labels.unsqueeze(1)) - config.margin  # [N, 1]
    masked = logits.masked_fill(logits < threshold, float("-inf"))  # [N, V]
    return F.cross_entropy(masked, labels)


def linear_selfish_loss_py(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    """What the trainer runs unfused: the logits, then hf_selfish.loss (saves one [N, V] tensor)."""
    return selfish_cross_entropy(hidden @ weight.T, labels, config.margin)


def linear_selfish_fused(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    return linear_selfish_cross_entropy(hidden, weight, labels, config.margin, chunk_size=config.chunk_size)


def linear_selfish_fused_dense(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    return linear_selfish_cross_entropy(
        hidden, weight, labels, config.margin, chunk_size=config.chunk_size, sparse_backward=False
    )


METHODS: dict[str, Callable] = {
    "linear + F.cross_entropy": linear_cross_entropy,
    "linear + selfish (unfused)": linear_selfish_unfused,
    "linear + selfish_cross_entropy": linear_selfish_loss_py,
    "fused selfish": linear_selfish_fused,  # the default: sparse backward
    "fused selfish, dense backward": linear_selfish_fused_dense,
}
DEFAULT_METHODS = list(METHODS)[:4]
REALISTIC_METHODS = ["fused selfish, dense backward", "fused selfish"]
REALISTIC_SHAPES = ["4096x576x49152", "2048x640x262144"]
REFERENCE = "linear + selfish (unfused)"  # the ratio baseline; else the first method


# ---- peak memory ----


def _read_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


class CpuPeakMemory:
    """Peak RSS increase during a ``with`` block: kernel high-water mark if resettable, else sampling."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.use_hwm = _can_reset_hwm()
        self.peak_increase = 0

    def __enter__(self):
        gc.collect()
        _malloc_trim()  # give freed heap pages back, so an earlier call's garbage does not hide this one's
        if self.use_hwm:
            _reset_hwm()
            self.start = _read_status_bytes("VmRSS")
        else:
            import psutil

            self._process = psutil.Process()
            self.start = self._process.memory_info().rss
            self._peak = self.start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.use_hwm:
            peak = _read_status_bytes("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._process.memory_info().rss)
        self.peak_increase = peak - self.start
        return False


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
        _read_status_bytes("VmHWM")
        return True
    except (OSError, AttributeError):
        return False


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current RSS


class CudaPeakMemory:
    """Peak increase of ``torch.cuda.memory_allocated`` during a ``with`` block."""

    def __enter__(self):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.start = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.peak_increase = torch.cuda.max_memory_allocated() - self.start
        return False


# ---- running ----


def make_inputs(config: BenchConfig):
    if config.realistic:
        hidden, weight, labels, _ = realistic_inputs(
            config.n, config.d, config.vocab, config.margin, seed=config.seed, prior=config.prior
        )
        to = dict(device=config.device, dtype=config.dtype)
        return (hidden.to(**to).requires_grad_(), weight.to(**to).requires_grad_(), labels.to(config.device))
    generator = torch.Generator().manual_seed(config.seed)
    hidden = torch.randn(config.n, config.d, generator=generator) / config.d**0.25  # logits ~ N(0, 1)
    weight = torch.randn(config.vocab, config.d, generator=generator) / config.d**0.25
    labels = torch.randint(0, config.vocab, (config.n,), generator=generator)
    to = dict(device=config.device, dtype=config.dtype)
    return (hidden.to(**to).requires_grad_(), weight.to(**to).requires_grad_(), labels.to(config.device))


def run_once(method: Callable, hidden, weight, labels, config: BenchConfig) -> tuple[float, int, float]:
    """One forward + backward: (seconds, peak extra bytes, loss)."""
    hidden.grad = None
    weight.grad = None
    meter = CudaPeakMemory() if config.device.startswith("cuda") else CpuPeakMemory()
    with meter:
        start = time.perf_counter()
        loss = method(hidden, weight, labels, config)
        loss.backward()
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        value = loss.item()
        del loss
    hidden.grad = None
    weight.grad = None
    return elapsed, meter.peak_increase, value


def bench(config: BenchConfig, repeats: int, warmup: int, methods: list[str]) -> list[Measurement]:
    hidden, weight, labels = make_inputs(config)
    if config.realistic:
        print(
            f"N={config.n} d={config.d} V={config.vocab}: {masking_stats(hidden, weight, labels, config.margin, config.chunk_size)}"
        )
    results = {name: Measurement(name, [], [], float("nan")) for name in methods}
    for step in range(warmup + repeats):
        for name in methods:  # interleaved: a busy machine slows every method alike
            elapsed, peak, loss = run_once(METHODS[name], hidden, weight, labels, config)
            if step >= warmup:
                results[name].times_s.append(elapsed)
                results[name].peak_bytes.append(peak)
                results[name].loss = loss
    return list(results.values())


def markdown_table(rows: list[tuple[BenchConfig, list[Measurement]]]) -> str:
    header = (
        "| N | d | V | method | loss | min time (s) | median time (s) | peak extra memory (MiB) "
        "| time / ref | memory / ref |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for config, measurements in rows:
        by_name = {m.method: m for m in measurements}
        ref = by_name.get(REFERENCE, measurements[0])
        for m in measurements:
            time_ratio = f"{m.time_s / ref.time_s:.2f}"
            mem_ratio = f"{m.peak / ref.peak:.2f}" if ref.peak > 0 else "-"
            lines.append(
                f"| {config.n} | {config.d} | {config.vocab} | {m.method} | {m.loss:.5f} | {min(m.times_s):.2f} "
                f"| {m.time_s:.2f} | {m.peak / 2**20:.0f} | {time_ratio} | {mem_ratio} |"
            )
    refs = {by.method for by in (next((m for m in ms if m.method == REFERENCE), ms[0]) for _, ms in rows)}
    return "\n".join(lines) + f"\n\nref (ratios of the median times and of the peaks): {', '.join(sorted(refs))}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="tokens (rows of hidden)")
    parser.add_argument("--d", type=int, default=1024, help="hidden size")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256], help="vocabulary sizes")
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="fused rows per chunk (default: heuristic)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--realistic", action="store_true", help="dense vs sparse backward on realistic masking")
    parser.add_argument("--shapes", nargs="+", default=None, help="NxDxV cases (instead of --n/--d/--vocab)")
    parser.add_argument("--prior", type=float, default=1.0, help="--realistic: weight of the Zipf unigram prior")
    args = parser.parse_args(argv)
    if args.methods is None:
        args.methods = REALISTIC_METHODS if args.realistic else DEFAULT_METHODS
    if args.shapes is None:
        args.shapes = REALISTIC_SHAPES if args.realistic else [f"{args.n}x{args.d}x{v}" for v in args.vocab]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    shapes = [tuple(int(x) for x in shape.lower().split("x")) for shape in args.shapes]
    for n, d, vocab in shapes:
        config = BenchConfig(
            n, d, vocab, args.margin, args.device, DTYPES[args.dtype], args.chunk_size, 0, args.realistic, args.prior
        )
        rows.append((config, bench(config, args.repeats, args.warmup, args.methods)))
    chunk = args.chunk_size or ", ".join(f"{default_chunk_size(v, n)} (V={v})" for n, _, v in shapes)
    memory = (
        "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else ("peak RSS (VmHWM reset)" if CpuPeakMemory().use_hwm else "peak RSS (psutil sampling)")
    )
    print(
        f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} margin={args.margin} "
        f"repeats={args.repeats} (+{args.warmup} warmup) fused chunk={chunk} memory={memory} "
        f"torch={torch.__version__} pid={os.getpid()}\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
