"""Recipes: one YAML file (plus command-line overrides) -> the argument dataclasses of every arm.

A recipe is a flat mapping of `ModelArguments`, `DataArguments`, `SelfishTrainingArguments` and
`ExperimentArguments` fields, plus an optional ``arms`` list; each arm has a ``name`` and overrides
any of those fields (usually just ``selfish_margin``)::

    model_type: gpt2
    block_size: 64
    max_steps: 2000
    arms:
      - {name: baseline, selfish_margin: null}
      - {name: selfish, selfish_margin: 2.0}

Values are converted with the same argparse types `HfArgumentParser` builds from the dataclasses, so
``learning_rate: 1e-3`` (a string to YAML) and ``--max_steps 50`` on the command line both work.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from ..config import SelfishTrainingArguments
from ..ops.loss import validate_margin
from ..ops.margin import NULL_WORDS, parse_margin
from .arguments import DataArguments, ExperimentArguments, ModelArguments
from .bundled import find_recipe

__all__ = ["Arm", "Recipe", "RunArguments", "load_recipe", "parse_overrides", "DEFAULT_ARMS"]

ARGUMENT_CLASSES = (ModelArguments, DataArguments, SelfishTrainingArguments, ExperimentArguments)
DEFAULT_ARMS = ({"name": "baseline", "selfish_margin": None}, {"name": "selfish", "selfish_margin": 2.0})
# the keys whose meaning depends on each other: loss_kwargs are checked against the loss_name they go with
LOSS_KEYS = ("loss_name", "loss_kwargs")


@dataclass
class RunArguments:
    """The parsed arguments of one training run (one arm, one seed)."""

    model: ModelArguments
    data: DataArguments
    training: SelfishTrainingArguments
    experiment: ExperimentArguments


@dataclass
class Arm:
    """One arm of a comparison: a name and the recipe fields it changes (the command line's included).

    ``conflicts``: keys the arm sets itself that the command line overrides with another value,
    ``{key: (arm's value, command line's value)}``.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    conflicts: dict[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass
class Recipe:
    """A validated recipe: the shared fields and the arms."""

    values: dict[str, Any]
    arms: list[Arm]
    source: str | None = None
    declares_arms: bool = False  # the recipe lists arms (or sweep_margins); else `DEFAULT_ARMS`

    def arm(self, name: str | None) -> Arm | None:
        """The arm ``name`` trains (``None``: the shared values, only for a recipe without arms)."""
        names = [a.name for a in self.arms]
        if name is None:
            if self.declares_arms:
                raise ValueError(
                    f"the recipe has arms {', '.join(names)}: pick the one to train with --arm NAME (without it the "
                    "run would train the shared values, neither arm)"
                )
            return None
        if name not in names:
            raise ValueError(f"no arm {name!r} in the recipe; its arms are {sorted(names)}")
        return self.arms[names.index(name)]

    def arguments(self, arm: Arm | None = None, **extra: Any) -> RunArguments:
        """Parse the dataclasses for ``arm`` (shared values, then the arm's, then ``extra``)."""
        values = {**self.values, **(arm.overrides if arm else {}), **extra}
        parser = HfArgumentParser(ARGUMENT_CLASSES)
        model, data, training, experiment = parser.parse_dict(_coerce_all(values, _actions(parser)))
        return RunArguments(model, data, training, experiment)

    def shared_arguments(self) -> RunArguments:
        """The settings a comparison reads once for all its arms (output_dir, seed, seeds, push_to_hub, ...).

        The shared values without `LOSS_KEYS`: a ``--loss_kwargs`` meant for an arm's own loss is checked
        against that arm's ``loss_name`` (`arguments`), not against a shared loss no arm of it trains."""
        return dataclasses.replace(
            self, values={k: v for k, v in self.values.items() if k not in LOSS_KEYS}
        ).arguments()

    def to_dict(self) -> dict[str, Any]:
        """The recipe as YAML-able data (what `results.json` records)."""
        return {**copy.deepcopy(self.values), "arms": [{"name": a.name, **a.overrides} for a in self.arms]}


def valid_keys() -> list[str]:
    return sorted({f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init})


def _check_keys(values: dict[str, Any], where: str) -> None:
    known = set(valid_keys())
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown recipe key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(known))}")


def _actions(parser: HfArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _is_flag(action: argparse.Action) -> bool:
    return action.type is string_to_bool or isinstance(action.const, bool)


def _coerce(action: argparse.Action, value: Any) -> Any:
    """Convert a string (from YAML or the command line) with the field's own argparse type."""
    if isinstance(value, list):  # each item is one value of the list (never split again)
        if action.nargs not in ("+", "*"):
            return value
        return [_coerce_scalar(action, v) if isinstance(v, str) else _check_integer(action, v) for v in value]
    if not isinstance(value, str):
        return _check_integer(action, value)
    if value.strip() in NULL_WORDS:  # "none" stays a string: report_to: none
        return None
    if _is_flag(action):
        try:
            return string_to_bool(value)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"recipe key {action.dest!r}: cannot read {value!r} ({err})") from None
    if action.nargs in ("+", "*"):
        return [_coerce_scalar(action, str(v)) for v in _list_items(action, value)]
    return _coerce_scalar(action, value)


