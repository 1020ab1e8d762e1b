"""One `SelfishTrainer` step under DeepSpeed ZeRO on each of two gloo processes; rank 0 saves the result.

    torchrun --nproc_per_node 2 tests/deepspeed_trainer_worker.py STAGE LAYOUT[,LAYOUT...] OUT_DIR

The way a user's script runs under ``torchrun`` or ``deepspeed --num_gpus 2`` on CPUs:
``SelfishTrainingArguments(use_cpu=True, deepspeed=<dict>)`` first (at stage 3 it makes
``from_config`` build the model under ``deepspeed.zero.Init``, partitioned from birth), then the
gloo process group, then the model, then ``SelfishTrainer(...).train()`` for one SGD step on the four
rows of ``step_batch()`` (two per rank). Layouts: ``untied`` and ``tied`` (``selfish_fused=True``) and
``unfused`` (``selfish_fused=False``). Saves ``OUT_DIR/trainer_zeroSTAGE_LAYOUT.pt``: the parameters
before and after the step (gathered whole), the logged training loss and the head's storage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from datasets import Dataset

from tests.deepspeed_steps_worker import gathered_parameters, head_storage, layout_model
from tests.fused_steps_worker import LR, MARGIN, step_batch
from tests.torchrun import run_each_layout


def trainer_ds_config(stage: int) -> dict:
    """What a user writes: sizes and clipping left to the Trainer ("auto"), the head partitioned at stage 3."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def run(stage: int, layout: str, out_dir: Path) -> None:
    from hf_selfish import SelfishTrainer, SelfishTrainingArguments

    args = SelfishTrainingArguments(
        output_dir=str(out_dir / f"trainer_zero{stage}_{layout}"),
        use_cpu=True,
        deepspeed=trainer_ds_config(stage),
        selfish_margin=MARGIN,
        selfish_fused=layout != "unfused",
        per_device_train_batch_size=2,
        max_steps=1,
        optim="sgd",  # one step only: later SGD steps drift under DeepSpeed even for the stock Trainer
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the reference does not clip
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    args.device  # noqa: B018  (sets up the Trainer's distributed state before zero.Init runs)
    model = layout_model("tied" if layout == "tied" else "untied")  # under zero.Init at stage 3
    storage = head_storage(model.get_output_embeddings().weight)
    initial = gathered_parameters(model)
    rows = {key: value.tolist() for key, value in step_batch().items()}
    trainer = SelfishTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    params = gathered_parameters(trainer.model)
    engine = type(trainer.model_wrapped).__name__
    if dist.get_rank() == 0:
        result = {"initial": initial, "params": params, "loss": losses[0], "head": storage, "engine": engine}
        torch.save(result, out_dir / f"trainer_zero{stage}_{layout}.pt")


def main() -> None:
    layouts, out_dir = sys.argv[2].split(","), Path(sys.argv[3])
    run_each_layout(
        run, int(sys.argv[1]), layouts, out_dir, lambda: deepspeed.init_distributed(dist_backend="gloo")
    )  # before any model: zero.Init needs the process group


if __name__ == "__main__":
    main()
