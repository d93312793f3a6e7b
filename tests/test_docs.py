"""The documentation resolves: every relative link (and its ``#anchor``) points at something that exists,
every ``make X`` is a Makefile target, and every ``python script.py ...`` printed in the docs names an
existing script whose parser takes the command's options, without running anything.

``tools/train.py`` commands go through the training CLI's parser up to the value checks (nothing is
built, no run folder is made); ``tools/eval.py`` / ``tools/predict.py`` and the benchmarks through their
own ``argparse`` parser, taken from the script as it starts and used with abbreviations off (a
misspelt flag that happens to be a prefix of a real one is an error here too). The ``--key value``
overrides that ``tools/eval.py`` and ``tools/predict.py`` pass on go through the training CLI's parser
with the run's config (``--config``, else ``configs/<run name>.yaml`` from ``--ckpt runs/<run name>/...``).
Placeholders (``<run>``, a lone ``...``) leave a command unchecked; ``$var`` values read as ``0``.
``docs/api.md`` must be what ``docs/make_api.py`` writes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import runpy
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
GENERATED = ROOT / "docs" / "api.md"  # its links are checked, its commands are docstring text
LAUNCHERS = ("python", "python3", "make", "torchrun", "srun")
REPO_DIRS = ("configs/", "tools/", "benchmarks/", "docs/", "tests/", "spikeloc/", "datamodules/")
FENCE = re.compile(r"^ *```([\w+-]*)[^\n]*\n(.*?)^ *```", re.S | re.M)
SHELL_LANGS = ("", "bash", "sh", "shell", "console")


# --- reading the docs ---------------------------------------------------------------------------

def split_code(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``(prose, [(language, body), ...])``: the text without its fenced blocks, and the blocks."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]
    return FENCE.sub("\n", text), blocks


def links(text: str) -> list[str]:
    """Targets of the Markdown links and images in ``text`` (not in code)."""
    prose, _ = split_code(text)
    prose = re.sub(r"`[^`]*`", "code", prose)
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links reduced to their text, lower case, punctuation dropped
    (letters, digits, ``_``, ``-`` and spaces stay), spaces to ``-``."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text (repeated headings get ``-1``, ``-2`` ...)."""
    prose, _ = split_code(text)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose, re.M):
        base, n = slug(heading), 0
        name = base
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def link_problems(path: Path, text: str | None = None) -> list[str]:
    """What is wrong with the relative links of one Markdown file."""
    text = path.read_text() if text is None else text
    problems = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        where = (path.parent / file_part).resolve() if file_part else path
        if not where.exists():
            problems.append(f"{path.name}: link {target!r}: no such file {os.path.relpath(where, ROOT)}")
        elif fragment and where.suffix == ".md" and fragment not in anchors(where.read_text()):
            problems.append(f"{path.name}: link {target!r}: no heading with anchor #{fragment} in {where.name}")
    return problems


def commands(text: str) -> list[str]:
    """Shell commands starting with ``python``, ``make``, ``torchrun`` or ``srun`` (after ``VAR=value``
    prefixes): one per logical line of a shell code block, and every inline code span."""
    prose, blocks = split_code(text)
    found = []
    for language, body in blocks:
        if language in SHELL_LANGS:
            found += [" ".join(line.split()) for line in re.sub(r"\\\n", " ", body).splitlines()]
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return [cmd for cmd in found if _program(cmd) is not None]


def _words(cmd: str) -> list[str] | None:
    try:
        return shlex.split(cmd, comments=True)
    except ValueError:  # an unbalanced quote: not a command
        return None


def _program(cmd: str) -> str | None:
    words = _words(cmd)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words[0] if len(words or ()) > 1 and words[0] in LAUNCHERS else None  # a bare name is prose


# --- checking one command -----------------------------------------------------------------------

@lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