def _list_items(action: argparse.Action, value: str) -> list[Any]:
    """A list setting given as one string: ``a,b`` or a YAML/JSON list ``[a, b]`` (``[]``: none)."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value.split(",")
    try:
        items = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(
            f"recipe key {action.dest!r}: cannot read the list {value!r} ({err.__class__.__name__})"
        ) from None
    return items if isinstance(items, list) else value.split(",")


def _check_integer(action: argparse.Action, value: Any) -> Any:
    """A YAML float for an integer field: ``2.0`` is 2; ``1.5`` is refused (the Trainer would not say why).

    A YAML boolean (``off``, ``no``, ``yes``, ...) is refused for every field that is not a flag: Python reads
    False as 0, so ``selfish_margin: off`` would train margin 0.
    """
    if isinstance(value, bool) and not _is_flag(action):
        raise ValueError(
            f"recipe key {action.dest!r}: got {value!r}, a yes/no value (YAML reads off/no/false/on/yes/true as "
            "one), but it takes no flag; write null for no value, a number, or quote a word ('no')"
        )
    if action.type is int and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"recipe key {action.dest!r}: expected an integer, got {value!r}")
        return int(value)
    return value


def _coerce_scalar(action: argparse.Action, value: str) -> Any:
    if action.type is None or action.type is str:
        return value
    try:
        return action.type(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"recipe key {action.dest!r}: cannot read {value!r} ({err})") from None


def _coerce_all(values: dict[str, Any], actions: dict[str, argparse.Action]) -> dict[str, Any]:
    coerced = {k: _coerce(actions[k], v) if k in actions else v for k, v in values.items()}
    for key, value in coerced.items():
        _check_finite(key, value)
    return coerced


def _check_finite(key: str, value: Any) -> None:
    """Refuse NaN and infinity in a numeric setting: NaN compares unequal to itself and trains to NaN."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"recipe key {key!r}: {item!r} is not a finite number; give a number such as 0.01")


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``['--max_steps', '50', '--report_to', 'none']`` -> ``{'max_steps': '50', 'report_to': 'none'}``.

    A flag with no value is ``True``; several values make a list. Values stay strings here and are
    converted with the field's type when the recipe is parsed.
    """
    overrides: dict[str, Any] = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key, _, inline = token[2:].partition("=")
            key = key.replace("-", "_")
            overrides[key] = inline if inline else True
        elif key is None:
            raise ValueError(f"unexpected argument {token!r}: overrides look like --key value")
        elif overrides[key] is True:
            overrides[key] = token
        else:
            previous = overrides[key]
            overrides[key] = (previous if isinstance(previous, list) else [previous]) + [token]
    return {k: ("true" if v is True else v) for k, v in overrides.items()}


def load_recipe(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe (None: defaults only), apply ``overrides`` to every arm, validate keys."""
    values: dict[str, Any] = {}
    if path is not None:
        path = find_recipe(path)  # a file, else a bundled recipe's name (`hf-selfish recipes` lists them)
        text = _read_recipe_text(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).replace("\n", " ")
            raise ValueError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
        if loaded is None:
            raise ValueError(
                f"recipe {str(path)!r} holds no settings; write `key: value` lines (see recipes/*.yaml), or leave the "
                "recipe out to use the defaults"
            )
        if not isinstance(loaded, dict):
            raise ValueError(f"recipe {str(path)!r} must be a mapping of keys to values, got {type(loaded).__name__}")
        values = loaded
    raw_arms = values.pop("arms", None)
    _check_keys(values, f"recipe {str(path) if path else '(defaults)'}")
    overrides = dict(overrides or {})
    _check_keys(overrides, "command-line overrides")
    own_values = dict(values)  # the recipe's own, before the command line: what an arm sets itself
    values.update(overrides)
    sweep = values.get("sweep_margins")
    if sweep:
        if raw_arms:
            raise ValueError("a recipe sets either `arms` or `sweep_margins`, not both")
        raw_arms = sweep_arms(sweep)
    declares_arms = bool(raw_arms)
    raw_arms = raw_arms or [dict(a) for a in DEFAULT_ARMS]
    arms = [_parse_arm(raw, i, overrides) for i, raw in enumerate(raw_arms)]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be unique, got {names}")
    recipe = Recipe(values=values, arms=arms, source=str(path) if path else None, declares_arms=declares_arms)
    recipe.shared_arguments()  # fail now, not after the first arm has trained
    own_recipe = dataclasses.replace(recipe, values=own_values)
    for arm, raw in zip(arms, raw_arms):
        _check_arm(own_recipe, recipe, arm, raw)
        arm.conflicts = _conflicts(own_recipe, recipe, arm, raw, overrides)
    return recipe


