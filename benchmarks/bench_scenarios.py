"""Step-time cost of GradientScenarioCallback on the tiny CPU recipe model, measured side by side.

Model and batch of the tinyshakespeare CPU recipe: GPT-2, 4 layers, 4 heads, 128 dims, vocabulary 65,
block 64, batch 12. Three arms train their own copy of the model with AdamW: no callback, the callback
recording every 100 steps, the callback recording every step. A step is forward + backward + optimizer
step, bracketed by the callback's `on_step_begin` / `on_step_end` exactly as `Trainer` calls them. The
arms take turns step by step (A B C A B C ...), so load from other processes hits all of them alike, and
the median step times are compared. Without the Trainer's own per-step overhead the ratio is, if
anything, pessimistic.

    PYTHONPATH=. python benchmarks/bench_scenarios.py [--steps 200] [--threads N] [--loss selfish_head]

``--loss NAME`` (and ``--loss-kwargs JSON``) trains every arm with a loss of ``hf_selfish.ops.registry`` the way
``SelfishTrainer`` computes it unfused (the selfish variants ``selfish_head`` / ``selfish_hidden`` from the last
hidden state through the head module, so the recorder sees their head side); the losses that need train-split
counts get ``1, 2, ..., 65`` (id v occurs v + 1 times). Default: the model's own cross-entropy.

Target: `every step` / `off` <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_selfish.callbacks import GradientScenarioCallback
from hf_selfish.ops.registry import check_loss_params, get_loss, needs_hidden, takes_head

VOCAB, BLOCK, BATCH = 65, 64, 12
GROUPS = {f"rank_{lo}-{min(lo + 9, VOCAB)}": list(range(lo - 1, min(lo + 9, VOCAB))) for lo in range(1, VOCAB + 1, 10)}
WARMUP_STEPS = 5


class Arm:
    """One model + optimizer (+ optional callback), stepped one optimizer step at a time."""

    def __init__(
        self, callback: GradientScenarioCallback | None, args: TrainingArguments, loss: tuple[str, dict] | None = None
    ):
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=VOCAB,
            n_positions=BLOCK,
            n_embd=128,
            n_layer=4,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        self.model = GPT2LMHeadModel(config).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.callback = callback
        self.args = args
        self.loss = loss
        self.state = TrainerState()
        self.control = TrainerControl()
        self.times: list[float] = []
        if callback is not None:
            callback.on_train_begin(args, self.state, self.control, model=self.model)

    def step(self, input_ids: torch.Tensor) -> None:
        start = time.perf_counter()
        if self.callback is not None:
            self.callback.on_step_begin(self.args, self.state, self.control)
        loss = (
            self.model(input_ids=input_ids, labels=input_ids).loss
            if self.loss is None
            else self.registry_loss(input_ids)
        )
        loss.backward()
        self.optimizer.step()
        self.model.zero_grad()
        self.state.global_step += 1
        if self.callback is not None:
            self.callback.on_step_end(self.args, self.state, self.control)
        self.times.append(time.perf_counter() - start)

    def registry_loss(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The registry loss ``self.loss`` on the causally shifted batch, as SelfishTrainer computes it unfused."""
        name, kwargs = self.loss
        labels = input_ids[:, 1:]  # [B, T-1]
        counts = torch.arange(1, VOCAB + 1)
        if needs_hidden(name):
            outputs = self.model(input_ids=input_ids, output_hidden_states=True, logits_to_keep=1)
            hidden = outputs.hidden_states[-1][:, :-1]  # [B, T-1, d], after the final norm: the head's input
            head = self.model.get_output_embeddings()
            extra = {"head": head} if takes_head(name) else {}
            return get_loss(name)(hidden, head.weight, labels, bias=head.bias, token_counts=counts, **extra, **kwargs)
        logits = self.model(input_ids=input_ids).logits[:, :-1]  # [B, T-1, V]
        return get_loss(name)(logits, labels, token_counts=counts, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--loss", default=None, help="a loss of hf_selfish.ops.registry (default: the model's CE)")
    parser.add_argument("--loss-kwargs", default="{}", help="its parameters as JSON, e.g. '{\"margin\": 2.0}'")
    cli = parser.parse_args()
    loss = None if cli.loss is None else (cli.loss, check_loss_params(cli.loss, json.loads(cli.loss_kwargs)))
    if cli.threads is not None:
        torch.set_num_threads(cli.threads)
    hf_logging.set_verbosity_error()

    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, report_to="none", use_cpu=True)
        arms = {
            "off (no callback)": Arm(None, args, loss),
            "every 100 steps": Arm(GradientScenarioCallback(every_k_steps=100, groups=GROUPS), args, loss),
            "every step": Arm(GradientScenarioCallback(every_k_steps=1, groups=GROUPS), args, loss),
        }
        generator = torch.Generator().manual_seed(0)
        for _ in range(cli.steps):
            input_ids = torch.randint(0, VOCAB, (BATCH, BLOCK), generator=generator)
            for arm in arms.values():
                arm.step(input_ids)

    medians = {name: statistics.median(arm.times[WARMUP_STEPS:]) for name, arm in arms.items()}
    base = medians["off (no callback)"]
    print(
        f"GPT-2 4x128, vocab {VOCAB}, batch {BATCH}x{BLOCK}, CPU threads {torch.get_num_threads()}, "
        f"{cli.steps} interleaved steps per arm (median step time), loss {loss or 'the model CE'}"
    )
    print(f"{'arm':<20} {'ms/step':>8} {'ratio':>6}")
    for name, median in medians.items():
        print(f"{name:<20} {1000 * median:8.1f} {median / base:6.3f}")
    every = arms["every step"].callback
    print(f"steps recorded by the every-step arm: {every.recorded_steps}")
    norms = every.norms
    head = norms.target + norms.non_target  # [V]: each token's output-embedding update (summed norms)
    share = (norms.non_target.sum() / head.sum()).item() if float(head.sum()) > 0 else float("nan")
    print(f"share of 2.2 in the output-embedding updates, every-step arm: {share:.4f}")


if __name__ == "__main__":
    main()
