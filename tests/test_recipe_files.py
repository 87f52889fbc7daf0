"""Recipes are YAML files under stitch/configs/recipes, read by one reader; each resolves to the config it
resolved to when recipes were a table in Python (tests/data/recipes_resolved.json), and a malformed file is a
one-line error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stitch.errors import UsageError
from stitch.recipes import DEFAULT_KIND, RECIPES, load_recipes, read_recipe, recipe_overrides, uses_pools
from stitch.training.config import ConfigError, ModelConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "src" / "stitch" / "configs" / "recipes"
RESOLVED = json.loads((Path(__file__).parent / "data" / "recipes_resolved.json").read_text())


def _differences(recorded: dict, resolved: dict, default: dict, prefix: str = "") -> list[str]:
    """Where ``resolved`` departs from ``recorded``; a setting added since the recording must be at its default."""
    out = []
    for key in sorted(set(recorded) | set(resolved)):
        if isinstance(resolved.get(key), dict):
            out += _differences(recorded.get(key, {}), resolved[key], default[key], f"{prefix}{key}.")
        elif key not in recorded:
            if resolved[key] != default[key]:
                out.append(f"{prefix}{key}: {resolved[key]!r}, a setting added since the recording, is not its default")
        elif key not in resolved or resolved[key] != recorded[key]:
            out.append(f"{prefix}{key}: recorded {recorded[key]!r}, resolves to {resolved.get(key, '(absent)')!r}")
    return out


def test_the_recipes_are_the_recorded_ones_default_first():
    assert sorted(RECIPES) == sorted(RESOLVED)
    assert next(iter(RECIPES)) == "default"


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_every_recipe_resolves_to_its_recorded_config(name):
    recorded = RESOLVED[name]
    resolved = load_config(None, recipe_overrides(name)).to_dict()
    assert not _differences(recorded["config"], resolved, TrainConfig().to_dict())
    recipe = RECIPES[name]
    assert (recipe.reference, recipe.notes) == (recorded["reference"], recorded["notes"])
    assert uses_pools(name) is recorded["uses_pools"]


def test_the_comparison_sees_a_change_and_allows_a_new_setting_at_its_default(tmp_path):
    default = {"a": 1, "s": {"b": 2, "new": 0}}
    recorded = {"a": 1, "s": {"b": 2}}
    assert _differences(recorded, {"a": 1, "s": {"b": 2, "new": 0}}, default) == []
    assert _differences(recorded, {"a": 1, "s": {"b": 3, "new": 0}}, default) == ["s.b: recorded 2, resolves to 3"]
    assert _differences(recorded, {"a": 1, "s": {"b": 2, "new": 5}}, default) == [
        "s.new: 5, a setting added since the recording, is not its default"
    ]
    (tmp_path / "ridge.yaml").write_text((FOLDER / "ridge.yaml").read_text().replace("rerank: none", "rerank: csls"))
    changed = load_config(None, list(read_recipe(tmp_path / "ridge.yaml").overrides)).to_dict()
    problems = _differences(RESOLVED["ridge"]["config"], changed, TrainConfig().to_dict())
    assert problems == ["inference.rerank: recorded 'none', resolves to 'csls'"]


def test_each_recipe_is_one_file_whose_settings_are_its_overrides():
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == sorted(RECIPES)
    for name, recipe in RECIPES.items():
        data = yaml.safe_load((FOLDER / f"{name}.yaml").read_text())
        assert data["name"] == name
        settings = {k: v for k, v in data.items() if k not in ("name", "reference", "notes")}
        assert load_config(None, settings).to_dict() == load_config(None, list(recipe.overrides)).to_dict()


def test_the_recipe_files_ship_with_the_package():
    """The wheel carries every YAML under stitch/configs: each matches a package-data glob of pyproject.toml."""
    import tomllib

    package = ROOT / "src" / "stitch"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["stitch"]
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    assert sorted(set((package / "configs").rglob("*.yaml")) - shipped) == []
    assert set(FOLDER.glob("*.yaml")) <= shipped


def test_the_default_kind_is_the_configs_default():
    assert DEFAULT_KIND == ModelConfig().name


GOOD = "name: {name}\nreference: somewhere\nnotes: >-\n  what it does\nmodel:\n  name: ridge\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: bad\nreference: x: y\n", r"not valid YAML at line 2 \(mapping values are not allowed here\)"),
        ("- name\n- bad\n", "must hold a mapping"),
        ("", "must hold a mapping"),
        ("name: bad\nreference: x\n", "needs notes"),
        ("name: bad\nreference: 3\nnotes: x\n", r"needs reference \(text\)"),
        ("name: other\nreference: x\nnotes: y\n", r"names itself 'other'; a recipe's name is its file's name, 'bad'"),
        ("name: bad\nreference: x\nnotes: y\nmodel:\n  hidden: [1, 2]\n", r"model.hidden must be a name, a number"),
        ("name: bad\nreference: x\nnotes: y\nmodel:\n  hidden:\n", "model.hidden must be a name, a number"),
        ("name: bad\nreference: x\nnotes: y\nmodel:\n", "model must be a name, a number"),
        ("name: bad\nreference: x\nnotes: y\n1: 2\n", "setting names are text"),
    ],
)
def test_a_malformed_recipe_file_is_one_line_naming_it(tmp_path, text, problem):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(UsageError, match=problem) as caught:
        load_recipes(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"recipe file {tmp_path / 'bad.yaml'}: ") and "\n" not in message


def test_recipes_load_from_any_folder_in_order(tmp_path):
    for name in ("zeta", "default", "alpha"):
        (tmp_path / f"{name}.yaml").write_text(GOOD.format(name=name))
    recipes = load_recipes(tmp_path)
    assert list(recipes) == ["default", "alpha", "zeta"]
    assert recipes["alpha"].overrides == ("model.name=ridge",) and recipes["alpha"].notes == "what it does"


def test_values_reach_the_config_as_written(tmp_path):
    """Text that would read as another type stays text; numbers, booleans and empty text keep their types."""
    (tmp_path / "r.yaml").write_text(
        "name: r\nreference: x\nnotes: y\nloss:\n  teacher: 'true'\n  learnable_temperature: false\n"
        "  temperature: 0.07\noptim:\n  lr: 1.0e-4\n  epochs: 3\nsemi:\n  unpaired_captions: ''\n"
    )
    config = load_config(None, list(read_recipe(tmp_path / "r.yaml").overrides))
    assert config.loss.teacher == "true" and config.loss.learnable_temperature is False
    assert config.loss.temperature == 0.07 and config.optim.lr == 1e-4 and config.optim.epochs == 3
    assert config.semi.unpaired_captions == ""


def test_a_recipe_giving_its_kind_a_setting_it_does_not_have_is_refused(tmp_path):
    (tmp_path / "r.yaml").write_text("name: r\nreference: x\nnotes: y\nmodel:\n  slots: 4\n")
    with pytest.raises(ConfigError, match=r"model.slots is not a setting of model kind 'resmlp' \(its settings: "):
        load_config(None, list(load_recipes(tmp_path)["r"].overrides))


def test_shared_settings_apply_to_each_recipe_where_its_kind_has_them():
    shared = ["model.hidden=32", "model.shared_dim=8", "optim.epochs=1"]
    ridge = recipe_overrides("ridge", shared)
    assert ridge == [*RECIPES["ridge"].overrides, "optim.epochs=1"]
    assert recipe_overrides("default", shared) == ["model.hidden=32", "optim.epochs=1"]
    assert recipe_overrides("clip-heads", shared)[-3:] == shared
    for name in RECIPES:
        config = load_config(None, recipe_overrides(name, shared))
        assert config.optim.epochs == 1
    with pytest.raises(ConfigError, match="model.hidden is not a setting of model kind 'ridge'"):
        load_config(None, [*recipe_overrides("ridge"), "model.hidden=32"])


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown recipe 'magic'; choose from \['align-heads'"):
        recipe_overrides("magic")
