"""Runs: data -> model -> SelfishTrainer -> saved results, for one arm (`train_run`) or all (`compare`).

One direction only: this module reads recipes and writes output directories; `report` and `plots`
read those directories and never train.

Run directory of a comparison (see `results.json` written by `compare`)::

    <output_dir>/results.json, token_frequency.json, report.md, plots/
    <output_dir>/<arm>-seed<seed>/      one Trainer output_dir per run (checkpoints, trainer_state.json,
                                        rank_buckets.json, scenarios.safetensors, run_result.json)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataArguments, ModelArguments
from .callbacks import RankBucketEvalCallback
from .data import LMData, prepare_lm_data, token_labels
from .files import atomic_write_json, read_json
from .frequency import TokenFrequency
from .recipe import Arm, Recipe, RunArguments
from .trainer import SelfishTrainer

logger = logging.getLogger(__name__)

__all__ = ["PreparedData", "prepare_data", "build_model", "build_trainer", "train_run", "compare", "comparison_dir", "RUN_RESULT_FILE"]

RUN_RESULT_FILE = "run_result.json"
RESULTS_FILE = "results.json"
RESULTS_FORMAT = 1


# ------------------------------------------------------------------------------------------------ data


@dataclass
class PreparedData:
    """The data side of a run: blocks, tokenizer, train-split frequencies and the evaluation groups."""

    lm: LMData
    frequency: TokenFrequency
    groups: dict[str, list[int]]

    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size


def prepare_data(model_args: ModelArguments, data_args: DataArguments) -> PreparedData:
    """Tokenize and block the data, count train frequencies, and build the eval token groups.

    Groups are the frequency-rank buckets of the TRAIN split (linear buckets of ``bucket_size`` or
    log-spaced for big vocabularies), plus the two language groups under the low-resource simulation.
    """
    lm = prepare_lm_data(model_args, data_args, train_language=data_args.train_language)
    tokens = token_labels(lm.tokenizer, lm.vocab_size)
    frequency = TokenFrequency.from_dataset(lm.datasets["train"], lm.vocab_size, tokens=tokens)
    groups = {**frequency.groups(data_args.bucket_scheme, data_args.bucket_size), **lm.groups}
    return PreparedData(lm=lm, frequency=frequency, groups=groups)


# ----------------------------------------------------------------------------------------------- model


def build_model(model_args: ModelArguments, vocab_size: int, block_size: int, seed: int) -> PreTrainedModel:
    """A pretrained causal LM, or a fresh one from ``model_type`` + ``config_overrides`` (seeded init)."""
    set_seed(seed)
    if model_args.model_name_or_path is not None:
        kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
        if model_args.gguf_file:
            kwargs["gguf_file"] = model_args.gguf_file
        if model_args.torch_dtype:
            kwargs["dtype"] = model_args.torch_dtype
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(_scratch_config(model_args, vocab_size))
    check_model_fits(model, vocab_size, block_size)
    return model


def _scratch_config(model_args: ModelArguments, vocab_size: int):
    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name, trust_remote_code=model_args.trust_remote_code)
    elif model_args.model_type:
        try:
            config = AutoConfig.for_model(model_args.model_type)
        except ValueError:
            raise ValueError(
                f"unknown model_type {model_args.model_type!r}: use a transformers model type such as "
                "gpt2, llama, qwen2, mistral or gpt_neox"
            ) from None
    else:
        raise ValueError("no model: set model_name_or_path (pretrained) or model_type (from scratch)")
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as err:
            raise ValueError(f"config_overrides {model_args.config_overrides!r}: {err}") from None
    config.vocab_size = vocab_size
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids of another vocabulary (gpt2: 50256)
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, name, None)
    return config


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings allow, when the config says."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    return None


def check_model_fits(model: PreTrainedModel, vocab_size: int, block_size: int) -> None:
    """Refuse a tokenizer larger than the embeddings or blocks longer than the positions."""
    embeddings = model.get_input_embeddings().num_embeddings
    if vocab_size > embeddings:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the model's embeddings hold {embeddings}; "
            "use the model's own tokenizer or resize the embeddings"
        )
    positions = max_positions(model)
    if positions is not None and block_size > positions:
        raise ValueError(f"block_size={block_size} exceeds the model's {positions} positions; lower block_size")


# --------------------------------------------------------------------------------------------- trainer


def build_trainer(
    args: RunArguments, model: PreTrainedModel, data: PreparedData, groups: dict[str, list[int]] | None = None
) -> SelfishTrainer:
    """A `SelfishTrainer` with rank-bucket evaluation (metrics logged as ``eval_{group}_{stat}``).

    ``groups`` default to the run's own data groups; a comparison passes its reference groups so
    every arm is scored on the same token groups.
    """
    training = args.training
    training.batch_eval_metrics = True  # accumulate eval statistics batch by batch: O(V) memory
    vocab_size = model.get_output_embeddings().weight.shape[0]
    rank_buckets = RankBucketEvalCallback(groups or data.groups, vocab_size)
    return SelfishTrainer(
        model=model,
        args=training,
        train_dataset=data.lm.datasets["train"],
        eval_dataset=data.lm.datasets["validation"],
        processing_class=data.lm.tokenizer,
        data_collator=default_data_collator,
        **rank_buckets.trainer_kwargs(),
    )


def eval_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation entries of a Trainer's log history (each holds ``step`` and ``eval_*``)."""
    return [entry for entry in log_history if "eval_loss" in entry]


