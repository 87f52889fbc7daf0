"""No function takes more than eight parameters: past that, its settings are one idea relayed piece by piece,
and belong in one config object built once and handed down (``LossSettings``, ``ServeConfig``).

Counted: positional-only, positional and keyword-only parameters, ``self``/``cls`` excluded; ``*args`` and
``**kwargs`` are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "stitch"
MAX_PARAMS = 8
SCOPE = ("stitch",)
# Modules not yet held to the limit (none): a test below fails as soon as one listed is within it, so the
# list cannot go stale.
EXCEPTIONS: tuple[str, ...] = ()


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def param_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + len(args.kwonlyargs)


def within(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def offenders(scope: tuple[str, ...], exceptions: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        if not within(name, scope) or within(name, exceptions):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and param_count(node) > MAX_PARAMS:
                found.append(f"{path.relative_to(SRC.parents[1])}:{node.name}:{param_count(node)}")
    return found


def test_the_count_takes_every_named_parameter_but_self_cls_and_the_catch_alls():
    tree = ast.parse(
        "class A:\n"
        "    def m(self, a, /, b, *args, c, d=1, **kwargs): ...\n"
        "    @classmethod\n"
        "    def k(cls, a): ...\n"
        "def f(a, b, c): ...\n"
        "async def g(*, a, b): ...\n"
    )
    counts = {n.name: param_count(n) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert counts == {"m": 4, "k": 1, "f": 3, "g": 2}


def test_no_function_takes_more_than_eight_parameters():
    found = offenders(SCOPE, EXCEPTIONS)
    assert not found, "pass one config object instead:\n" + "\n".join(found)


def test_every_exception_still_needs_to_be_one():
    fixed = [module for module in EXCEPTIONS if not offenders((module,))]
    assert not fixed, f"within the limit now, drop from EXCEPTIONS: {fixed}"
