"""The main job's overhead: one arm through `SelfishTrainer` (as `hf-selfish compare` runs it) vs a plain
PyTorch loop over the same `GPT2LMHeadModel`, side by side.

(a) hf-selfish: the recipe's arguments (`load_recipe` + overrides), `prepare_data` once, then `train_run`:
    the Trainer with rank-bucket evaluation, gradient scenarios, logging, checkpoints, run record.
(b) plain loop: the same model (`build_model`, same seed), the same blocks in the same order (the
    permutation accelerate's `SeedableRandomSampler` draws for the Trainer), fused AdamW with the Trainer's
    hyperparameters and weight-decay groups, `get_scheduler("cosine_with_min_lr")`, gradient clipping,
    the same loss function (`selfish_causal_lm_loss`, so the selfish arm trains the same loss), a training
    log (mean loss, grad norm, learning rate) every `logging_steps`, the same evaluations (eval loss as the
    Trainer averages it + the rank-bucket sums through `hf_selfish.evaluation`) and the same checkpoint
    writes (model, optimizer, scheduler, RNG state). No gradient scenarios: they are what (a) adds.
    The final eval metrics of (a) and (b) are compared: both must compute the same numbers.

Scaled down from the recipe (2000 steps, eval every 250 + at start = 9 full evaluations, log every 50,
save every 500, scenarios every 5 steps): 500 steps, so per-step intervals are divided by 4 (log every 12,
save every 125, scenarios every 5) and the evaluations follow the recipe's share of evaluation time:
9 evaluations per 2000 steps -> 3 (at start, step 250, step 500). One full evaluation costs as much CPU as
~60 training steps here, so keeping all 9 evaluations for a quarter of the steps would weigh them 4x.

Timing: CPU time of one thread (`torch.set_num_threads(1)`, `time.process_time()`). Three measurements:

- whole runs, interleaved (`--repeats`, a b, b a, a b, ...): CPU and wall time, min and median, ratios;
- lock step (`--lockstep`): (a) trains while (b) takes one step after each of (a)'s steps in the same
  process, timed apart, so the load of other processes hits both alike step by step (on the shared
  2-core machine whole runs drift by +-5% between repeats); also split by phase (start, steps with an
  evaluation / save / log, other steps);
- `--profile`: one instrumented run of each, CPU time per section (data, forward, backward, scenario hooks,
  optimizer, Trainer bookkeeping, logging, evaluation parts, saves), exclusive of nested sections; the
  wrappers cost microseconds per call. `--cprofile FILE` writes a cProfile of (a) for digging further.

    HF_SELFISH_TINYSHAKESPEARE=... PYTHONPATH=. python benchmarks/bench_overhead.py [--repeats 2]
        [--lockstep 1] [--profile] [--arm selfish] [--threads 1]

Target: (a) <= 1.15x (b).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import logging
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from hf_selfish.evaluation import TokenStats, causal_nll_and_rank, group_metrics
from hf_selfish.lab.models import build_model
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.run import PreparedData, prepare_data, train_run
from hf_selfish.ops.loss import selfish_causal_lm_loss, shift_causal_labels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import markdown_table  # noqa: E402

RECIPE = "recipes/tinyshakespeare_cpu.yaml"
TRAINER, PLAIN = "(a) hf-selfish", "(b) plain loop"
SCALED = {"max_steps": 500, "eval_steps": 250, "logging_steps": 12, "save_steps": 125}


# ---------------------------------------------------------------------------------------------- (a) hf-selfish


def trainer_arm(recipe, arm_name: str, data: PreparedData, output_dir: str) -> dict:
    """`train_run` of one arm into a fresh ``output_dir``; returns its final eval metrics."""
    arm = next(a for a in recipe.arms if a.name == arm_name)
    args = recipe.arguments(arm, output_dir=output_dir)
    return train_run(args, data, arm=arm_name)["final"]


# ---------------------------------------------------------------------------------------------- (b) plain loop


def plain_arm(recipe, arm_name: str, data: PreparedData, output_dir: str) -> dict:
    """The plain PyTorch loop (see the module docstring); returns its final eval metrics."""
    arm = next(a for a in recipe.arms if a.name == arm_name)
    steps = plain_steps(recipe.arguments(arm, output_dir=output_dir), data)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def plain_steps(args, data: PreparedData):
    """`plain_arm` as a generator that pauses after each optimizer step (for `lockstep`).

    ``args`` are parsed beforehand: parsing `TrainingArguments` resets accelerate's state, which would break
    a Trainer running in lock step.
    """
    t = args.training
    output_dir = t.output_dir
    margin = None if t.selfish_margin is None else float(t.selfish_margin)
    model = build_model(args.model, data.vocab_size, args.data.block_size, t.seed)
    train, val = _as_tensors(data.lm.datasets["train"]), _as_tensors(data.lm.datasets["validation"])
    optimizer, scheduler = _optimizer_and_schedule(model, t)
    history: list[dict] = []
    if t.eval_on_start:
        history.append(_evaluate(model, val, data.groups, t.per_device_eval_batch_size))
    step, loss_sum, batch_size = 0, torch.zeros(()), t.per_device_train_batch_size
    for epoch in range(math.ceil(t.max_steps / math.ceil(len(train[0]) / batch_size))):
        # the Trainer's order: accelerate's SeedableRandomSampler, a permutation seeded with seed + epoch
        order = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(t.seed + epoch))
        for start in range(0, len(order), batch_size):
            input_ids, labels = _get_batch(train, order[start : start + batch_size])
            loss = _forward_loss(model, input_ids, labels, margin)
            _backward(loss)
            grad_norm, lr = _optimizer_step(model, optimizer, scheduler, t.max_grad_norm)
            loss_sum += loss.detach()
            step += 1
            if step % t.logging_steps == 0:
                _log(history, loss_sum, t.logging_steps, grad_norm, lr)
            if step % t.eval_steps == 0:
                history.append(_evaluate(model, val, data.groups, t.per_device_eval_batch_size))
            if step % t.save_steps == 0:
                _save_checkpoint(model, optimizer, scheduler, Path(output_dir) / f"checkpoint-{step}", history)
            yield step
            if step == t.max_steps:
                break
    if t.max_steps % t.eval_steps:
        history.append(_evaluate(model, val, data.groups, t.per_device_eval_batch_size))
    model.save_pretrained(output_dir)
    return history[-1]


def _as_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's blocks as two `[N, T]` int64 tensors (one Arrow -> numpy copy, as a plain loop would load them)."""
    columns = dataset.with_format("numpy")[:]
    return torch.from_numpy(columns["input_ids"]), torch.from_numpy(columns["labels"])


