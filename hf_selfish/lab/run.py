"""One run: data -> model -> SelfishTrainer -> saved results (`train_run`).

A finished run (``run_result.json`` present) is returned as it is; an interrupted one resumes from its
last complete checkpoint. `hf_selfish.lab.compare` repeats runs over arms and seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from transformers import PreTrainedModel, TrainerState, default_data_collator
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from ..callbacks import (
    CompactProgressCallback,
    GradientScenarioCallback,
    RankBucketEvalCallback,
    StopOnNonFiniteLossCallback,
    SubsetEvalCallback,
)
from ..distributed import init_deepspeed_distributed
from ..frequency import TokenFrequency
from ..hub import HUB_ERRORS, check_can_push, push_failed_error
from ..trainer import SelfishTrainer, SelfishTrainingArguments, has_labelled_token, output_vocab_size
from .arguments import DataArguments, ModelArguments
from .data import LMData, prepare_lm_data, token_labels
from .guards import RunDirLock, check_folder_kind, check_output_dir
from .models import build_model, load_checkpoint_model
from .recipe import RunArguments
from .results import (
    FINISHED,
    SCENARIOS_FILE,
    RunRecord,
    check_same_run,
    eval_history,
    read_run_record,
    train_history,
    write_run_record,
    write_run_settings,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PreparedData",
    "build_trainer",
    "check_distributed_launch",
    "has_labelled_token",
    "last_checkpoint",
    "preflight",
    "prepare_data",
    "train_run",
]


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
    for split, dataset in lm.datasets.items():
        if not has_labelled_token(dataset):
            raise ValueError(
                f"the {split} split has no labelled token after the causal shift ({len(dataset)} blocks); a run "
                "on it would train or score nothing: give more text or a larger block_size"
            )
    tokens = token_labels(lm.tokenizer, lm.vocab_size)
    frequency = TokenFrequency.from_dataset(lm.datasets["train"], lm.vocab_size, tokens=tokens)
    groups = {**frequency.groups(data_args.bucket_scheme, data_args.bucket_size), **lm.groups}
    return PreparedData(lm=lm, frequency=frequency, groups=groups)


def preflight(args: RunArguments) -> None:
    """What must fail a run before its data and training: an output_dir that cannot hold it, launched
    processes that would each train alone, and ``push_to_hub`` with a Hub that cannot be written."""
    if args.training.output_dir is None:
        raise ValueError("set output_dir in the recipe or with --output_dir")
    check_output_dir(args.training.output_dir)
    check_folder_kind(args.training.output_dir, "run")
    check_distributed_launch(args.training)
    if args.training.push_to_hub:
        check_can_push(args.training.hub_token)


# Arguments that do not change what a run computes (where it is written, how it reports, its Hub copy).
RUN_NEUTRAL_ARGUMENTS = (
    "output_dir",
    "logging_dir",
    "run_name",
    "disable_tqdm",
    "report_to",
    "eval_on_start",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_strategy",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "save_total_limit",
    "dataloader_num_workers",
    "overwrite",
    "seeds",
)


def run_settings(args: RunArguments) -> dict[str, Any]:
    """What a run computes, as JSON data: its model, data and training arguments without the neutral ones."""
    parts = {
        "model": dataclasses.asdict(args.model),
        "data": dataclasses.asdict(args.data),
        "training": args.training.to_dict(),
    }
    for values in parts.values():
        for key in RUN_NEUTRAL_ARGUMENTS:
            values.pop(key, None)
    return json.loads(json.dumps(parts, default=str))


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


def build_trainer(
    args: RunArguments, model: PreTrainedModel, data: PreparedData, groups: dict[str, list[int]] | None = None
) -> SelfishTrainer:
    """A `SelfishTrainer` with rank-bucket evaluation (metrics logged as ``eval_{group}_{stat}``).

    ``groups`` default to the run's own data groups; a comparison passes its reference groups so
    every arm is scored on the same token groups.
    """
    training = args.training
    training.batch_eval_metrics = True  # accumulate eval statistics batch by batch: O(V) memory
    training.logging_nan_inf_filter = False  # a NaN step must show in the log: StopOnNonFiniteLossCallback
    vocab_size = output_vocab_size(model)
    groups = groups or data.groups
    rank_buckets = RankBucketEvalCallback(groups, vocab_size)
    kwargs = rank_buckets.trainer_kwargs()
    kwargs["callbacks"].append(StopOnNonFiniteLossCallback())
    if training.selfish_log_scenarios_every:
        kwargs["callbacks"].append(GradientScenarioCallback(training.selfish_log_scenarios_every, groups))
    trainer = SelfishTrainer(
        model=model,
        args=training,
        train_dataset=data.lm.datasets["train"],
        eval_dataset=data.lm.datasets["validation"],
        processing_class=data.lm.tokenizer,
        data_collator=default_data_collator,
        token_counts=data.frequency.counts,  # the train split's: tlat, logit_adjustment, agg, selfish_rare
        **kwargs,
    )
    if trainer.pop_callback(ProgressCallback) is not None:  # the bars, with one short line per log
        trainer.add_callback(CompactProgressCallback())
    if data.lm.eval_subsets:  # after the rank-bucket callback: each language scored on the same groups
        trainer.add_callback(SubsetEvalCallback(data.lm.eval_subsets).bind(trainer))
    return trainer


def train_run(
    args: RunArguments, data: PreparedData, *, arm: str = "run", groups: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Train one run into ``args.training.output_dir`` and return its record (see `results.json`).

    A finished run (``run_result.json`` present) is returned as it is; an interrupted one resumes
    from its last checkpoint.
    """
    output_dir = Path(args.training.output_dir)
    settings = run_settings(args)
    check_folder_kind(output_dir, "run")  # `preflight` says so first; the Python API is guarded too
    with RunDirLock(output_dir):
        finished = read_run_record(output_dir)
        # a run of other settings is never reused; an interrupted one may be resumed to more steps
        check_same_run(output_dir, settings, ignore=() if finished else ("max_steps",))
        if finished is not None:
            logger.info("%s is finished already (%s): skipping", arm, output_dir)
            return finished
        return _train(args, data, arm, groups, settings)


