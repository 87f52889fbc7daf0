"""Write docs/reference/cli.md from the CLI's own parser, so the reference cannot drift from the code.

    python docs/cli_reference.py          # rewrite the page
    python docs/cli_reference.py --check  # exit 1 when the page is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "reference" / "cli.md"


def render() -> str:
    from stitch.apps.cli import build_parser

    parser = build_parser()
    intro = "Every `stitch` command with its flags, as `stitch COMMAND --help` prints them."
    lines = ["# CLI reference", "", intro, ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        sub.prog = f"stitch {name}"
        lines += [f"## stitch {name}", "", "```text", _help(sub), "```", ""]
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        for inner_name, inner in nested[0].choices.items() if nested else ():
            inner.prog = f"stitch {name} {inner_name}"
            lines += [f"### stitch {name} {inner_name}", "", "```text", _help(inner), "```", ""]
    return "\n".join(lines)


def _help(parser: argparse.ArgumentParser) -> str:
    import os

    os.environ["COLUMNS"] = "80"  # one width for every machine, and one that fits the page's code blocks
    return parser.format_help().rstrip()


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        return 0 if PAGE.exists() and PAGE.read_text() == text else 1
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
