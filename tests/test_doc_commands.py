"""Every ``stitch`` command line shown in a shell block of README.md and docs/ names a real subcommand and only
options that subcommand's parser knows, spelled in full, so a reader can copy it. Nothing is executed: the
lines are checked against the parser ``stitch.apps.cli.build_parser`` builds."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = ("bash", "console", "sh", "shell")
SEPARATORS = re.compile(r"&&|\|\||;|\||\$\(|\)|`")  # where one shell command ends and another starts
PLACEHOLDERS = ("...", "…")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    tokens: tuple[str, ...]  # what follows ``stitch``

    def __str__(self) -> str:
        return f"{self.where}: stitch {' '.join(self.tokens)}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _without_comment(line: str) -> str:
    """``line`` up to a shell comment: a ``#`` starting a word outside quotes (``a#b`` is a word)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_lines(text: str) -> list[tuple[int, str]]:
    """``(first line number, logical line)`` of every shell fence in a Markdown text: comments dropped,
    backslash continuations joined; in ``console`` fences only the ``$ `` prompt lines (the rest is output)."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = (stripped[3:].strip().split() or [""])[0] if fence is None else None
            continue
        if fence not in SHELL_FENCES:
            continue
        if fence == "console" and pending is None:
            if not stripped.startswith("$ "):
                continue
            stripped = stripped[2:]
        line = _without_comment(stripped).rstrip()
        start, before = pending if pending else (number, "")
        if line.endswith("\\"):
            pending = (start, before + line[:-1] + " ")
            continue
        pending = None
        if (before + line).strip():
            out.append((start, before + line))
    return out


def _stitch_start(words: list[str]) -> int | None:
    """Where the ``stitch`` program's arguments start in a command's words: after ``stitch`` or a path to it
    (past any ``VAR=value`` assignments), or after ``-m stitch`` (``python -m``, ``torchrun -m``)."""
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[i]):
        i += 1
    if i < len(words) and words[i].rsplit("/", 1)[-1] == "stitch":
        return i + 1
    for j in range(len(words) - 1):
        if words[j] == "-m" and words[j + 1] == "stitch":
            return j + 2
    return None


def commands(text: str, name: str) -> list[Command]:
    """The ``stitch`` commands in the shell fences of a Markdown text (``name`` labels where they are)."""
    found = []
    for number, line in shell_lines(text):
        for segment in SEPARATORS.split(line):
            words = segment.strip().strip("\"'").split()
            start = _stitch_start(words)
            if start is None:
                continue
            tokens = shlex.split(" ".join(words[start:]))
            found.append(Command(f"{name}:{number}", tuple(t for t in tokens if t not in PLACEHOLDERS)))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d[\d.e+-]*", token)


def _check_options(parser: argparse.ArgumentParser, tokens: list[str], named: str) -> list[str]:
    """Problems with ``tokens`` as arguments of ``parser``: unknown, abbreviated or hidden options. An option
    that takes values consumes them, so a value starting with ``-`` is not taken for an option."""
    problems, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            break
        if not _is_option(token):
            continue
        name = token.split("=", 1)[0]
        action = parser._option_string_actions.get(name)
        if action is None:
            close = [o for o in parser._option_string_actions if o.startswith(name)]
            how = f"an abbreviation of {close}" if close else "unknown"
            problems.append(f"{named}: option {name} is {how}")
            continue
        if action.help == argparse.SUPPRESS:
            problems.append(f"{named}: option {name} is hidden (a deprecated spelling)")
        if "=" in token or action.nargs == 0:
            continue
        if action.nargs in (None, 1):
            i += 1
        elif isinstance(action.nargs, int):
            i += action.nargs
        else:  # ?, *, +: values up to the next option
            while i < len(tokens) and not _is_option(tokens[i]):
                i += 1
    return problems


def check(command: Command, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """What is wrong with ``command`` for the CLI's parser: an unknown subcommand, or options its parser does
    not know. Empty when the line would parse (positionals and values are not checked)."""
    from stitch.apps.cli import build_parser

    parser = parser or build_parser()
    tokens = list(command.tokens)
    at = str(command)
    global_options = []
    while tokens and _is_option(tokens[0]):  # stitch -q train ...
        global_options.append(tokens.pop(0))
    problems = _check_options(parser, global_options, at)
    chosen, path = parser, "stitch"
    while (sub := _subparsers(chosen)) is not None:
        if not tokens or _is_option(tokens[0]):
            if chosen is parser and not tokens:  # bare `stitch`, or `stitch --version`
                return problems
            return [*problems, f"{at}: {path} needs a subcommand ({', '.join(sub.choices)})"]
        name = tokens.pop(0)
        if name not in sub.choices:
            return [*problems, f"{at}: {path} has no subcommand {name!r} ({', '.join(sub.choices)})"]
        chosen, path = sub.choices[name], f"{path} {name}"
    return problems + _check_options(chosen, tokens, at)


def documented_commands() -> list[Command]:
    return [c for page in pages() for c in commands(page.read_text(), str(page.relative_to(ROOT)))]


def test_every_documented_stitch_command_parses():
    pytest.importorskip("torch")  # importing the CLI's registries needs the package's dependencies
    found = documented_commands()
    assert len(found) >= 30, f"only {len(found)} stitch commands found in the docs: is the extraction broken?"
    subcommands = {c.tokens[0] for c in found if c.tokens}
    assert {"train", "evaluate", "predict", "serve", "index"} <= subcommands
    problems = [p for command in found for p in check(command)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_made_up_commands_and_options():
    """The check itself: a made-up option, a misspelt one, an abbreviation, a deprecated spelling, an unknown
    subcommand and a missing nested subcommand are caught; correct lines in every supported form are not."""
    page = """
Some text with `stitch train --bogus` inline: not a shell block, not checked.

```bash
D=data.npz
stitch train --data $D --out runs/a --made-up-option 3   # a comment with --another-made-up one
stitch evaluate --run runs/a --data $D --as-submited
stitch evaluate --run runs/a --data $D --as-sub
stitch predict --run runs/a --data test.clean.npz --out s.csv
stitch frobnicate --data $D
stitch index --run runs/a
```

```console
$ stitch train --data d.npz \\
    --out runs/b --recipe ridge optim.lr=3e-4
trained: this line is output, stitch train --not-checked
$ eval "$(stitch completion)" && python -m stitch -q recipes
```

```python
stitch.train(data, "--not-a-shell-line")
```
"""
    found = commands(page, "page.md")
    assert [c.where for c in found] == [f"page.md:{n}" for n in (6, 7, 8, 9, 10, 11, 15, 18, 18)]
    assert found[6].tokens == ("train", "--data", "d.npz", "--out", "runs/b", "--recipe", "ridge", "optim.lr=3e-4")
    problems = {c.where: check(c) for c in found}
    assert problems["page.md:6"] == ["page.md:6: stitch train --data $D --out runs/a --made-up-option 3: option "
                                     "--made-up-option is unknown"]
    assert "option --as-submited is unknown" in problems["page.md:7"][0]
    assert "option --as-sub is an abbreviation of ['--as-submitted']" in problems["page.md:8"][0]
    assert "option --data is hidden" in problems["page.md:9"][0]
    assert "has no subcommand 'frobnicate'" in problems["page.md:10"][0]
    assert "stitch index needs a subcommand (build)" in problems["page.md:11"][0]
    assert problems["page.md:15"] == [] and problems["page.md:18"] == []
    assert [check(c) for c in found[7:]] == [[], []]
