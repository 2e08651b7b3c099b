"""What the CLI modules of both apps share: the one ``fail`` for the checks a command makes of its own arguments, and
options that come from the config dataclasses.

A command built from a config dataclass declares ``FIELDS``, option -> config field, and builds its config with
:func:`config_from`; its options' help is the field's own line of the class docstring (``Attributes:``), read with
:func:`field_help` from the source (no import: ``--help`` stays light), so the two cannot drift.
``tests/benchmark/test_cli_grammar.py`` checks every mapped option against its field: same default (or None, the
config's default) and the field's help.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, NoReturn

import typer
from rich.markup import escape

from histo_bench.command_group import print_error
from histo_bench.errors import EXIT_ERROR


def fail(message: str) -> NoReturn:
    """A command's own argument check failed: one ``error:`` line and exit status 1. Errors the library raises are
    :class:`~histo_bench.errors.HistoBenchError` and reach :class:`~histo_bench.command_group.HandledGroup`."""
    print_error(message)
    raise typer.Exit(EXIT_ERROR)


def config_from(cls, fields: Mapping[str, str], given: Mapping[str, Any], **parsed: Any):
    """``cls`` built from a command's options: every option of ``fields`` given (not None) sets its field, paths as
    strings and lists as tuples; an option left out keeps the field's default. ``parsed`` holds options the command
    converted itself (option -> value), e.g. a comma list split into a tuple."""
    values = {**given, **parsed}
    check_finite(values)
    kwargs = {}
    for option, name in fields.items():
        value = values.get(option)
        if value is None:
            continue
        kwargs[name] = str(value) if isinstance(value, PurePath) else tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def check_finite(options: Mapping[str, Any]) -> None:
    """Fail on a float option given as ``nan`` or ``inf`` (click's FLOAT parses both; no size, time or rate means
    anything there)."""
    for option, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{option.replace('_', '-')} {value}: not a finite number")


def field_help(where: str, name: str, more: str = "") -> str:
    """The help of an option that sets field ``name`` of the dataclass ``where`` (``"package.module:Class"``): the
    field's line of its docstring's ``Attributes:`` section as a sentence, then ``more``."""
    module, cls = where.split(":")
    text = _attribute_docs(module, cls)[name]
    text = re.sub(r" \(:[a-z]+:`[^`]+`\)", "", text)  # a bare reference to the code says nothing on the command line
    text = re.sub(r":[a-z]+:`~?([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0)
                  else m.group(1), text)  # Sphinx roles -> the name
    text = re.sub(r"\((?:None|empty)(?::| =) ", "(default: ", text.replace("``", "`"))  # as the CLI says it
    text = (text[0].upper() if text[0].isascii() else text[0]) + text[1:] + ("" if text.endswith(".") else ".")
    return escape(f"{text} {more}".strip())  # rich markup mode: a literal [x] stays text


@functools.cache
def _attribute_docs(module: str, cls: str) -> dict[str, str]:
    """Field -> description from the ``Attributes:`` section of class ``cls``'s docstring in ``module``'s source
    (followed through a ``from ... import cls`` re-export). A line may describe several fields (``warmup,
    min_iters: ...``); continuation lines are indented further."""
    lines = (ast.get_docstring(_class_node(module, cls)) or "").splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    for line in lines[lines.index("Attributes:") + 1:]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        entry = re.match(r" {4}(\w+(?:, \w+)*): (.*)", line)
        if entry:
            names = entry.group(1).split(", ")
            docs.update(dict.fromkeys(names, entry.group(2).strip()))
        elif line.startswith(" " * 5) and names:
            for n in names:
                docs[n] += " " + line.strip()
    return docs


def _class_node(module: str, cls: str) -> ast.ClassDef:
    top, *rest = module.split(".")
    path = Path(importlib.util.find_spec(top).submodule_search_locations[0]).joinpath(*rest)  # finds, not imports
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return node
        if isinstance(node, ast.ImportFrom) and any(alias.name == cls for alias in node.names):
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[: len(package) - node.level + 1] if node.level else []
            return _class_node(".".join(base + [node.module] if node.module else base), cls)
    raise LookupError(f"{module} defines no class {cls} (an option's help comes from its docstring)")
