"""MkDocs hooks for the documentation site (`mkdocs.yml`: ``hooks:``); not part of the package.

- ``<!-- fields: hf_selfish.config.SelfishTrainingArguments -->`` on a page becomes a table of the fields that
  dataclass adds to its bases: name, default and the ``help`` of its metadata (what `HfArgumentParser` prints
  for ``--help``), so the options have one source, the code.
- The build fails when a name of ``hf_selfish.__all__`` has no docstring or no heading on an API page
  (mkdocstrings gives each rendered object an ``id`` of its dotted path).
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
OBJECT_ID = re.compile(r'id="(hf_selfish\.[\w.]+)"')
_rendered: set[str] = set()


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


def on_page_content(html: str, page: Any = None, **kwargs: Any) -> str:
    if page is not None and page.file.src_uri.startswith("api/"):
        _rendered.update(OBJECT_ID.findall(html))
    return LITERAL_BLOCK.sub(":</p>", ROLE.sub(_role, html))


def undocumented(rendered: set[str]) -> list[str]:
    """Names of ``hf_selfish.__all__`` without a docstring or without an object heading in ``rendered``."""
    import inspect

    import hf_selfish

    missing = []
    for name in hf_selfish.__all__:
        has_heading = any(r == f"hf_selfish.{name}" or r.endswith(f".{name}") for r in rendered)
        if not has_heading or not (inspect.getdoc(getattr(hf_selfish, name)) or "").strip():
            missing.append(name)
    return missing


def on_post_build(**kwargs: Any) -> None:
    from mkdocs.exceptions import PluginError

    missing = undocumented(_rendered)
    _rendered.clear()
    if missing:
        raise PluginError(
            f"public names without a docstring or an API page: {', '.join(missing)}; "
            "give each a docstring and a `::: hf_selfish.<module>.<name>` directive in docs/api/"
        )


def _role(match: re.Match) -> str:
    """``:func:`~a.b.c``` -> ``c`` (Sphinx's ``~``: the last part only), ``:func:`a.b``` -> ``a.b``."""
    target = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{target}</code>"
