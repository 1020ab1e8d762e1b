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
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from huggingface_hub.errors import StrictDataclassError
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    TrainerState,
    default_data_collator,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from .arguments import DataArguments, ModelArguments
from .callbacks import SCENARIOS_FILE, GradientScenarioCallback, RankBucketEvalCallback
from .data import LMData, prepare_lm_data, token_labels
from .files import atomic_write_json, read_json
from .frequency import FREQUENCY_FILE_NAME, TokenFrequency
from .hub import HUB_ERRORS, check_can_push, push_failed_error
from .pretrained import load_causal_lm
from .recipe import Arm, Recipe, RunArguments
from .trainer import SelfishTrainer, SelfishTrainingArguments, output_vocab_size

logger = logging.getLogger(__name__)

__all__ = [
    "PreparedData", "prepare_data", "build_model", "build_trainer", "preflight", "train_run", "last_checkpoint",
    "compare", "comparison_dir", "RUN_RESULT_FILE",
]

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
        try:
            model = load_causal_lm(model_args)  # package names resolved, GGUF dequantized to a dense model
        except OSError as err:  # transformers' "not found" for folders and Hub ids alike
            raise ValueError(
                f"cannot load a model from model_name_or_path={model_args.model_name_or_path!r}: give a local "
                f"folder or a Hub id that holds one ({err})"
            ) from None
    else:
        model = AutoModelForCausalLM.from_config(_scratch_config(model_args, vocab_size))
    check_model_fits(model, vocab_size, block_size)
    return model


def load_checkpoint_model(
    model_args: ModelArguments, checkpoint: str | Path, vocab_size: int, block_size: int
) -> PreTrainedModel:
    """The model saved in a Trainer checkpoint folder of this run."""
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), trust_remote_code=model_args.trust_remote_code)
    check_model_fits(model, vocab_size, block_size)
    return model


def _scratch_config(model_args: ModelArguments, vocab_size: int) -> PreTrainedConfig:
    """The config of a from-scratch model: ``config_name`` or ``model_type`` defaults, then ``config_overrides``.

    The overrides are passed to the config's constructor, so the fields it derives (Llama's ``head_dim``
    and ``num_key_value_heads``, Qwen2's ``layer_types``) follow them.
    """
    overrides = {}
    if model_args.config_overrides:
        overrides = parse_config_overrides(_base_config(model_args), model_args.config_overrides)
    try:
        config = _base_config(model_args, **overrides)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise ValueError(f"config_overrides {model_args.config_overrides!r}: {err}") from None
    config.vocab_size = vocab_size
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids of another vocabulary (gpt2: 50256)
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, name, None)
    return config


def _base_config(model_args: ModelArguments, **fields: Any) -> PreTrainedConfig:
    """``config_name``'s config, else ``model_type``'s defaults, built with ``fields``."""
    if model_args.config_name:
        try:
            return AutoConfig.from_pretrained(
                model_args.config_name, trust_remote_code=model_args.trust_remote_code, **fields
            )
        except OSError as err:
            raise ValueError(
                f"cannot load a config from config_name={model_args.config_name!r}: give a local folder or a Hub id "
                f"that holds one ({err})"
            ) from None
    if not model_args.model_type:
        raise ValueError("no model: set model_name_or_path (pretrained) or model_type (from scratch)")
    if model_args.model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"unknown model_type {model_args.model_type!r}: use a transformers model type such as "
            "gpt2, llama, qwen2, mistral or gpt_neox"
        )
    return AutoConfig.for_model(model_args.model_type, **fields)


def parse_config_overrides(config: PreTrainedConfig, text: str) -> dict[str, Any]:
    """``"n_layer=2,n_embd=32"`` -> ``{"n_layer": 2, "n_embd": 32}``, typed like ``config``'s current values.

    A field whose current value is None takes an int, a float, true/false, or else the string.
    """
    overrides: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"config_overrides {text!r}: {item!r} is not key=value; write e.g. 'n_layer=2,n_embd=32'")
        if not hasattr(config, key):
            raise ValueError(f"config_overrides {text!r}: {type(config).__name__} has no field {key!r}")
        overrides[key] = _config_value(getattr(config, key), raw, key)
    return overrides


def _config_value(current: Any, raw: str, key: str) -> bool | int | float | str:
    """``raw`` read as the type of the field's ``current`` value (None: the first of int, float, bool, str that fits)."""
    if current is not None and not isinstance(current, (bool, int, float, str)):
        raise ValueError(
            f"config_overrides: {key} holds a {type(current).__name__}; only numbers, booleans and strings can be set"
        )
    kinds = (int, float, bool, str) if current is None else (type(current),)
    for kind in kinds:
        if kind is bool:
            if raw.lower() in ("true", "false"):
                return raw.lower() == "true"
            continue
        try:
            return kind(raw)
        except ValueError:
            continue
    raise ValueError(f"config_overrides: cannot read {key}={raw!r} as {kinds[0].__name__}")


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


