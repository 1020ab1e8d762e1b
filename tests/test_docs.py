"""The documentation: every public name documented, every runnable example run, no tracker numbers.

- Every name of ``hf_selfish.__all__`` (and of the TRL integration and the ops package) has a non-empty
  docstring and is rendered by a mkdocstrings directive (``::: hf_selfish.<module>.<name>``, or a directive of
  the module that defines it) on a page of ``docs/api/``; ``mkdocs build --strict`` (``make docs``) then fails
  on a broken link or a missing page.
- The Python blocks of README.md and docs/ run, in order, one namespace per file, in a fresh folder, unless
  the line before the fence is ``<!-- no-run -->`` (docs/design.md, "Documentation").
- User-facing text names the feature, never a tracker number ("issue 12", "#13").
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import hf_selfish

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
NO_RUN = "<!-- no-run -->"
DIRECTIVE = re.compile(r"^:::\s+(\S+)", re.MULTILINE)
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# "issue 12", "issues 12", "Issue #12", "#13" (a hex colour such as "#1f77b4" does not match: \b after the digits)
TRACKER = re.compile(r"\bissues?\s*#?\s*\d+|(?<![\w&/#])#\d+\b", re.IGNORECASE)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "assets" not in p.parts)]


def api_directives() -> set[str]:
    text = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.md")))
    return set(DIRECTIVE.findall(text))


def public_names() -> list[tuple[str, str]]:
    """(name, the module it is exported from) for every public name the docs must render."""
    names = [(name, "hf_selfish") for name in hf_selfish.__all__]
    try:  # the `trl` extra (part of `dev`)
        trl_names = importlib.import_module("hf_selfish.integrations.trl").__all__
    except ImportError:
        trl_names = []
    names += [(name, "hf_selfish.integrations.trl") for name in trl_names]
    ops = importlib.import_module("hf_selfish.ops")
    names += [(name, "hf_selfish.ops") for name in ops.__all__ if callable(getattr(ops, name))]
    return names


def rendered_by(directives: set[str], obj, name: str) -> bool:
    """True if a directive names the object (by any dotted path ending in its name) or its defining module."""
    if any(d.startswith("hf_selfish") and d.rsplit(".", 1)[-1] == name for d in directives):
        return True
    return obj.__module__ in directives


@pytest.mark.parametrize(("name", "module"), public_names(), ids=lambda v: v)
def test_public_name_has_docstring_and_api_page(name, module):
    obj = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"{module}.{name} has no docstring"
    assert rendered_by(api_directives(), obj, name), (
        f"{module}.{name} is not rendered in docs/api/: add `::: {obj.__module__}.{name}` to a page there"
    )


def test_api_check_catches_a_missing_name():
    """The check above fails for a name no directive renders (a check that cannot fail is a defect)."""
    from hf_selfish.ops.loss import selfish_cross_entropy

    assert rendered_by({"hf_selfish.ops.loss.selfish_cross_entropy"}, selfish_cross_entropy, "selfish_cross_entropy")
    assert rendered_by({"hf_selfish.ops.loss"}, selfish_cross_entropy, "selfish_cross_entropy")
    assert not rendered_by({"hf_selfish.ops.fused"}, selfish_cross_entropy, "selfish_cross_entropy")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, runs) of every ```python block; a block runs unless `<!-- no-run -->` precedes it."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) not in ("python", "py"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(2), before != NO_RUN))
    return blocks


def test_block_parser_honours_the_marker():
    text = "a\n\n```python\nx = 1\n```\n\n<!-- no-run -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n", True), (8, "raise SystemExit\n", False)]


RUNNABLE = [p for p in markdown_files() if any(runs for _, _, runs in python_blocks(p.read_text()))]


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write their output_dir here
    monkeypatch.setenv("WANDB_DISABLED", "true")
    namespace: dict = {"__name__": "__docs__"}
    for line, code, runs in python_blocks(path.read_text()):
        if runs:
            exec(compile(code, f"{path.relative_to(REPO)}:{line}", "exec"), namespace)


def user_facing_files() -> list[Path]:
    files = [*markdown_files(), REPO / "CHANGELOG.md"]
    files += sorted((REPO / "hf_selfish").rglob("*.py")) + sorted((REPO / "recipes").rglob("*.yaml"))
    return [f for f in files if f.is_file()]


def test_no_tracker_numbers():
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in user_facing_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if TRACKER.search(line)
    ]
    assert not hits, "name the feature, not a tracker number:\n" + "\n".join(hits)


def test_tracker_pattern():
    for text in ("see issue 12", "Issue #14", "(issues 12)", "fixed in #13", "issue17"):
        assert TRACKER.search(text), text
    for text in ("color #1f77b4", "## 0.2.0", "the issue's budget", "rank 12", "&#8212;", "a/#3"):
        assert not TRACKER.search(text), text


# a minus sign (U+2212) before a hyphen: a table rule or a command-line option whose first hyphen a typographic
# pass turned into a minus; the table no longer renders, the command no longer runs
MINUS_HYPHEN = "\u2212-"


def test_no_minus_sign_before_a_hyphen():
    hits = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in markdown_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if MINUS_HYPHEN in line
    ]
    assert not hits, "a minus sign where a hyphen belongs (table rule or option):\n" + "\n".join(hits)


def test_docs_symlink_and_nav_pages_exist():
    """The figures reach the site through docs/assets (a link to assets/); every nav page exists."""
    assert (DOCS / "assets").resolve() == (REPO / "assets").resolve()
    nav = re.findall(r":\s*([\w/]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.MULTILINE)
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert nav and not missing, missing


def load_hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", REPO / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fields_table_lists_the_options_a_dataclass_adds():
    """The options table has one row per field SelfishTrainingArguments adds, none of TrainingArguments'."""
    import dataclasses

    from transformers import TrainingArguments

    from hf_selfish import SelfishTrainingArguments

    table = load_hooks().fields_table("hf_selfish.config.SelfishTrainingArguments").splitlines()
    keys = [row.split("|")[1].strip().strip("`") for row in table[2:]]
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    assert keys == [f.name for f in dataclasses.fields(SelfishTrainingArguments) if f.name not in inherited]
    margin_row = table[2 + keys.index("selfish_margin")]
    assert "`2.0`" in margin_row and "Keep logits >= logit[target] - margin" in margin_row


def test_sphinx_roles_render_as_code():
    hooks = load_hooks()
    html = (
        "<p>see :func:<code>apply_selfish_loss</code>, :mod:<code>~hf_selfish.ops.loss</code>, 1:2, per position::</p>"
    )
    assert (
        hooks.on_page_content(html)
        == "<p>see <code>apply_selfish_loss</code>, <code>loss</code>, 1:2, per position:</p>"
    )


def test_build_hook_names_undocumented_public_names():
    """`make docs` fails on a public name without an API heading (the hook reads the rendered ids)."""
    hooks = load_hooks()
    ids = {f"hf_selfish.somewhere.{name}" for name in hf_selfish.__all__}
    assert hooks.undocumented(ids) == []
    assert hooks.undocumented(ids - {"hf_selfish.somewhere.TokenFrequency"}) == ["TokenFrequency"]