def command_problem(cmd: str) -> str | None:
    """Why ``cmd`` does not resolve (None when it does, or when it is a placeholder)."""
    words = _words(cmd) or []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if any(w == "..." or re.search(r"<[^>]*>", w) for w in words):
        return None  # a placeholder: nothing definite to check
    words = ["0" if w.startswith("$") else w for w in words]
    if words[0] == "make":
        missing = [t for t in words[1:] if not t.startswith("-") and "=" not in t and t not in make_targets()]
        return f"{cmd!r}: no Makefile target {missing[0]!r}" if missing else None
    if words[:3] in (["python", "-m", "pytest"], ["python3", "-m", "pytest"]):
        return _paths_problem(cmd, words[3:])
    scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
    if not scripts:
        return None  # python -c, python -m other: not a script of this repository
    script, args = words[scripts[0]], words[scripts[0] + 1:]
    if not (ROOT / script).is_file():
        return f"{cmd!r}: no script {script}"
    problem = _paths_problem(cmd, args)
    if problem:
        return problem
    if script == "tools/train.py":
        return _prefixed(cmd, train_problem(args))
    return _prefixed(cmd, argparse_problem(script, args))


def _prefixed(cmd: str, problem: str | None) -> str | None:
    return f"{cmd!r}: {problem}" if problem else None


def _paths_problem(cmd: str, args: list[str]) -> str | None:
    """Repository paths among the arguments (``configs/x.yaml``, ``--config=configs/x.yaml``) must exist."""
    for arg in args:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        value = value.split("::")[0]
        if value.startswith(REPO_DIRS) and not (ROOT / value).exists():
            return f"{cmd!r}: no such file {value}"
    return None


class _Parsed(Exception):
    """Raised where a parse is complete and the script would start its work."""

    def __init__(self, parser: argparse.ArgumentParser | None = None, strict: bool = True) -> None:
        super().__init__()
        self.parser, self.strict = parser, strict


@contextlib.contextmanager
def _quiet_and_restored():
    """Capture stdout / stderr; restore the RNGs, ``PL_GLOBAL_SEED``, ``sys.argv`` and ``sys.path``."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed, argv, path = os.environ.get("PL_GLOBAL_SEED"), sys.argv[:], sys.path[:]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield err
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
        if seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed
        sys.argv[:], sys.path[:] = argv, path


def _error_line(err: io.StringIO) -> str:
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["exited with an error"])[-1].strip()


def train_problem(args: list[str]) -> str | None:
    """``tools/train.py args`` through the training CLI up to its value checks, building nothing."""
    import spikeloc.cli as cli

    class ParseOnly(cli.SpikelocCLI):
        def before_instantiate_classes(self) -> None:
            try:
                cli.link_sequence_length(self.config)
                cli.check_run_config(self.config)
            except cli.ConfigError as err:
                self.parser.error(str(err))
            raise _Parsed

    hold = cli.hold_freed_memory
    cli.hold_freed_memory = lambda: False  # the glibc setting is for training processes, not this one
    try:
        with _quiet_and_restored() as err:
            sys.argv = ["tools/train.py"]  # the arguments are given explicitly
            ParseOnly(args=args)
    except _Parsed:
        return None
    except SystemExit as exit_:
        return None if exit_.code in (0, None) else _error_line(err)
    finally:
        cli.hold_freed_memory = hold
    return "the CLI went past its checks"  # not reached: before_instantiate_classes raises


@lru_cache(maxsize=None)
def script_parser(script: str) -> _Parsed:
    """The ``argparse`` parser a script builds, caught as it is about to parse (nothing runs after)."""
    def caught(strict: bool):
        def parse(self, *args, **kwargs):
            raise _Parsed(self, strict)
        return parse

    path = ROOT / script
    originals = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = caught(True), caught(False)
    try:
        with _quiet_and_restored():
            sys.argv, sys.path[:0] = [str(path)], [str(path.parent)]
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed as parsed:
        parsed.parser.allow_abbrev = False  # an abbreviation in the docs is a misspelling here
        return parsed
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals
    raise AssertionError(f"{script} did not parse any arguments")


def argparse_problem(script: str, args: list[str]) -> str | None:
    """``script args`` through the script's own parser; with ``parse_known_args`` (``tools/eval.py``,
    ``tools/predict.py``) the rest must be ``--key value`` overrides the run's config takes."""
    caught = script_parser(script)
    try:
        with _quiet_and_restored() as err:
            namespace, rest = argparse.ArgumentParser.parse_known_args(caught.parser, args)
    except SystemExit as exit_:
        return None if exit_.code in (0, None) else _error_line(err)
    if caught.strict or not rest:
        return f"unrecognized arguments: {' '.join(rest)}" if rest else None
    flags = [r for r in rest if r.startswith("-")]
    if any(not f.startswith("--") or "." not in f.split("=")[0] for f in flags) or not rest[0].startswith("--"):
        return f"unrecognized arguments: {' '.join(rest)}"
    config = getattr(namespace, "config", None)
    run = re.match(r"runs/([^/]+)/", str(getattr(namespace, "ckpt", "")))
    if config is None and run and (ROOT / "configs" / f"{run.group(1)}.yaml").is_file():
        config = f"configs/{run.group(1)}.yaml"
    return train_problem(["--config", config, *rest]) if config else None