def _optimizer_and_schedule(model, t):
    """Fused AdamW over the Trainer's two weight-decay groups, and the recipe's schedule."""
    no_decay = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [nn.LayerNorm], no_decay))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": t.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    betas = (t.adam_beta1, t.adam_beta2)
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=betas, eps=t.adam_epsilon, fused=True)
    scheduler = get_scheduler(
        t.lr_scheduler_type,
        optimizer,
        num_warmup_steps=t.warmup_steps,
        num_training_steps=t.max_steps,
        scheduler_specific_kwargs=t.lr_scheduler_kwargs,
    )
    return optimizer, scheduler


def _get_batch(blocks, indices):
    return blocks[0][indices], blocks[1][indices]


def _forward_loss(model, input_ids, labels, margin):
    model.train()
    logits = model(input_ids=input_ids).logits
    num_items = (shift_causal_labels(labels) != -100).sum()
    return selfish_causal_lm_loss(logits, labels, margin, num_items_in_batch=num_items)


def _backward(loss):
    loss.backward()


def _optimizer_step(model, optimizer, scheduler, max_grad_norm):
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    optimizer.zero_grad()
    return grad_norm, lr


def _log(history, loss_sum, steps, grad_norm, lr):
    history.append({"loss": loss_sum.item() / steps, "grad_norm": grad_norm.item(), "learning_rate": lr})
    loss_sum.zero_()


