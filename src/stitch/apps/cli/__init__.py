"""The ``stitch`` command, generated from the declared commands (:mod:`stitch.apps.cli.training`,
:mod:`stitch.apps.cli.retrieval`): each subcommand is a typed function, one call into :mod:`stitch.api` or an
application, and its options are its signature (see :mod:`stitch.apps.cli.declare`). Heavy imports happen
inside the commands, so ``stitch --help`` loads no torch."""

from __future__ import annotations

import argparse
import sys

from stitch.apps.cli import retrieval, training  # noqa: F401 - declare the commands
from stitch.apps.cli.declare import COMMANDS, add_command, command

QUIET_LOGGERS = ("faiss", "faiss.loader", "transformers", "sentence_transformers", "httpx", "datasets")
DESCRIPTION = "Learn translators between embedding spaces and search across them."


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (with where to look), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: global options, then one subparser per declared command (``index build`` nested)."""
    parser = _Parser(prog="stitch", description=DESCRIPTION)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (debug)")
    parser.add_argument("-q", "--silent", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, func in sorted(COMMANDS.items(), key=lambda item: _place(item[0])):
        if " " in name:
            group, leaf = name.split(" ", 1)
            if group not in groups:
                holder = sub.add_parser(group, help=_GROUP_HELP[group])
                groups[group] = holder.add_subparsers(dest=f"{group}_command", required=True, parser_class=_Parser)
            add_command(groups[group], leaf, func)
        else:
            add_command(sub, name, func)
    return parser


# the order ``stitch --help`` lists them: the data flow, from data and training to applications
ORDER = (
    "demo", "train", "convert", "evaluate", "predict", "index", "search", "serve", "ensemble", "bench", "curve",
    "tune", "report", "export", "encode", "distill-encoder", "metric", "recipes", "completion",
)  # fmt: skip


def _place(name: str) -> int:
    first = name.split(" ", 1)[0]
    return ORDER.index(first) if first in ORDER else len(ORDER)


_GROUP_HELP = {"index": "build a nearest-neighbour index over a run's gallery"}


@command("completion")
def completion() -> int:
    """print a bash completion script: eval "$(stitch completion)\""""
    commands = _subcommands(build_parser())
    cases = "".join(f'    {name}) opts="{" ".join(options)}";;\n' for name, options in commands.items())
    print(
        "_stitch() {\n"
        "  local cur=${COMP_WORDS[COMP_CWORD]} opts\n"
        '  if [ "$COMP_CWORD" -eq 1 ]; then opts="' + " ".join(commands) + '"; else\n'
        '  case "${COMP_WORDS[1]}" in\n' + cases + "  esac; fi\n"
        '  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )\n'
        "}\n"
        "complete -o default -F _stitch stitch"
    )
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each subcommand's visible options (``index build`` as ``index``: its own subcommands and options)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, sub in action.choices.items():
        options = [o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings]
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        out[name] = [*(list(nested[0].choices) if nested else []), *options]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from stitch import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    args.quiet = getattr(args, "quiet", False) or args.silent
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: anticipated errors become one line
        from stitch.apps.boundary import one_line

        message = one_line(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _configure_logging(verbose: int, silent: bool) -> None:
    import logging

    level = logging.WARNING if silent else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not verbose:  # third-party loaders' chatter (FAISS's CPU-feature probing, model load reports)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