# ------------------------------------------------------------------------------------------- preflight


def preflight(training: SelfishTrainingArguments) -> None:
    """What must fail a run before its data and training: launched processes that would each train alone,
    and ``push_to_hub`` with a Hub that cannot be written."""
    check_distributed_launch(training)
    if training.push_to_hub:
        check_can_push(training.hub_token)


def check_distributed_launch(training: SelfishTrainingArguments) -> None:
    """Refuse a multi-process launch the Trainer would not distribute (each process training alone).

    On a machine without GPUs, ``accelerate launch`` and ``torchrun`` start CPU processes that the
    Trainer runs as DDP (gloo) only with ``use_cpu=True``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and training.parallel_mode != ParallelMode.DISTRIBUTED:
        raise ValueError(
            f"{world_size} processes were launched, but the Trainer would train each alone (parallel mode "
            f"{training.parallel_mode.value}, device {training.device}); for CPU processes pass --use_cpu true"
        )


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
    vocab_size = output_vocab_size(model)
    groups = groups or data.groups
    rank_buckets = RankBucketEvalCallback(groups, vocab_size)
    kwargs = rank_buckets.trainer_kwargs()
    if training.selfish_log_scenarios_every:
        kwargs["callbacks"].append(GradientScenarioCallback(training.selfish_log_scenarios_every, groups))
    return SelfishTrainer(
        model=model,
        args=training,
        train_dataset=data.lm.datasets["train"],
        eval_dataset=data.lm.datasets["validation"],
        processing_class=data.lm.tokenizer,
        data_collator=default_data_collator,
        **kwargs,
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
    checkpoint = last_checkpoint(output_dir)
    state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME)) if checkpoint else None
    # at max_steps already (this run's: it may extend the checkpoint's); epoch-based runs resume correctly
    trained = state is not None and 0 < args.training.max_steps <= state.global_step
    if checkpoint:
        logger.info("%s: resuming from %s", arm, checkpoint)
        args.training.eval_on_start = False  # the checkpoint's history holds that evaluation already
    if trained:  # resuming there, the Trainer would run one step past max_steps: load the weights instead
        model = load_checkpoint_model(args.model, checkpoint, data.vocab_size, args.data.block_size)
    else:
        model = build_model(args.model, data.vocab_size, args.data.block_size, args.training.seed)
    trainer = build_trainer(args, model, data, groups)
    start = time.perf_counter()
    if trained:
        trainer.state = state
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    history = eval_history(trainer.state.log_history)
    if not history or history[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()
        history = eval_history(trainer.state.log_history)
    seconds = time.perf_counter() - start
    trainer.save_state()
    if trainer.is_world_process_zero():  # before the save: with push_to_hub the save uploads output_dir
        data.frequency.save(output_dir)
    _save_model(trainer, output_dir)
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
        "scenarios": str(output_dir / SCENARIOS_FILE) if (output_dir / SCENARIOS_FILE).is_file() else None,
    }
    if trainer.is_world_process_zero():
        atomic_write_json(finished, record)
    return record


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir`` (None if there is none).

    The Trainer writes a checkpoint's files in place and its ``trainer_state.json`` last, so a process
    killed while saving leaves a folder without it (or with a truncated one) beside a half-written
    model. Resuming from such a folder would load those weights with a fresh state (step 0), so it is
    skipped: training resumes from the checkpoint before and writes the folder again, whole.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    pattern = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    steps = {}
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            steps[int(match.group(1))] = path
    for step in sorted(steps, reverse=True):
        if _is_complete_checkpoint(steps[step]):
            return str(steps[step])
        logger.warning("%s is incomplete (interrupted while saving?): not resuming from it", steps[step])
    return None


def _is_complete_checkpoint(path: Path) -> bool:
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _save_model(trainer: SelfishTrainer, output_dir: Path) -> None:
    """Save the model; with ``push_to_hub`` the Trainer then writes the model card and uploads ``output_dir``."""
    try:
        trainer.save_model()
    except HUB_ERRORS as err:
        if not trainer.args.push_to_hub:
            raise
        raise push_failed_error(output_dir, trainer.hub_model_id or trainer.args.hub_model_id, err) from err


# --------------------------------------------------------------------------------------------- compare


def run_name(recipe: Recipe) -> str:
    return Path(recipe.source).stem if recipe.source else "hf_selfish"


def comparison_dir(recipe: Recipe) -> Path:
    """Where a comparison writes: the recipe's ``output_dir``, else ``runs/<recipe name>``."""
    return Path(recipe.arguments().training.output_dir or f"runs/{run_name(recipe)}")


