"""Write ``docs/api.md``, the API reference, from the docstrings: ``python docs/make_api.py``.

Walks the public modules of ``spikeloc`` and ``datamodules`` (no name part starting with ``_``) with
``inspect`` and writes, per module, its docstring's first paragraph, then each public class and function
defined there (``__all__`` where the module has one) with its signature and first docstring paragraph,
and each class's public methods the same way. Packages list what they export. ``tests/test_docs.py``
checks that the committed file is what this script writes; run it again after changing a docstring or
a signature. ``--check`` only reports whether the file is current (exit status 1 when not).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api.md"
PACKAGES = ("spikeloc", "datamodules")
HEADER = """# API reference

Generated from the docstrings by `python docs/make_api.py`; do not edit by hand
(`tests/test_docs.py` fails when this file and the code disagree). Each entry gives the signature and
the first paragraph of its docstring; the full docstring is in the source. Packages list their exports,
which are documented under the module that defines them.
"""


def module_names() -> list[str]:
    """Every public module of :data:`PACKAGES`, packages first, in name order."""
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring, on one line ('' when it has none)."""
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc:
        return ""
    paragraph = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


class _Written(str):
    """An annotation kept as the source wrote it (postponed annotations are strings): shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def signature(obj: Any) -> str:
    """``obj``'s call signature as the source writes it, without memory addresses ('(...)' where
    inspect cannot read it)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    written = lambda a: _Written(a) if isinstance(a, str) else a  # noqa: E731
    sig = sig.replace(parameters=[p.replace(annotation=written(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=written(sig.return_annotation))
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(sig))


def public_members(module: ModuleType) -> Iterator[tuple[str, Any]]:
    """Classes and functions defined in ``module`` (or named in its ``__all__``), in name order."""
    names = getattr(module, "__all__", None)
    for name in sorted(names if names is not None else vars(module)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if names is None and getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere: documented there
        yield name, obj


def methods(cls: type) -> Iterator[tuple[str, Any, str]]:
    """``(name, function, kind)`` of the public methods and properties ``cls`` itself defines."""
    for name, raw in sorted(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            yield name, raw, "property"
        elif isinstance(raw, (classmethod, staticmethod)):
            yield name, raw.__func__, type(raw).__name__
        elif inspect.isfunction(raw):
            yield name, raw, "method"


def describe(text: str) -> str:
    return f": {text}" if text else ""


def document_class(name: str, cls: type) -> list[str]:
    lines = [f"### class `{name}{signature(cls)}`", ""]
    if first_paragraph(cls):
        lines += [first_paragraph(cls), ""]
    members = list(methods(cls))
    for member, func, kind in members:
        if kind == "property":
            lines.append(f"- `{member}` (property){describe(first_paragraph(func))}")
        else:
            prefix = f"{kind} " if kind != "method" else ""
            lines.append(f"- {prefix}`{member}{signature(func)}`{describe(first_paragraph(func))}")
    return lines + ([""] if members else [])


def document_module(name: str) -> list[str]:
    module = importlib.import_module(name)
    lines = [f"## `{name}`", ""]
    if first_paragraph(module):
        lines += [first_paragraph(module), ""]
    if hasattr(module, "__path__"):  # a package: what it exports
        exports = getattr(module, "__all__", None)
        if exports:
            lines += ["Exports: " + ", ".join(f"`{e}`" for e in sorted(exports)) + ".", ""]
        return lines
    for member, obj in public_members(module):
        if inspect.isclass(obj):
            lines += document_class(member, obj)
        else:
            lines += [f"### `{member}{signature(obj)}`", ""]
            if first_paragraph(obj):
                lines += [first_paragraph(obj), ""]
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    names = module_names()
    lines = [HEADER, "## Modules", ""]
    lines += [f"- [`{name}`](#{anchor(name)})" for name in names] + [""]
    for name in names:
        lines += document_module(name)
    return "\n".join(lines).rstrip() + "\n"


def anchor(name: str) -> str:
    """GitHub's anchor of the heading ``## `name` ``: lower case, dots dropped."""
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/api.md is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.is_file() and OUTPUT.read_text() == text
        print("docs/api.md is current" if current else "docs/api.md is stale: run python docs/make_api.py")
        return 0 if current else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
