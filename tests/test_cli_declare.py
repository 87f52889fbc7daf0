"""The command line is generated from typed command functions: each option is a parameter (or a field of a
settings dataclass), choices come from the registries, and a settings object is built once from what was given."""

from __future__ import annotations

import argparse
import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated

import pytest

from stitch import registries
from stitch.apps.cli import build_parser, declare, main
from stitch.apps.cli.declare import COMMANDS, Opt, add_command
from stitch.errors import UsageError


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for word in name.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS}


def test_every_parameter_of_every_command_is_an_option_and_nothing_else_is():
    parser = build_parser()
    for name, func in COMMANDS.items():
        expected = {"-h", "--help", "-q", "--quiet"}
        for param, kind, opt, _ in declare._params_of(func):
            base = declare._without_none(kind)
            if declare._is_group(base):
                expected |= _group_flags(base)
            elif param != "quiet" and not (opt and opt.positional):
                expected.add(declare._flag(param, opt or Opt()))
        assert _flags(_subparser(parser, name)) == expected, name


def _group_flags(group: type) -> set[str]:
    out = set()
    for name, kind, opt, _ in declare._fields_of(group):
        base = declare._without_none(kind)
        if declare._is_group(base):
            out |= _group_flags(base)
        elif not opt.positional:
            out.add(declare._flag(name, opt))
    return out


def test_choices_are_the_registries_names():
    parser = build_parser()

    def choices(command: str, flag: str) -> list[str]:
        sub = _subparser(parser, command)
        return next(a for a in sub._actions if flag in a.option_strings).choices

    assert choices("index build", "--kind") == list(registries.INDEX_KINDS.names())
    assert choices("evaluate", "--rerank") == list(registries.RESCORERS.names())
    assert choices("evaluate", "--protocol") == list(registries.PROTOCOLS.names())
    assert choices("index build", "--rerank") == list(registries.RESCORERS.names())
    assert choices("predict", "--target") == list(registries.IMAGE_TARGETS)


@dataclass(frozen=True)
class Inner:
    level: int = field(default=2, metadata={"help": "a nested setting"})


@dataclass(frozen=True)
class Settings:
    path: str = field(metadata={"help": "required, with an old name", "renamed_from": ("--old-path",)})
    size: int = field(default=7, metadata={"help": "a number"})
    params: dict | None = field(default=None, metadata={"help": "pairs", "flag": "--param"})
    hidden: object = None  # no help: not on the command line
    inner: Inner = field(default_factory=Inner)


def _toy(seen: list):
    def toy(
        settings: Settings,
        name: Annotated[str, Opt("a name", choices=lambda: ["a", "b"])] = "a",
        values: Annotated[list[float] | None, Opt("several")] = None,
        quiet: bool = False,
    ) -> int:
        """a toy command

        with a longer description"""
        seen.append((settings, name, values, quiet))
        return 0

    return toy


def _parse(argv: list[str]):
    seen: list = []
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_command(sub, "toy", _toy(seen))
    args = parser.parse_args(["toy", *argv])
    args.quiet = getattr(args, "quiet", False)
    return args.func(args), seen


def test_a_settings_object_is_built_once_from_what_was_given_with_its_own_defaults_for_the_rest():
    assert _parse(["--path", "p", "--values", "1", "2.5", "-q"])[1] == [(Settings("p"), "a", [1.0, 2.5], True)]
    (_, seen) = _parse(["--path", "p", "--size", "3", "--param", "nprobe=32", "k=x", "--level", "5", "--name", "b"])
    settings, name, values, quiet = seen[0]
    assert settings == Settings("p", size=3, params={"nprobe": 32, "k": "x"}, inner=Inner(5))
    assert (name, values, quiet) == ("b", None, False)


def test_a_required_field_is_named_and_an_old_spelling_still_works_with_a_warning(capsys):
    with pytest.raises(UsageError, match="--path is required"):
        _parse([])
    assert _parse(["--old-path", "q"])[1][0][0] == Settings("q")
    warning = capsys.readouterr().err
    assert "--old-path is deprecated" in warning and "use --path" in warning
    with pytest.raises(SystemExit):
        _parse(["--path", "p", "--name", "c"])  # not one of the choices
    with pytest.raises(SystemExit):
        _parse(["--path", "p", "--hidden", "1"])  # a field without help is not an option


def test_the_serve_command_gets_one_serve_config_with_its_limits(tmp_path):
    from stitch.apps.service.config import Limits, ServeConfig

    args = build_parser().parse_args(
        ["serve", "--run", "r", "--data", "d.npz", "--image-dir", str(tmp_path), "--port", "9001",
         "--keep-alive", "2", "--cors-origin", "http://a.test", "--cors-origin", "http://b.test"]
    )  # fmt: skip
    built = declare._group_value(ServeConfig, args, "config.")
    assert built == ServeConfig(
        "r", "d.npz", tmp_path, port=9001, limits=Limits(keep_alive_s=2.0),
        cors_origins=["http://a.test", "http://b.test"],
    )  # fmt: skip


def test_a_bad_serve_setting_is_one_line_before_anything_loads(tmp_path, capsys):
    argv = ["serve", "--run", "r", "--data", "d.npz", "--image-dir", str(tmp_path), "--port", "70000"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: port must be 1-65535, got 70000"


def test_every_command_is_a_typed_function_with_a_help_line():
    for name, func in COMMANDS.items():
        hints = typing.get_type_hints(func, include_extras=True)
        assert hints["return"] is int, name
        assert inspect.getdoc(func), f"{name} has no docstring for its --help line"
