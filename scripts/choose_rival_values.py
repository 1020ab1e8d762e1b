"""Print the tuning table of a rival-loss tuning comparison and the value chosen per method.

The same as ``hf-selfish tune RUN_DIR [...]`` (kept for old commands)::

    python scripts/choose_rival_values.py runs/rivals_tune_cpu [--group rank_41-50] [--max_loss_increase 0.05]
    python scripts/choose_rival_values.py runs/bible_nya_sweep_cpu --language nya_chichewa --main eng_web
"""

from __future__ import annotations

import sys

from hf_selfish.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
