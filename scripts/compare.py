"""Thin entry point: `hf-selfish compare` with the same arguments (see README)."""

import sys

from hf_selfish.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
