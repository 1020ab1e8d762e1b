"""The recipes that ship with hf_selfish, found by name: ``hf-selfish compare tinyshakespeare_cpu``.

The repository keeps them at ``recipes/`` (``recipes/<name>.yaml`` paths work from a checkout); the wheel
carries the same files as ``hf_selfish/recipes/`` (setup.py maps the folder into the package), with the
accelerate configs they mention under ``accelerate/``. A recipe argument that is an existing file is
always that file; otherwise a bare name (with or without ``.yaml``) is looked up here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["RECIPE_SUFFIX", "bundled_recipes", "describe_recipe", "find_recipe", "recipes_dir"]

RECIPE_SUFFIX = ".yaml"
DESCRIPTION_CHARS = 110  # one line of `hf-selfish recipes` beside the name


def recipes_dir() -> Path | None:
    """The folder of the bundled recipes: ``hf_selfish/recipes`` of an installed wheel, else the ``recipes/``
    of the source checkout this package runs from (editable install or PYTHONPATH); None when neither is there."""
    package = Path(__file__).resolve().parents[1]
    if (package / "recipes").is_dir():
        return package / "recipes"
    checkout = package.parent
    if (checkout / "recipes").is_dir() and (checkout / "setup.cfg").is_file():
        return checkout / "recipes"
    return None


def bundled_recipes() -> dict[str, Path]:
    """``{name: path}`` of every bundled recipe, sorted by name (the accelerate configs are not recipes)."""
    folder = recipes_dir()
    if folder is None:
        return {}
    return {path.stem: path for path in sorted(folder.glob(f"*{RECIPE_SUFFIX}"))}


def find_recipe(value: str | os.PathLike) -> Path:
    """The recipe file ``value`` names: an existing path as given, else the bundled recipe of that name
    (``tinyshakespeare_cpu`` or ``tinyshakespeare_cpu.yaml``); anything else comes back unchanged (the
    caller reports it missing)."""
    path = Path(value)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.name.removesuffix(RECIPE_SUFFIX)
    return bundled_recipes().get(name, path)


def describe_recipe(path: str | os.PathLike) -> str:
    """One line about a recipe: the first sentence of its leading comment (a short one with the next)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").rstrip()
        if not text.strip() or text.startswith("   "):  # a blank comment line or an indented usage example
            break
        lines.append(text.strip())
    words = " ".join(lines)
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", words)
    line = sentences[0]
    if len(line) < 50 and len(sentences) > 1:
        line += " " + sentences[1]
    return line if len(line) <= DESCRIPTION_CHARS else line[: DESCRIPTION_CHARS - 1].rstrip(" ,;:") + "…"