def _train(args: RunArguments, data: PreparedData, arm: str, groups, settings: dict[str, Any]) -> RunRecord:
    output_dir = Path(args.training.output_dir)
    if args.training.max_steps < 0:
        logger.warning(
            "%s: max_steps=-1, so the run trains num_train_epochs=%s epochs", arm, args.training.num_train_epochs
        )
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
        init_deepspeed_distributed(args.training)  # ZeRO-3 builds the model partitioned, over this group
        model = build_model(args.model, data.vocab_size, args.data.block_size, args.training.seed)
    trainer = build_trainer(args, model, data, groups)
    if trainer.is_world_process_zero():
        write_run_settings(output_dir, settings)
    start = time.perf_counter()
    if trained:
        trainer.state = state
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
    divergence = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnNonFiniteLossCallback))
    divergence.raise_if_diverged()
    history = eval_history(trainer.state.log_history)
    if not history or history[-1].get("step") != trainer.state.global_step:
        trainer.evaluate()
        divergence.raise_if_diverged()
        history = eval_history(trainer.state.log_history)
    seconds = time.perf_counter() - start
    trainer.save_state()
    if trainer.is_world_process_zero():  # before the save: with push_to_hub the save uploads output_dir
        data.frequency.save(output_dir)
    _save_model(trainer, output_dir)
    scenarios = output_dir / SCENARIOS_FILE
    selfish = args.training.loss_name == "selfish"  # another loss_name trains no margin
    record = RunRecord(
        arm=arm,
        seed=args.training.seed,
        selfish_margin=trainer.margin_schedule.start if selfish else None,  # "auto" resolved against V
        selfish_margin_setting=args.training.selfish_margin if selfish else None,
        output_dir=str(output_dir),
        status=FINISHED,
        resumed_from=checkpoint,
        train_seconds=round(seconds, 2),
        global_step=trainer.state.global_step,
        final=history[-1],
        history=history,
        train_history=train_history(trainer.state.log_history),
        scenarios=str(scenarios) if scenarios.is_file() else None,
    )
    if trainer.is_world_process_zero():
        write_run_record(output_dir, record)
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
    """A checkpoint whose trainer state parses and whose weight and optimizer files are whole."""
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(_file_is_whole(file) for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt")))


def _file_is_whole(path: Path) -> bool:
    """safetensors: the header parses and the file is as long as it says; .pt (a zip): its directory reads."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        else:
            zipfile.ZipFile(path).close()
    except Exception as err:  # safetensors raises its own error types; any failure means "do not resume here"
        logger.warning("%s is damaged (%s)", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
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