def _evaluate(model, val, groups, batch_size: int) -> dict:
    """Eval loss and the rank-bucket metrics. The eval loss is the Trainer's: each batch's mean loss
    repeated once per block (`gather_for_metrics` cuts the last batch's repeats to its size), averaged."""
    model.eval()
    stats = TokenStats.zeros(model.config.vocab_size)
    losses = []
    for start in range(0, len(val[0]), batch_size):
        input_ids, labels = _get_batch(val, slice(start, start + batch_size))
        logits, loss = _eval_forward(model, input_ids, labels)
        losses.append(loss.repeat(len(input_ids)))
        _eval_metrics(stats, logits, labels)
    metrics = {f"eval_{k}": v for k, v in group_metrics(stats, groups).items()}
    metrics["eval_loss"] = torch.cat(losses).mean().item()
    return metrics


@torch.no_grad()
def _eval_forward(model, input_ids, labels):
    logits = model(input_ids=input_ids).logits
    return logits, selfish_causal_lm_loss(logits, labels, None)


def _eval_metrics(stats, logits, labels):
    targets, nll, rank = causal_nll_and_rank(logits, labels)
    stats.update(targets, nll, rank)


def _save_checkpoint(model, optimizer, scheduler, folder: Path, history: list[dict]) -> None:
    """What the Trainer writes per checkpoint: weights, optimizer, scheduler, RNG state and a state file."""
    for old in folder.parent.glob("checkpoint-*"):  # save_total_limit: 1
        shutil.rmtree(old)
    model.save_pretrained(folder)
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))


# ---------------------------------------------------------------------------------------------- profile


class Sections:
    """CPU time per labelled section, exclusive: a wrapped call's time minus its wrapped callees'.

    Wraps functions and methods in place (`wrap`), undone by `restore`. A label may be a pair
    (training label, evaluation label): calls inside an evaluation count under the second.
    """

    def __init__(self):
        self.times: dict[str, float] = {}
        self._stack: list[float] = []
        self._undo: list[tuple[object, str, object]] = []
        self.in_eval = 0

    def wrap(self, owner, name: str, label, eval_scope: bool = False) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        sections = self

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            key = label if isinstance(label, str) else label[1 if sections.in_eval else 0]
            start = time.process_time()
            sections._stack.append(0.0)
            sections.in_eval += eval_scope
            try:
                return original(*args, **kwargs)
            finally:
                sections.in_eval -= eval_scope
                elapsed = time.process_time() - start
                inner = sections._stack.pop()
                sections.times[key] = sections.times.get(key, 0.0) + elapsed - inner
                if sections._stack:
                    sections._stack[-1] += elapsed

        setattr(owner, name, wrapper)
        self._undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


SETUP = "setup (model, trainer, optimizer)"
DATA = ("train: data loading + collation", "eval: data loading + collation")
FORWARD = ("train: forward + loss", "eval: forward + loss")
BACKWARD = "train: backward"
SCENARIO_HOOKS = "train: scenario grad hooks (in backward)"
SCENARIO_STEP = "train: scenario on_step_begin/end"
OPTIMIZER = "train: clip + optimizer + scheduler + zero_grad"
BOOKKEEPING = "train: Trainer bookkeeping (flos count, callback events)"
LOG = "logging"
EVAL_METRICS = "eval: metric hooks / sums"
ON_EVALUATE = "eval: on_evaluate (rank_buckets.json)"
EVAL_REST = "eval: loop, gather, eval log"
SAVE = "checkpoint saves"
FINAL = "final save + run record"
ORDER = [SETUP, DATA[0], FORWARD[0], BACKWARD, SCENARIO_HOOKS, SCENARIO_STEP, OPTIMIZER, BOOKKEEPING, LOG]
ORDER += [DATA[1], FORWARD[1], EVAL_METRICS, ON_EVALUATE, EVAL_REST, SAVE, FINAL]