def _check_arm(own_recipe: Recipe, recipe: Recipe, arm: Arm, raw: dict[str, Any]) -> None:
    """Refuse an invalid arm now. One with a loss of its own that the command line's loss settings do not fit
    (``--loss_kwargs`` meant for another arm's loss) fails only where it is used: `compare`, ``train --arm`` it."""
    try:
        recipe.arguments(arm)
    except ValueError:
        if not any(key in raw for key in LOSS_KEYS):
            raise
        own_recipe.arguments(Arm(arm.name, {k: v for k, v in raw.items() if k != "name"}))  # raises: the recipe's


def _read_recipe_text(path: Path) -> str:
    if path.is_dir():
        raise ValueError(f"recipe {str(path)!r} is a directory; give the path of a YAML recipe file")
    if not path.is_file():
        raise ValueError(
            f"recipe file {str(path)!r} does not exist; give the path of a YAML recipe or the name of a bundled one "
            "(`hf-selfish recipes` lists them)"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"recipe {str(path)!r} is not a text file (not UTF-8); give a YAML recipe") from None


def _conflicts(
    own_recipe: Recipe, recipe: Recipe, arm: Arm, raw: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """Keys an arm sets itself whose value the command line changed: ``{key: (arm's, command line's)}``.

    The arm's own value is parsed from the recipe without the command line (so its ``loss_kwargs`` go with its
    own ``loss_name``). Where the command line leaves the arm invalid (another loss's parameters), the command
    line's value is reported as given: that arm fails only if it is trained (`compare` refuses the conflict first).
    """
    keys = [key for key in overrides if key in raw and key != "name"]
    if not keys:
        return {}
    try:
        own = own_recipe.arguments(Arm(arm.name, {k: v for k, v in raw.items() if k != "name"}))
    except ValueError:  # valid only with the command line's values: it replaced nothing that worked
        return {}
    try:
        used = recipe.arguments(arm)
    except ValueError:
        used = None
    found = {}
    for key in keys:
        mine = _field(own, key)
        theirs = overrides[key] if used is None else _field(used, key)
        if mine != theirs:
            found[key] = (mine, theirs)
    return found


def _field(args: RunArguments, key: str) -> Any:
    for part in ("model", "data", "training", "experiment"):
        value = getattr(getattr(args, part), key, _MISSING)
        if value is not _MISSING:
            return value
    return _MISSING


_MISSING = object()


def sweep_arms(margins: list[Any] | str) -> list[dict[str, Any]]:
    """The arms of a margin sweep: the CE baseline, then one selfish arm per margin.

    Margins are compared as the loss reads them (`parse_margin`): ``2`` and ``2.0``, ``auto`` and ``AUTO``
    are one margin, and ``inf`` / ``null`` is plain cross-entropy, the baseline itself; either would make two
    arms train the same thing, so both are refused.
    """
    if isinstance(margins, str):
        margins = margins.split(",")
    arms = [{"name": "baseline", "selfish_margin": None}]
    seen: dict[Any, str] = {}
    for margin in margins:
        if isinstance(margin, bool):
            validate_margin(margin)  # raises: a yes/no value is no margin
        text = str(margin).strip()
        value = parse_margin(text)
        if value is None:
            raise ValueError(
                f"sweep_margins lists {text!r}, which is plain cross-entropy: the baseline arm already trains it; "
                "drop it from the list"
            )
        if value in seen:
            raise ValueError(
                f"sweep_margins lists one margin twice ({seen[value]!r} and {text!r}, both {value}): two arms would "
                "train the same thing; list each margin once"
            )
        seen[value] = text
        arms.append({"name": f"margin_{text}", "selfish_margin": text})
    return arms


def _parse_arm(raw: Any, index: int, overrides: dict[str, Any]) -> Arm:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError(f"arm #{index + 1} must be a mapping with a 'name', got {raw!r}")
    name = check_arm_name(raw["name"])
    arm_values = {k: v for k, v in raw.items() if k != "name"}
    _check_keys(arm_values, f"arm {name!r}")
    arm_values.update(overrides)  # the command line wins; `compare` refuses what would erase an arm's own setting
    return Arm(name=name, overrides=arm_values)


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_arm_name(name: Any) -> str:
    """An arm name names a folder inside the run directory: one path component of letters, digits, ``._-``."""
    text = str(name)
    if not _SAFE_NAME.fullmatch(text) or len(text) > 100:
        raise ValueError(
            f"arm name {text!r} must be one folder name (letters, digits, '.', '_' or '-', starting with a letter or "
            "digit, at most 100 characters): it names the folder <output_dir>/<arm>-seed<seed>"
        )
    return text
