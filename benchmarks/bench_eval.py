"""Cost of rank-bucket evaluation relative to a plain `trainer.evaluate()`, measured side by side.

A 4-layer, 4-head, 128-dim GPT-2 (V = 65, block 64) evaluates ~1700 blocks at batch 64, the size of the
tinyshakespeare validation split. Both variants run in this process on the same model and data, alternately,
and the ratios of their minimum and median wall and CPU times are printed (target: <= 1.3). On a shared,
busy machine prefer the CPU-time ratio with `--threads 1` (wall time then measures the neighbours) and the
minimum over runs (contention only ever adds time).

    PYTHONPATH=. python benchmarks/bench_eval.py [--eval_blocks 1742] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_selfish.callbacks import attach_rank_bucket_eval


def build_trainer(model: GPT2LMHeadModel, eval_blocks: list[dict], output_dir: str, batch_size: int) -> Trainer:
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_eval_batch_size=batch_size,
        batch_eval_metrics=True,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        log_level="error",
    )
    return Trainer(model=model, args=args, eval_dataset=eval_blocks)


def rank_buckets(vocab_size: int, size: int = 10) -> dict[str, list[int]]:
    """Buckets of `size` ids, standing in for frequency-rank buckets (the cost does not depend on the order)."""
    return {
        f"rank_{lo + 1}-{min(lo + size, vocab_size)}": list(range(lo, min(lo + size, vocab_size)))
        for lo in range(0, vocab_size, size)
    }


def time_evaluate(trainer: Trainer) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `trainer.evaluate()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.evaluate()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval_blocks", type=int, default=1742)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=65)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4,
        n_head=4,
        n_embd=128,
        vocab_size=cli.vocab_size,
        n_positions=cli.block_size,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    ids = torch.randint(0, cli.vocab_size, (cli.eval_blocks, cli.block_size))
    eval_blocks = [{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids]

    with tempfile.TemporaryDirectory() as output_dir:
        plain = build_trainer(model, eval_blocks, output_dir, cli.batch_size)
        buckets = build_trainer(model, eval_blocks, output_dir, cli.batch_size)
        attach_rank_bucket_eval(buckets, rank_buckets(cli.vocab_size), cli.vocab_size)
        plain.evaluate()  # warm-up: first-call allocations and thread start-up
        buckets.evaluate()
        plain_times, bucket_times = [], []  # (wall, cpu) per run
        for _ in range(cli.repeats):
            plain_times.append(time_evaluate(plain))
            bucket_times.append(time_evaluate(buckets))

    print(
        f"eval of {cli.eval_blocks} blocks x {cli.block_size} tokens, batch {cli.batch_size}, V={cli.vocab_size}, "
        f"torch threads={torch.get_num_threads()}"
    )
    for kind, column in (("wall", 0), ("CPU", 1)):
        plain_s = [run[column] for run in plain_times]
        bucket_s = [run[column] for run in bucket_times]
        print(f"{kind:4s} s  plain trainer.evaluate(): {[round(t, 2) for t in plain_s]}")
        print(f"{kind:4s} s  with rank-bucket metrics: {[round(t, 2) for t in bucket_s]}")
        for name, reduce in (("min", min), ("median", statistics.median)):
            ratio = reduce(bucket_s) / reduce(plain_s)
            print(f"  ratio of {name:6s} {kind} times (buckets / plain): {ratio:.3f}  (target <= 1.3)")
    print(f"accumulator: 5 sums of [V] = {5 * cli.vocab_size} numbers, independent of the eval-set size")


if __name__ == "__main__":
    main()
