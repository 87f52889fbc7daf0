"""The core's structure, measured: layers import downward only, no import cycles, small functions, no
dispatch on a model's attributes outside the model classes, and every vocabulary spelled once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stitch"

# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {
    "stitch.io": 0,
    "stitch.registries": 0,
    "stitch.packaged": 0,
    "stitch.errors": 0,
    "stitch.bounds": 0,  # numeric bounds and their one check, read by config, index and rescorers
    "stitch.options": 0,  # settings objects of scoring and indexing passes (the CLI reads their fields)
    "stitch.recipes": 0,  # named configs: a registry (pure data), read by training for ensemble partners
    "stitch.data": 1,
    "stitch.translators": 2,
    "stitch.losses": 2,
    "stitch.retrieval": 3,
    "stitch.training": 4,
    "stitch.semi": 4,
    "stitch.outputs": 5,
    "stitch.encoders": 5,
    "stitch.api": 6,
    "stitch.apps": 7,  # applications: they use the library and the API; nothing below imports them
    "stitch.apps.cli": 8,
    "stitch.__main__": 9,
    "stitch": 9,  # the package facade re-exports the API
}
# the same layer may not import across these pairs (each would be a circle in the making)
SIBLINGS_APART = {("stitch.translators", "stitch.losses"), ("stitch.losses", "stitch.translators")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[str, int]:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return best, LAYERS[best]


def stitch_imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stitch"):
            if node.module != "stitch":  # `from stitch import api` imports stitch.api, not the facade
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stitch"))
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    return {m for m in found if m in modules}


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def test_the_library_never_imports_an_application():
    """open_clip keeps its library apart from its training app: below ``stitch.apps`` nothing imports one,
    function-level imports included, and there is no exception to this rule."""
    reaching_up = [
        f"{name} imports {target}"
        for name, path in all_modules().items()
        if not name.startswith("stitch.apps") and name not in ("stitch", "stitch.__main__")
        for target in stitch_imports(path, top_level_only=False)
        if target.startswith("stitch.apps")
    ]
    assert not reaching_up, "\n".join(sorted(reaching_up))


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, path in all_modules().items():
        home, level = layer_of(name)
        for target in stitch_imports(path, top_level_only=False):
            other, other_level = layer_of(target)
            if other_level > level or (home, other) in SIBLINGS_APART:
                upward.append(f"{name} (layer {level}) imports {target} (layer {other_level})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    """Function-level imports count too: deferring an import into a function hides a cycle, it does not
    remove one (the two modules still need each other)."""
    modules = all_modules()
    graph = {name: stitch_imports(path, top_level_only=False) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages work; submodules importing
    # the package facade back would be a cycle
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, "\n".join(long)


def _mentions_model(node: ast.AST) -> bool:
    return any(
        isinstance(n, (ast.Name, ast.Attribute)) and "model" in (getattr(n, "id", "") or n.attr) for n in ast.walk(node)
    )


def test_no_attribute_or_shape_dispatch_on_models_outside_the_model_classes():
    smells = []
    for name, path in all_modules().items():
        if name.startswith(("stitch.translators", "stitch.encoders")):  # encoders wrap third-party models
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id in ("hasattr", "getattr") and node.args and _mentions_model(node.args[0]):
                smells.append(f"{name}:{node.lineno} {node.func.id} on a model")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and node.left.attr == "ndim":
                # input validation (ndim != 2) is fine; branching on slot sets (ndim == 3) belongs to the model
                value = node.comparators[0]
                is_eq = isinstance(node.ops[0], ast.Eq)
                if isinstance(value, ast.Constant) and (value.value == 3 or (is_eq and value.value == 2)):
                    smells.append(f"{name}:{node.lineno} ndim == {value.value} on {ast.unparse(node.left.value)}")
    assert not smells, "\n".join(smells)


@pytest.mark.parametrize(
    "words",
    [
        ('"csls", "is", "qbnorm"',),  # rescorer names
        ('"identity", "linear", "mlp"',),  # tower names
        ('"exact", "flat", "ivf"',),  # index kinds
        ('"mse", "cosine", "infonce"',),  # loss names
        ('"semihard", "all"', '"all", "hardest"'),  # miner names
        ('"full", "kaggle100"',),  # protocols
        ('"ridge", "procrustes", "mlp"',),  # model kinds
    ],
)
def test_each_vocabulary_is_spelled_once(words):
    """A list of registry names written out anywhere but the registries is a second spelling."""
    spelled = [
        module_name(p)
        for p in SRC.rglob("*.py")
        if module_name(p) != "stitch.registries" and any(w in p.read_text() for w in words)
    ]
    assert not spelled, f"{words} spelled again in {spelled}"
