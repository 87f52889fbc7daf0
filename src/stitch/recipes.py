"""Named recipes: the reference pipelines' choices, scaled to the data's dimensions, and stitch's default.

Each recipe is one YAML file in ``stitch/configs/recipes/`` (shipped with the package), read by
:func:`read_recipe` and nothing else: ``name`` (the file's own name), ``reference`` (where its choices come
from), ``notes`` (what ``stitch recipes`` prints), then the settings it changes from the defaults, in the
sections of a config file (``model:``, ``loss:``, ``optim:``, ``inference:``, ...). The settings reach
training as ``key=value`` overrides (:func:`recipe_overrides`) and are checked there like any other: an
unknown key, a value out of range, or a model setting the recipe's model kind does not have is an error.

Settings a recipe marks ``# pinned`` are defaults it keeps although the defaults changed (those before
``stitch tune`` replaced them), so its leaderboard row, measured with them, stays what the recipe means.
Recipes with ``inference.rerank: none`` are evaluated as their references did (plain cosine); the
leaderboard also shows every recipe with the inverted-softmax scoring the default recipe uses, so the two
effects can be told apart.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from stitch.errors import UsageError
from stitch.registries import MODELS, model_has

FOLDER = "configs/recipes"  # inside the stitch package
ABOUT = ("name", "reference", "notes")  # a recipe file's keys that are not settings
DEFAULT_KIND = "resmlp"  # the model kind of a recipe that names none: ModelConfig.name's default


@dataclass(frozen=True)
class Recipe:
    name: str
    reference: str
    overrides: tuple[str, ...]
    notes: str


def read_recipe(path: str | Path) -> Recipe:
    """The recipe in one YAML file; a file that is not one is a UsageError naming the file, on one line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _bad(path, f"not valid YAML{where} ({getattr(err, 'problem', None) or err.__class__.__name__})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise _bad(path, f"cannot be read ({err.__class__.__name__})") from err
    if not isinstance(data, dict):
        raise _bad(path, "must hold a mapping: name, reference, notes and the recipe's settings")
    missing = [key for key in ABOUT if not isinstance(data.get(key), str) or not data[key].strip()]
    if missing:
        raise _bad(path, f"needs {', '.join(missing)} (text)")
    if data["name"] != path.stem:
        raise _bad(path, f"names itself {data['name']!r}; a recipe's name is its file's name, {path.stem!r}")
    settings = {key: value for key, value in data.items() if key not in ABOUT}
    notes = " ".join(data["notes"].split())
    return Recipe(data["name"], data["reference"].strip(), tuple(_flatten(path, settings)), notes)


def _bad(path: Path, problem: str) -> UsageError:
    return UsageError(f"recipe file {path}: {problem}")


def _flatten(path: Path, settings: dict, prefix: str = "") -> Iterator[str]:
    """``{"model": {"name": "mlp"}}`` -> ``"model.name=mlp"``: each setting as the override that gives it."""
    for key, value in settings.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str):
            raise _bad(path, f"setting names are text, got {full!r}")
        if isinstance(value, dict):
            yield from _flatten(path, value, full + ".")
        elif isinstance(value, (str, int, float)):
            yield f"{full}={_text(value)}"
        else:
            raise _bad(path, f"{full} must be a name, a number or true/false, got {value!r}")


def _text(value: str | int | float) -> str:
    """A setting's value as an override reads it back (a YAML scalar): text that would read as something else
    (``"true"``, ``"1"``) is quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str):
        try:
            same = text == "" or yaml.safe_load(text) == value
        except yaml.YAMLError:
            same = False
        return text if same else json.dumps(value)
    return text


def load_recipes(folder: str | Path | None = None) -> dict[str, Recipe]:
    """Every recipe file in ``folder`` (the shipped recipes without one), by name: ``default`` first, then
    alphabetically."""
    root = Path(str(resources.files("stitch").joinpath(FOLDER))) if folder is None else Path(folder)
    recipes = [read_recipe(path) for path in root.glob("*.yaml")]
    return {r.name: r for r in sorted(recipes, key=lambda r: (r.name != "default", r.name))}


@functools.cache
def _shipped() -> dict[str, Recipe]:
    return load_recipes()


class _Shipped(Mapping):
    """The shipped recipes, read when first used: a malformed file is then the one-line error of the command
    that needs it, not a failure to import stitch."""

    def __getitem__(self, name: str) -> Recipe:
        return _shipped()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_shipped())

    def __len__(self) -> int:
        return len(_shipped())


RECIPES: Mapping[str, Recipe] = _Shipped()


def _kind(overrides: Iterable[str]) -> str:
    """The model kind a list of overrides trains: the last one named, else the default's."""
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("model.name=")]
    return named[-1] if named else DEFAULT_KIND


def _fits(override: str, kind: str) -> bool:
    """Whether ``kind`` has the setting ``override`` gives: every non-model setting does, and every model
    setting of a kind that declares none (registry tag ``config_keys``)."""
    key = override.split("=", 1)[0]
    return not key.startswith("model.") or model_has(kind, key[len("model.") :])


def recipe_overrides(name: str, shared: Iterable[str] = ()) -> list[str]:
    """The recipe's settings as ``key=value`` overrides (for ``load_config``), then those of ``shared`` its
    model kind has: ``shared`` are settings given to several recipes at once (a bench's or a learning curve's
    ``model.hidden=32``), which apply where they fit; given to one recipe alone, a model setting its kind does
    not have is an error."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    own, shared = list(RECIPES[name].overrides), list(shared)
    kind = _kind([*own, *shared])
    return [*own, *(o for o in shared if _fits(o, kind))]


def uses_pools(name: str) -> bool:
    """Whether a recipe needs unpaired pools (semi.unpaired_captions / semi.unpaired_images) to train."""
    return bool(MODELS.tag(_kind(recipe_overrides(name)), "uses_pools", False))