def instrument_trainer(sections: Sections) -> None:
    import accelerate
    import datasets
    import transformers

    import hf_selfish.callbacks as callbacks
    import hf_selfish.lab.run as run
    import hf_selfish.scenario_recorder as recorder
    from hf_selfish.trainer import SelfishTrainer

    trainer_cls = transformers.Trainer
    sections.wrap(run, "build_model", SETUP)
    sections.wrap(run, "build_trainer", SETUP)
    sections.wrap(trainer_cls, "_prepare_for_training", SETUP)
    sections.wrap(run, "default_data_collator", DATA)  # before build_trainer hands it to the Trainer
    sections.wrap(datasets.Dataset, "__getitems__", DATA)
    sections.wrap(trainer_cls, "get_batch_samples", DATA)
    sections.wrap(SelfishTrainer, "compute_loss", FORWARD)
    sections.wrap(accelerate.Accelerator, "backward", BACKWARD)
    for name in ("input_embedding_gradient", "output_embedding_gradients", "targets_from_grad_logits"):
        sections.wrap(recorder, name, SCENARIO_HOOKS)
    sections.wrap(callbacks.GradientScenarioCallback, "on_step_begin", SCENARIO_STEP)
    sections.wrap(callbacks.GradientScenarioCallback, "on_step_end", SCENARIO_STEP)
    sections.wrap(trainer_cls, "_clip_grad_norm", OPTIMIZER)
    sections.wrap(accelerate.optimizer.AcceleratedOptimizer, "step", OPTIMIZER)
    sections.wrap(accelerate.scheduler.AcceleratedScheduler, "step", OPTIMIZER)
    sections.wrap(torch.nn.Module, "zero_grad", OPTIMIZER)
    sections.wrap(trainer_cls, "floating_point_ops", BOOKKEEPING)
    sections.wrap(transformers.trainer_callback.CallbackHandler, "call_event", BOOKKEEPING)
    sections.wrap(SelfishTrainer, "log", LOG)
    sections.wrap(trainer_cls, "evaluate", EVAL_REST, eval_scope=True)
    sections.wrap(callbacks.RankBucketEvalCallback, "preprocess_logits_for_metrics", EVAL_METRICS)
    sections.wrap(callbacks.RankBucketEvalCallback, "compute_metrics", EVAL_METRICS)
    sections.wrap(callbacks.RankBucketEvalCallback, "on_evaluate", ON_EVALUATE)
    sections.wrap(trainer_cls, "_save_checkpoint", SAVE)
    sections.wrap(callbacks.GradientScenarioCallback, "on_save", SAVE)
    sections.wrap(run, "_save_model", FINAL)
    sections.wrap(trainer_cls, "save_state", FINAL)
    sections.wrap(run, "write_run_record", FINAL)


def instrument_plain(sections: Sections) -> None:
    module = sys.modules[__name__]
    for name, label in [
        ("build_model", SETUP),
        ("_optimizer_and_schedule", SETUP),
        ("_as_tensors", DATA),
        ("_get_batch", DATA),
        ("_forward_loss", FORWARD),
        ("_backward", BACKWARD),
        ("_optimizer_step", OPTIMIZER),
        ("_log", LOG),
        ("_evaluate", EVAL_REST),
        ("_eval_forward", FORWARD),
        ("_eval_metrics", EVAL_METRICS),
        ("_save_checkpoint", SAVE),
    ]:
        sections.wrap(module, name, label, eval_scope=name == "_evaluate")


# ---------------------------------------------------------------------------------------------- lock step


LOCKSTEP_PHASES = ["start (setup, eval at start, step 1)", "steps with an evaluation", "steps with a save",
                   "steps with a log", "other steps"]  # fmt: skip