def comparison_runs(recipe: Recipe) -> list[tuple[Arm, int, RunArguments]]:
    """Every (arm, seed) of a recipe with its parsed arguments, each in ``<output_dir>/<arm>-seed<s>``."""
    base = recipe.arguments()
    if base.experiment.seeds < 1:
        raise ValueError(f"seeds={base.experiment.seeds} runs nothing; set seeds to 1 or more")
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


def check_run_dir(run_dir: Path, recipe: Recipe, overwrite: bool) -> bool:
    """Whether ``run_dir`` holds another recipe's runs, which only ``overwrite`` may replace (else ValueError).

    `compare` records its recipe in ``results.json`` before the first run trains, so an interrupted
    comparison is recognised too: its checkpoints are never resumed under another recipe. The
    `RUN_NEUTRAL_KEYS` are not part of the recipe compared: re-running the same command, with or
    without ``overwrite``, resumes, and ``--seeds 3`` after ``--seeds 1`` adds two seeds.
    """
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        return False
    recorded = read_json(results, what="results file")
    previous = _comparable_recipe(recorded.get("recipe"))
    current = _comparable_recipe(recipe.to_dict())
    if previous == current:
        return False
    if overwrite or not _holds_runs(run_dir, recorded):  # nothing trained yet (it failed before): replace
        return True
    keys = sorted(k for k in {*previous, *current} if previous.get(k) != current.get(k))
    raise ValueError(
        f"{run_dir} holds the runs of a different recipe (differing in {', '.join(keys)}); pass --overwrite "
        "to replace them, or choose another --output_dir"
    )


def _holds_runs(run_dir: Path, results: dict[str, Any]) -> bool:
    """Whether a comparison directory holds finished runs or checkpoints."""
    return bool(results.get("runs")) or any(run_dir.glob(f"*/{PREFIX_CHECKPOINT_DIR}-*")) or any(
        run_dir.glob(f"*/{RUN_RESULT_FILE}")
    )


# Settings that do not change what a run computes: more seeds only add runs beside the existing ones.
RUN_NEUTRAL_KEYS = ("overwrite", "seeds", "disable_tqdm")


def _comparable_recipe(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """A recipe as JSON data, without `RUN_NEUTRAL_KEYS` (shared, or copied into arms by overrides)."""
    data = json.loads(json.dumps(recipe or {}, default=str))
    for values in [data, *(arm for arm in data.get("arms", []) if isinstance(arm, dict))]:
        for key in RUN_NEUTRAL_KEYS:
            values.pop(key, None)
    return data


def compare(recipe: Recipe, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every arm (x seeds) of ``recipe`` and write ``results.json``; returns its content.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    say = progress or logger.info
    runs = comparison_runs(recipe)
    base = recipe.arguments()
    if base.training.push_to_hub and base.training.hub_model_id and len(runs) > 1:
        raise ValueError(
            f"hub_model_id={base.training.hub_model_id!r} names one Hub repository for {len(runs)} runs; leave it "
            "unset (each run pushes to its own <user>/<arm>-seed<seed>) or push one arm with `hf-selfish train --arm`"
        )
    preflight(base.training)
    run_dir = comparison_dir(recipe)
    if check_run_dir(run_dir, recipe, base.experiment.overwrite):
        _clear_finished(run_dir, runs)
    prepared: dict[str, PreparedData] = {}
    reference: PreparedData | None = None  # the first arm's data: its frequencies define the groups
    records = []
    for index, (arm, seed, args) in enumerate(runs, start=1):
        key = _data_key(args)
        if key not in prepared:
            prepared[key] = prepare_data(args.model, args.data)
        data = prepared[key]
        if reference is None:
            reference = data
            run_dir.mkdir(parents=True, exist_ok=True)
            reference.frequency.save(run_dir / FREQUENCY_FILE_NAME)  # the comparison's frequencies, once
        if not (run_dir / RESULTS_FILE).is_file():  # record the recipe before anything trains (check_run_dir)
            atomic_write_json(run_dir / RESULTS_FILE, _results(recipe, run_dir, reference, runs, records))
        say(f"[{index}/{len(runs)}] {arm.name} (margin {args.training.selfish_margin}) seed {seed} -> {args.training.output_dir}")
        record = train_run(args, data, arm=arm.name, groups=reference.groups)
        record["output_dir"] = str(Path(record["output_dir"]).relative_to(run_dir))
        if record.get("scenarios"):
            record["scenarios"] = str(Path(record["scenarios"]).relative_to(run_dir))
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
    """The content of ``results.json`` (see the module docstring) for the runs recorded so far."""
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