def train_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-loss entries of a Trainer's log history."""
    return [entry for entry in log_history if "loss" in entry and "eval_loss" not in entry]


def train_run(
    args: RunArguments, data: PreparedData, *, arm: str = "run", groups: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Train one run into ``args.training.output_dir`` and return its record (see `results.json`).

    A finished run (``run_result.json`` present) is returned as it is; an interrupted one resumes
    from its last checkpoint.
    """
    output_dir = Path(args.training.output_dir)
    finished = output_dir / RUN_RESULT_FILE
    if finished.is_file():
        logger.info("%s is finished already (%s): skipping", arm, finished)
        return read_json(finished, what="run result")
    model = build_model(args.model, data.vocab_size, args.data.block_size, args.training.seed)
    trainer = build_trainer(args, model, data, groups)
    checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if checkpoint:
        logger.info("%s: resuming from %s", arm, checkpoint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    history = eval_history(trainer.state.log_history)
    if not history or history[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()
        history = eval_history(trainer.state.log_history)
    seconds = time.perf_counter() - start
    trainer.save_model()
    trainer.save_state()
    data.frequency.save(output_dir)
    record = {
        "arm": arm,
        "seed": args.training.seed,
        "selfish_margin": trainer.margin_schedule.start,  # "auto" resolved against the vocabulary
        "selfish_margin_setting": args.training.selfish_margin,
        "output_dir": str(output_dir),
        "status": "finished",
        "resumed_from": checkpoint,
        "train_seconds": round(seconds, 2),
        "global_step": trainer.state.global_step,
        "final": history[-1],
        "history": history,
        "train_history": train_history(trainer.state.log_history),
        "scenarios": None,
    }
    if trainer.is_world_process_zero():
        atomic_write_json(finished, record)
    return record


# --------------------------------------------------------------------------------------------- compare


def run_name(recipe: Recipe) -> str:
    return Path(recipe.source).stem if recipe.source else "hf_selfish"


def comparison_dir(recipe: Recipe) -> Path:
    """Where a comparison writes: the recipe's ``output_dir``, else ``runs/<recipe name>``."""
    return Path(recipe.arguments().training.output_dir or f"runs/{run_name(recipe)}")


def comparison_runs(recipe: Recipe) -> list[tuple[Arm, int, RunArguments]]:
    """Every (arm, seed) of a recipe with its parsed arguments, each in ``<output_dir>/<arm>-seed<s>``."""
    base = recipe.arguments()
    run_dir = comparison_dir(recipe)
    runs = []
    for offset in range(base.experiment.seeds):
        seed = base.training.seed + offset
        for arm in recipe.arms:
            out = run_dir / f"{arm.name}-seed{seed}"
            runs.append((arm, seed, recipe.arguments(arm, seed=seed, output_dir=str(out))))
    return runs


def _data_key(args: RunArguments) -> str:
    return json.dumps([dataclasses.asdict(args.data), dataclasses.asdict(args.model)], sort_keys=True, default=str)


def check_run_dir(run_dir: Path, recipe: Recipe, overwrite: bool) -> None:
    """Refuse to mix a different recipe's finished results into ``run_dir`` unless ``overwrite``."""
    results = run_dir / RESULTS_FILE
    if not results.is_file() or overwrite:
        return
    previous = read_json(results, what="results file").get("recipe")
    if previous != json.loads(json.dumps(recipe.to_dict(), default=str)):
        raise ValueError(
            f"{run_dir} holds the results of a different recipe; pass --overwrite to replace them, "
            "or choose another --output_dir"
        )


def compare(recipe: Recipe, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every arm (x seeds) of ``recipe`` and write ``results.json``; returns its content.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    say = progress or logger.info
    runs = comparison_runs(recipe)
    base = recipe.arguments()
    run_dir = comparison_dir(recipe)
    check_run_dir(run_dir, recipe, base.experiment.overwrite)
    if base.experiment.overwrite:
        _clear_finished(run_dir, runs)
    prepared: dict[str, PreparedData] = {}
    reference: PreparedData | None = None  # the first arm's data: its frequencies define the groups
    records = []
    for index, (arm, seed, args) in enumerate(runs, start=1):
        key = _data_key(args)
        if key not in prepared:
            prepared[key] = prepare_data(args.model, args.data)
        data = prepared[key]
        reference = reference or data
        say(f"[{index}/{len(runs)}] {arm.name} (margin {args.training.selfish_margin}) seed {seed} -> {args.training.output_dir}")
        record = train_run(args, data, arm=arm.name, groups=reference.groups)
        record["output_dir"] = str(Path(record["output_dir"]).relative_to(run_dir))
        records.append(record)
        final = record["final"]
        say(f"[{index}/{len(runs)}] {arm.name} seed {seed}: eval_loss {final['eval_loss']:.4f} "
            f"in {record['train_seconds']:.0f} s")
        results = _results(recipe, run_dir, reference, runs, records)
        atomic_write_json(run_dir / RESULTS_FILE, results)  # after every run: partial results survive
    return results


def _clear_finished(run_dir: Path, runs) -> None:
    for _, _, args in runs:
        shutil.rmtree(args.training.output_dir, ignore_errors=True)
    (run_dir / RESULTS_FILE).unlink(missing_ok=True)


def _arm_summary(arm: Arm, args: RunArguments, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Name and margin of an arm (the resolved number once one of its runs has trained)."""
    resolved = [r["selfish_margin"] for r in records if r["arm"] == arm.name]
    margin = resolved[0] if resolved else args.training.selfish_margin
    return {"name": arm.name, "selfish_margin": margin, "selfish_margin_setting": args.training.selfish_margin}


def _results(recipe: Recipe, run_dir: Path, data: PreparedData, runs, records) -> dict[str, Any]:
    data.frequency.save(run_dir)
    return {
        "format": RESULTS_FORMAT,
        "name": run_dir.name,
        "recipe": json.loads(json.dumps(recipe.to_dict(), default=str)),
        "vocab_size": data.vocab_size,
        "tokens": data.frequency.tokens,
        "train_counts": data.frequency.counts,
        "groups": data.groups,
        "arms": [_arm_summary(arm, args, records) for arm, seed, args in runs if seed == runs[0][1]],
        "runs": records,
    }
