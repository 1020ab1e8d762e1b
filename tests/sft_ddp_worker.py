"""One SelfishSFTTrainer step on each of two gloo processes (DDP, 2 of the 4 texts each); rank 0 saves the model.

    torchrun --nproc_per_node 2 tests/sft_ddp_worker.py OUT_DIR

`tests/test_trl.py` compares the saved parameters with one process training on all 4 texts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.torchrun import exit_now


def main() -> None:
    from tests.test_trl import sft_trainer

    out_dir = Path(sys.argv[1])
    trainer = sft_trainer(out_dir / "run", batch_size=2, steps=1)
    assert dist.get_world_size() == 2 and trainer.args.world_size == 2
    trainer.train()
    if dist.get_rank() == 0:
        params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        torch.save({"params": params, "logs": logs}, out_dir / "ddp.pt")
    dist.barrier()
    dist.destroy_process_group()  # an unclean gloo exit aborts some runs
    exit_now()


if __name__ == "__main__":
    main()
