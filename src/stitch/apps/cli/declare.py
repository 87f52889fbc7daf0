"""The command line, generated: each subcommand is a typed function whose signature *is* its options.

A command declares its options as ``Annotated[type, Opt(...)]`` parameters; a parameter whose type is a
dataclass (``EvalOptions``, ``ServeConfig``, :class:`~stitch.apps.cli.sources.DataSource`) becomes one
option per field that carries ``metadata={"help": ...}`` and reaches the command built once, as that
dataclass. Types give argparse its conversions (``bool`` a flag, ``list[X]`` several values, ``dict``
``NAME=VALUE`` pairs), registries give the choices (read when the parser is built), the first line of the
docstring gives the help. Nothing here imports torch: ``stitch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stitch.errors import UsageError

#: every declared command, by its name (``"index build"`` is ``build`` under ``index``)
COMMANDS: dict[str, Callable[..., int]] = {}


@dataclass(frozen=True)
class Opt:
    """How one parameter reads on the command line.

    ``flag``: the option's spelling (default ``--param-name``); ``positional``: an argument without a flag;
    ``choices``: values or a callable giving them (a registry's ``names``); ``renamed_from``: old spellings,
    accepted with a warning; ``repeat``: the option may be given several times (a list); ``nargs``/``const``:
    argparse's, when the type's own (one value, or ``*`` for a list) is not what the option takes."""

    help: str = ""
    flag: str | None = None
    positional: bool = False
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    metavar: str | None = None
    renamed_from: tuple[str, ...] = ()
    repeat: bool = False
    nargs: str | None = None
    const: Any = None


def command(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register a command function under ``name``; its docstring's first line is its ``--help`` line."""

    def register(func: Callable[..., int]) -> Callable[..., int]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} declared twice")
        COMMANDS[name] = func
        return func

    return register


def option(help: str, **opt: Any) -> dict[str, Any]:  # noqa: A002 - the word users read
    """A dataclass field's ``metadata`` that puts it on the command line: ``help`` and :class:`Opt`'s other
    fields. Library dataclasses write the same plain dict (``{"help": ...}``) without importing this."""
    return {"help": help, **opt}


_OPT_FIELDS = {f.name for f in dataclasses.fields(Opt)}


# ---- reading types -------------------------------------------------------------------------------------------


def _without_none(kind: Any) -> Any:
    """``X | None`` -> ``X``; the first member of any other union (``str | Path`` -> ``str``)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [k for k in typing.get_args(kind) if k is not type(None)]
        return members[0]
    return kind


def _is_group(kind: Any) -> bool:
    return dataclasses.is_dataclass(kind) and isinstance(kind, type)


def _params_of(func: Callable[..., int]) -> list[tuple[str, Any, Opt | None, Any]]:
    hints = typing.get_type_hints(func, include_extras=True)
    out = []
    for name, parameter in inspect.signature(func).parameters.items():
        hint = hints[name]
        opt = None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            opt = next((e for e in extras if isinstance(e, Opt)), None)
        out.append((name, hint, opt, parameter.default))
    return out


def _fields_of(group: type) -> list[tuple[str, Any, Opt, Any]]:
    hints = typing.get_type_hints(group)
    out = []
    for f in dataclasses.fields(group):
        if "help" not in f.metadata and not _is_group(_without_none(hints[f.name])):
            continue  # a field the command line does not set (an array, a device the API picks)
        # MISSING: required; a nested group (default_factory) is built from its own fields
        default = None if f.default_factory is not dataclasses.MISSING else f.default
        opt = Opt(**{k: v for k, v in f.metadata.items() if k in _OPT_FIELDS})
        out.append((f.name, hints[f.name], opt, default))
    return out


# ---- building the parser -------------------------------------------------------------------------------------


def _flag(name: str, opt: Opt) -> str:
    return opt.flag or "--" + name.replace("_", "-")


def _add(parser: argparse.ArgumentParser, dest: str, kind: Any, opt: Opt, default: Any, in_group: bool) -> None:
    """One argparse argument for one parameter. Inside a group, an option not given is left out (the
    dataclass keeps its own default), so argparse's default is None there."""
    required = default is inspect.Parameter.empty or default is dataclasses.MISSING
    base = _without_none(kind)
    choices = opt.choices() if callable(opt.choices) else opt.choices
    spec: dict[str, Any] = {"help": _with_default(opt.help, default, required)}
    if choices is not None:
        spec["choices"] = list(choices)
    if opt.metavar:
        spec["metavar"] = opt.metavar
    if base is bool:
        spec.update(action="store_true", default=None if in_group else bool(default))
    else:
        origin = typing.get_origin(base)
        if base is dict or origin is dict:
            spec.update(nargs="*", metavar=opt.metavar or "NAME=VALUE")
        elif origin in (list, tuple, Sequence) or base in (list, tuple):
            element = next((a for a in typing.get_args(base) if a is not Ellipsis), str)
            spec["type"] = element if element in (int, float) else str
            if opt.repeat:
                spec["action"] = "append"
            else:
                spec["nargs"] = "+" if required and opt.positional else "*"
        elif base in (int, float):
            spec["type"] = base
        if opt.nargs is not None:
            spec["nargs"] = opt.nargs
            if opt.const is not None:
                spec["const"] = opt.const
        if not required:
            spec["default"] = None if in_group else default
    if opt.positional:
        if not required and "nargs" not in spec:
            spec["nargs"] = "?"
        parser.add_argument(dest, **spec)
        return
    flag = _flag(dest.rsplit(".", 1)[-1], opt)
    if base is not bool and "metavar" not in spec and "choices" not in spec:
        spec["metavar"] = flag.lstrip("-").upper().replace("-", "_")
    if required and not opt.renamed_from:
        spec["required"] = True
    parser.add_argument(flag, dest=dest, **spec)
    for old in opt.renamed_from:
        parser.add_argument(old, dest=dest, action=_Deprecated, new=flag, help=argparse.SUPPRESS)