def lockstep(recipe, arm_name: str, data: PreparedData, tmp: str) -> tuple[dict, dict, dict, dict]:
    """(a) and (b) in one process, step by step: after each Trainer step (`on_step_end`) the plain loop
    runs its next step (its log, evaluation and save included), timed apart, so load from other processes
    hits both alike at a granularity of one step.

    Returns the CPU seconds of (a) and of (b) per `LOCKSTEP_PHASES` and their final metrics. Step k's
    phase is that of its events (evaluation > save > log); (a)'s step k is the time from the end of the
    plain step k - 1 to the start of plain step k (its data loading, step, and the log / evaluation /
    save of step k - 1, which the Trainer runs after `on_step_end`), so (a)'s phases lag one step. The
    last step's phase holds the final save and run record of both.
    """
    import hf_selfish.lab.run as run

    arm = next(a for a in recipe.arms if a.name == arm_name)
    t = recipe.arguments(arm).training
    steps = plain_steps(recipe.arguments(arm, output_dir=os.path.join(tmp, "lockstep_b")), data)
    marks: list[tuple[float, float]] = []  # (start, end) of each plain step
    plain_final: dict = {}

    def advance() -> None:
        start = time.process_time()
        try:
            next(steps)
        except StopIteration as done:
            plain_final.update(done.value)
        marks.append((start, time.process_time()))

    class Advance(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            advance()

    build_trainer = run.build_trainer

    def build_trainer_in_lockstep(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(Advance())
        return trainer

    run.build_trainer = build_trainer_in_lockstep
    begin = time.process_time()
    try:
        final = trainer_arm(recipe, arm_name, data, os.path.join(tmp, "lockstep_a"))
    finally:
        run.build_trainer = build_trainer
    end = time.process_time()
    while not plain_final:  # the plain loop's last evaluation and save
        advance()

    def phase(k: int, first: bool = True) -> str:  # the phase of step k (1-based) by its events
        if k == 1 and first:
            return LOCKSTEP_PHASES[0]
        for every, name in zip((t.eval_steps, t.save_steps, t.logging_steps), LOCKSTEP_PHASES[1:4]):
            if k % every == 0:
                return name
        return LOCKSTEP_PHASES[4]

    trainer_times = dict.fromkeys(LOCKSTEP_PHASES, 0.0)
    plain_times = dict.fromkeys(LOCKSTEP_PHASES, 0.0)
    previous_end = begin
    for k, (start, stop) in enumerate(marks[: t.max_steps], start=1):
        trainer_times[phase(k - 1, first=False) if k > 1 else phase(1)] += start - previous_end
        plain_times[phase(k)] += stop - start
        previous_end = stop
    # step N's log / evaluation / save, and the final save and run record, of both
    trainer_times[phase(t.max_steps)] += end - previous_end
    for start, stop in marks[t.max_steps :]:
        plain_times[phase(t.max_steps)] += stop - start
    return trainer_times, plain_times, final, plain_final


# ---------------------------------------------------------------------------------------------- main


def timed(fn, *args) -> tuple[float, float, dict]:
    """(CPU seconds, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def metric_difference(a: dict, b: dict) -> tuple[float, str]:
    """Largest relative difference over the eval metrics both report (0.0: identical), and its key."""
    diffs = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b if k in a}
    key = max(diffs, key=diffs.get)
    return diffs[key], f"{key}: {a[key]} vs {b[key]}"


def ratio_table(times: dict[str, list[tuple[float, float]]]) -> str:
    """CPU and wall min / median per method, and the CPU ratios to the plain loop."""
    plain = [cpu for cpu, _ in times[PLAIN]]
    rows = []
    for name, runs in times.items():
        cpu, wall = [c for c, _ in runs], [w for _, w in runs]
        rows.append(
            [name, f"{min(cpu):.1f}", f"{statistics.median(cpu):.1f}", f"{min(wall):.1f}",
             f"{statistics.median(wall):.1f}", f"{min(cpu) / min(plain):.3f}",
             f"{statistics.median(cpu) / statistics.median(plain):.3f}"]
        )  # fmt: skip
    header = ["method", "CPU min s", "CPU median s", "wall min s", "wall median s", "ratio (min)", "ratio (median)"]
    return markdown_table(header, rows)


def interleaved(recipe, arm: str, data: PreparedData, repeats: int, tmp: str) -> None:
    """Whole runs, a b, b a, a b, ... (no order bias); prints each run and the table."""
    methods = {TRAINER: trainer_arm, PLAIN: plain_arm}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    finals = {}
    for repeat in range(repeats):
        turn = list(methods.items())
        for name, fn in turn if repeat % 2 == 0 else turn[::-1]:
            cpu, wall, finals[name] = timed(fn, recipe, arm, data, os.path.join(tmp, f"{name[1]}{repeat}"))
            times[name].append((cpu, wall))
            print(f"  repeat {repeat} {name}: CPU {cpu:.1f} s, wall {wall:.1f} s", flush=True)
    diff, where = metric_difference(finals[TRAINER], finals[PLAIN])
    print(
        f"\nWhole runs, interleaved ({repeats} each); final eval metrics, largest relative difference: {diff:.1e} ({where})"
    )
    print(ratio_table(times))


def in_lockstep(recipe, arm: str, data: PreparedData, repeats: int, tmp: str) -> None:
    """`lockstep` runs; prints the table (CPU only: wall time is shared) and the split by phase."""
    times: dict[str, list[tuple[float, float]]] = {TRAINER: [], PLAIN: []}
    phases = []
    for repeat in range(repeats):
        trainer_times, plain_times, final, plain_final = lockstep(recipe, arm, data, os.path.join(tmp, f"lock{repeat}"))
        trainer_cpu, plain_cpu = sum(trainer_times.values()), sum(plain_times.values())
        times[TRAINER].append((trainer_cpu, float("nan")))
        times[PLAIN].append((plain_cpu, float("nan")))
        phases.append((trainer_times, plain_times))
        print(f"  lock step {repeat}: (a) CPU {trainer_cpu:.1f} s, (b) CPU {plain_cpu:.1f} s", flush=True)
    diff, where = metric_difference(final, plain_final)
    print(f"\nIn lock step ({repeats}); final eval metrics, largest relative difference: {diff:.1e} ({where})")
    print(ratio_table(times))
    rows = []
    for name in LOCKSTEP_PHASES:
        a = statistics.median(p[0][name] for p in phases)
        b = statistics.median(p[1][name] for p in phases)
        rows.append([name, f"{a:.2f}", f"{b:.2f}", f"{a - b:+.2f}", f"{a / b:.3f}" if b else "-"])
    print("\nLock step by phase (CPU s, median over runs; (a)'s phases lag one step, see `lockstep`)")
    print(markdown_table(["phase", TRAINER, PLAIN, "(a) - (b)", "ratio"], rows))


def profile_sections(recipe, arm: str, data: PreparedData, tmp: str) -> None:
    """One instrumented run of each; prints CPU seconds per section side by side."""
    split = {}
    for name, fn, instrument in [(TRAINER, trainer_arm, instrument_trainer), (PLAIN, plain_arm, instrument_plain)]:
        sections = Sections()
        instrument(sections)
        try:
            cpu, _, _ = timed(fn, recipe, arm, data, os.path.join(tmp, f"profile{name[1]}"))
        finally:
            sections.restore()
        sections.times["other"] = cpu - sum(sections.times.values())
        split[name] = sections.times
    a, b = split[TRAINER], split[PLAIN]
    rows = [[label, f"{a.get(label, 0.0):.2f}", f"{b.get(label, 0.0):.2f}", f"{a.get(label, 0.0) - b.get(label, 0.0):+.2f}"]
            for label in ORDER + ["other"]]  # fmt: skip
    total_a, total_b = sum(a.values()), sum(b.values())
    rows.append(["total", f"{total_a:.2f}", f"{total_b:.2f}", f"{total_a - total_b:+.2f}"])
    print("\nCPU seconds by section (one instrumented run each; exclusive times)")
    print(markdown_table(["section", TRAINER, PLAIN, "(a) - (b)"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--arm", default="baseline", help="arm of the recipe (default: baseline)")
    for key, value in SCALED.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--repeats", type=int, default=2, help="whole runs of each, interleaved")
    parser.add_argument("--lockstep", type=int, default=1, help="runs of both in lock step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="then one instrumented run of each, split by section")
    parser.add_argument("--cprofile", default=None, help="write a cProfile of (a) to this file (pstats)")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    logging.basicConfig(level=logging.WARNING)
    overrides = {key: getattr(cli, key) for key in SCALED}
    recipe = load_recipe(cli.recipe, overrides)
    data = prepare_data(recipe.arguments().model, recipe.arguments().data)
    print(f"{cli.recipe}, arm {cli.arm}: {overrides}, CPU threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        if cli.repeats:
            interleaved(recipe, cli.arm, data, cli.repeats, tmp)
        if cli.lockstep:
            in_lockstep(recipe, cli.arm, data, cli.lockstep, tmp)
        if cli.profile:
            profile_sections(recipe, cli.arm, data, tmp)
        if cli.cprofile:
            profiler = cProfile.Profile()
            profiler.runcall(trainer_arm, recipe, cli.arm, data, os.path.join(tmp, "cprofile"))
            profiler.dump_stats(cli.cprofile)
            pstats.Stats(cli.cprofile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
