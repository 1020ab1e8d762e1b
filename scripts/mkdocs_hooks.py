"""MkDocs hooks for the documentation site (`mkdocs.yml`: ``hooks:``); not part of the package.

- ``<!-- fields: hf_selfish.config.SelfishTrainingArguments -->`` on a page becomes a table of the fields that
  dataclass adds to its bases: name, default and the ``help`` of its metadata (what `HfArgumentParser` prints
  for ``--help``), so the options have one source, the code.
- Sphinx roles left in docstrings (``:func:`x```, ``:func:`~a.x```) render as the code ``x``: mkdocstrings
  does not read them.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any

FIELDS = re.compile(r"<!--\s*fields:\s*([\w.]+)\s*-->")
ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc):<code>(~?)([^<]*)</code>")
LITERAL_BLOCK = re.compile(r"::</p>")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def fields_table(path: str) -> str:
    """Markdown table of the dataclass fields ``path`` defines itself (not those of its bases)."""
    cls = _import(path)
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    rows = ["| key | default | what |", "| --- | --- | --- |"]
    for field in dataclasses.fields(cls):
        if field.name in inherited or not field.init:
            continue
        rows.append(f"| `{field.name}` | {_cell(_default(field))} | {_cell(field.metadata.get('help', ''))} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return FIELDS.sub(lambda m: fields_table(m.group(1)), markdown)


def on_page_content(html: str, **kwargs: Any) -> str:
    return LITERAL_BLOCK.sub(":</p>", ROLE.sub(_role, html))


def _role(match: re.Match) -> str:
    """``:func:`~a.b.c``` -> ``c`` (Sphinx's ``~``: the last part only), ``:func:`a.b``` -> ``a.b``."""
    target = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{target}</code>"