# --- the tests ----------------------------------------------------------------------------------

def _all_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), cmd) for path in DOC_FILES if path != GENERATED
            for cmd in commands(path.read_text())]


def test_every_relative_link_resolves():
    problems = [p for path in DOC_FILES for p in link_problems(path)]
    assert not problems, "\n".join(problems)


def test_every_printed_command_resolves(monkeypatch):
    monkeypatch.chdir(ROOT)
    found = _all_commands()
    assert len(found) >= 30, f"only {len(found)} commands found in the docs: is the extraction broken?"
    problems = [f"{where}: {p}" for where, cmd in found if (p := command_problem(cmd))]
    assert not problems, "\n".join(problems)


def test_the_api_reference_is_what_the_script_writes():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_api
    finally:
        sys.path.remove(str(ROOT / "docs"))
    assert GENERATED.read_text() == make_api.render(), "docs/api.md is stale: run python docs/make_api.py"


def test_the_checks_can_fail(monkeypatch, tmp_path):
    """A broken link, a missing anchor, a misspelt flag of each kind, a missing config, script or
    Makefile target are each reported."""
    monkeypatch.chdir(ROOT)
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](no_such_page.md) [anchor](#no-such-heading)\n"
                    "`[not a link](in_code.md)`\n")
    problems = link_problems(page)
    assert len(problems) == 2 and "no_such_page.md" in problems[0] and "#no-such-heading" in problems[1]

    assert command_problem("python tools/train.py --config configs/quickstart.yaml --trainer.max_epochs 3") is None
    assert "max_epoch" in command_problem("python tools/train.py --config configs/quickstart.yaml --trainer.max_epoch 3")
    assert "fptt.parts" in command_problem("python tools/train.py --config configs/quickstart.yaml "
                                           "--model.init_args.fptt.parts 3")
    assert "no such file" in command_problem("python tools/train.py --config configs/no_such.yaml")
    assert command_problem("python benchmarks/fptt_speed.py --repeats 10") is None
    assert "--repeat" in command_problem("python benchmarks/fptt_speed.py --repeat 10")  # a prefix: no abbreviations
    assert "--sizes" in command_problem("python benchmarks/train_speed.py --sizes huge")
    assert "no script" in command_problem("python benchmarks/no_such.py --json")
    assert command_problem("python tools/eval.py --ckpt runs/quickstart_detect/version_0/checkpoints/last.ckpt "
                           "--model.init_args.conf_threshold 0.1") is None
    assert "conf_treshold" in command_problem("python tools/eval.py --ckpt runs/quickstart_detect/version_0/"
                                              "checkpoints/last.ckpt --model.init_args.conf_treshold 0.1")
    assert "--jsn" in command_problem("python tools/eval.py --ckpt last.ckpt --jsn m.json")
    assert "no-such-target" in command_problem("make no-such-target")
    assert command_problem("python tools/train.py --config configs/<run>.yaml") is None  # a placeholder

    text = "```bash\nOMP_NUM_THREADS=1 python tools/train.py \\\n    --config a.yaml  # comment\n```\n" \
           "Run `make test`, not `pip install x`.\n"
    assert commands(text) == ["OMP_NUM_THREADS=1 python tools/train.py --config a.yaml # comment", "make test"]
