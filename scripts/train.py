"""Thin entry point for `accelerate launch` / `torchrun`: `hf-selfish train` with the same arguments.

accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml scripts/train.py RECIPE [--key value ...]
torchrun --nproc_per_node 2 scripts/train.py RECIPE [--key value ...]
"""

import sys

from hf_selfish.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
