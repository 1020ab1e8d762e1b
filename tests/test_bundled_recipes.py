"""Bundled recipes: found by name, every recipes/*.yaml listed, and every file of recipes/ inside the wheel."""

import configparser
import fnmatch
from pathlib import Path

import pytest

from hf_selfish import cli
from hf_selfish.lab.bundled import bundled_recipes, describe_recipe, find_recipe, recipes_dir
from hf_selfish.lab.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def test_every_recipe_of_the_repository_is_bundled_by_name():
    assert recipes_dir() == RECIPES  # a source checkout: the repository's folder
    found = bundled_recipes()
    assert list(found) == sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert len(found) >= 10 and "tinyshakespeare_cpu" in found
    assert all(path == RECIPES / f"{name}.yaml" for name, path in found.items())


def test_find_recipe_by_name_and_a_path_still_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundled = RECIPES / "tinyshakespeare_cpu.yaml"
    assert find_recipe("tinyshakespeare_cpu") == bundled
    assert find_recipe("tinyshakespeare_cpu.yaml") == bundled
    assert find_recipe(str(bundled)) == bundled
    assert find_recipe("no_such_recipe") == Path("no_such_recipe")  # unchanged: load_recipe names it missing
    assert find_recipe("somewhere/tinyshakespeare_cpu.yaml") == Path("somewhere/tinyshakespeare_cpu.yaml")
    (tmp_path / "tinyshakespeare_cpu.yaml").write_text("max_steps: 3\n")  # a file of that name here: the file
    assert find_recipe("tinyshakespeare_cpu.yaml") == Path("tinyshakespeare_cpu.yaml")
    assert load_recipe("tinyshakespeare_cpu.yaml").values == {"max_steps": 3}
    by_name = load_recipe("tinyshakespeare_cpu", {"max_steps": "5"})
    assert by_name.values == load_recipe(bundled, {"max_steps": "5"}).values
    assert by_name.source == str(bundled) and [a.name for a in by_name.arms] == ["baseline", "selfish"]
    with pytest.raises(ValueError, match="'no_such_recipe' does not exist.*hf-selfish recipes"):
        load_recipe("no_such_recipe")


def test_cli_recipes_lists_every_recipe_with_one_line(capsys):
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {
        line.split()[0]: line.split(None, 1)[1] for line in lines if line and line.split()[0] in bundled_recipes()
    }
    assert list(listed) == list(bundled_recipes())
    assert all(5 < len(text) <= 110 for text in listed.values())
    assert listed["finetune_causal_lm"] == (
        "Fine-tune a small pretrained causal LM on your own text: plain cross-entropy vs selfish loss (margin 2)."
    )
    assert lines[-2].startswith(f"{len(listed)} recipes in {RECIPES}")
    assert lines[-1].endswith(str(RECIPES / "accelerate"))  # the configs the recipes' comments launch with


def test_describe_recipe_first_sentence_of_the_leading_comment(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# GPU ONLY. A big model\n# on many tokens. More text.\n#   hf-selfish compare r\nmax_steps: 1\n")
    assert describe_recipe(path) == "GPU ONLY. A big model on many tokens."  # a short first sentence takes the next
    path.write_text("# " + "word " * 40 + "\nmax_steps: 1\n")
    text = describe_recipe(path)
    assert len(text) == 110 and text.endswith("…")
    path.write_text("max_steps: 1\n")
    assert describe_recipe(path) == ""


def test_the_wheel_maps_every_file_of_recipes_into_the_package():
    """setup.py maps recipes/ (and recipes/accelerate/) to hf_selfish.recipes; package_data must match every file."""
    setup_py = (REPO / "setup.py").read_text()
    assert '"hf_selfish.recipes": "recipes"' in setup_py
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = {key: value.replace(",", " ").split() for key, value in config["options.package_data"].items()}
    for path in RECIPES.rglob("*"):
        if path.is_file():
            package = ".".join(["hf_selfish", "recipes", *path.relative_to(RECIPES).parent.parts])
            assert f'"{package}"' in setup_py, f"{package} is not a package of setup.py"
            assert any(fnmatch.fnmatch(path.name, p) for p in patterns.get(package, [])), f"{path} not in the wheel"