def _with_default(text: str, default: Any, required: bool) -> str | None:
    """The help line, with the default said when there is one worth saying and the line does not say it."""
    if required or default in (None, False, (), []) or "default" in text:
        return text or None
    shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def _add_params(parser: argparse.ArgumentParser, items: list, prefix: str, in_group: bool) -> None:
    for name, kind, opt, default in items:
        dest = f"{prefix}{name}"
        base = _without_none(kind)
        if _is_group(base):
            _add_params(parser, _fields_of(base), f"{dest}.", True)
        elif name != "quiet" or prefix:
            _add(parser, dest, kind, opt or Opt(), default, in_group)


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable[..., int]) -> argparse.ArgumentParser:
    """The subparser of one declared command, its options generated from ``func``'s signature."""
    doc = inspect.getdoc(func) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ")
    parser = sub.add_parser(name, help=summary, description=doc or None)
    _add_params(parser, _params_of(func), "", False)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    parser.set_defaults(func=lambda args: call(func, args))
    return parser


# ---- calling a command ---------------------------------------------------------------------------------------


def _group_value(group: type, args: argparse.Namespace, prefix: str) -> Any:
    """The group's dataclass, from the options given (the others keep the dataclass's defaults)."""
    given = {}
    for name, kind, opt, default in _fields_of(group):
        dest = f"{prefix}{name}"
        base = _without_none(kind)
        if _is_group(base):
            given[name] = _group_value(base, args, f"{dest}.")
            continue
        value = _converted(base, getattr(args, dest, None))
        if value is None:
            if default is dataclasses.MISSING:
                raise UsageError(f"{_flag(name, opt)} is required")
            continue
        given[name] = value
    return group(**given)


def _converted(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    if kind is dict or typing.get_origin(kind) is dict:
        from stitch.training.config import parse_pairs  # noqa: PLC0415 - light, but read only when given

        return {k: _number_or_text(v) for k, v in parse_pairs(value, "parameter", "nprobe=32").items()}
    if typing.get_origin(kind) is tuple:
        return tuple(value)
    return value


def _number_or_text(value: object) -> object:
    """YAML 1.1 reads ``1e9`` as a string; numbers are what parameters take."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def call(func: Callable[..., int], args: argparse.Namespace) -> int:
    """Run a declared command with what the command line gave: groups built once, here."""
    values = {}
    for name, kind, opt, default in _params_of(func):
        base = _without_none(kind)
        if _is_group(base):
            values[name] = _group_value(base, args, f"{name}.")
        elif name == "quiet":
            values[name] = args.quiet
        else:
            values[name] = _converted(base, getattr(args, name))
            if values[name] is None and default is inspect.Parameter.empty:
                raise UsageError(f"{_flag(name, opt or Opt())} is required")
    return func(**values)


class _Deprecated(argparse.Action):
    """An old spelling of an option: still works for one release, with a warning naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated in {parser.prog}; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
