"""The import rules of the layers (ops -> core -> lab -> reporting -> cli), read off every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_selfish"
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved), at any depth of the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import x` imports module x
    return names


MODULES = {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py")) if "metrics" not in p.parts}


def in_layer(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def test_the_rule_reader_sees_relative_imports():
    assert "hf_selfish.ops.loss" in MODULES["hf_selfish.trainer"]
    assert "hf_selfish.lab.results" in MODULES["hf_selfish.reporting.summary"]
    assert "hf_selfish.metric_names" in MODULES["hf_selfish.lab.data.lowres"]


@pytest.mark.parametrize("module", [m for m in MODULES if in_layer(m, "hf_selfish.ops")])
def test_ops_imports_only_torch(module):
    outside = {
        name
        for name in MODULES[module]
        if not (
            name.split(".")[0] in sys.stdlib_module_names or in_layer(name, "torch") or in_layer(name, "hf_selfish.ops")
        )
    }
    assert not outside, f"{module} imports {sorted(outside)}"


CORE = [
    m
    for m in MODULES
    if m.startswith("hf_selfish")
    and not any(in_layer(m, f"hf_selfish.{layer}") for layer in ("ops", "lab", "reporting", "cli"))
]


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_lab_or_reporting(module):
    upward = {n for n in MODULES[module] if in_layer(n, "hf_selfish.lab") or in_layer(n, "hf_selfish.reporting")}
    assert not upward, f"{module} imports {sorted(upward)}"


@pytest.mark.parametrize("module", [m for m in MODULES if in_layer(m, "hf_selfish.lab")])
def test_lab_never_imports_reporting_or_the_cli(module):
    upward = {n for n in MODULES[module] if in_layer(n, "hf_selfish.reporting") or in_layer(n, "hf_selfish.cli")}
    assert not upward, f"{module} imports {sorted(upward)}"


@pytest.mark.parametrize("module", [m for m in MODULES if in_layer(m, "hf_selfish.reporting")])
def test_reporting_never_imports_the_trainer_or_training(module):
    banned = ("hf_selfish.trainer", "hf_selfish.lab.run", "hf_selfish.lab.compare", "transformers")
    found = {n for n in MODULES[module] if any(in_layer(n, b) for b in banned)}
    assert not found, f"{module} imports {sorted(found)}"


def test_no_library_module_is_over_the_size_limit():
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {str(p): n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def loaded_after(statement: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


@pytest.mark.slow
def test_import_hf_selfish_loads_neither_matplotlib_nor_yaml():
    assert not {"matplotlib", "yaml", "transformers", "torch"} & loaded_after("import hf_selfish")
    assert not {"matplotlib", "yaml", "transformers"} & loaded_after("from hf_selfish import selfish_cross_entropy")
    assert "matplotlib" not in loaded_after("from hf_selfish.reporting.report import write_report")


def test_public_api():
    import hf_selfish
    from hf_selfish.ops.loss import selfish_cross_entropy

    names = {
        "SelfishTrainer",
        "SelfishTrainingArguments",
        "selfish_loss_func",
        "selfish_cross_entropy",
        "selfish_causal_lm_loss",
        "linear_selfish_cross_entropy",
        "RankBucketEvalCallback",
        "GradientScenarioCallback",
        "TokenFrequency",
        "apply_selfish_loss",
        "remove_selfish_loss",
    }
    assert names <= set(hf_selfish.__all__)
    assert hf_selfish.selfish_cross_entropy is selfish_cross_entropy
    with pytest.raises(AttributeError):
        hf_selfish.not_a_name  # noqa: B018
