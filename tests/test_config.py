"""Config: YAML + overrides, typed, and loud about typos."""

from __future__ import annotations

import pytest

from stitch.training.config import ConfigError, TrainConfig, config_from_dict, load_config, parse_overrides


def test_defaults_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: mlp\n  hidden: 512\noptim:\n  lr: 0.001\n")
    cfg = load_config(path, ["optim.lr=3e-4", "model.depth=2", "loss.learnable_temperature=false"])
    assert cfg.model.name == "mlp" and cfg.model.hidden == 512 and cfg.model.depth == 2
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.loss.learnable_temperature is False
    assert cfg.optim.epochs == TrainConfig().optim.epochs


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrate'.*'optim.lr'"):
        load_config(None, ["optim.lrate=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochs=2.5", "whole number"),
        ("optim.lr=fast", "must be a number"),
        ("model.name=transformer", "model.name must be one of"),
        ("optim.batch_size=0", r"optim.batch_size must be in \[2, "),
        ("optim.batch_size=true", "optim.batch_size must be a int, got the boolean"),
        ("patience=0", r"patience must be in \[1, "),
        ("seed=-1", r"seed must be in \[0, "),
        ("model.ridge_alpha=-1", r"model.ridge_alpha must be in \[0.0, "),
        ("model.ridge_alpha=nan", "model.ridge_alpha must be a finite number"),
        ("optim.lr=1e30", r"optim.lr must be in \["),
        ("model.shared_dim=0", r"model.shared_dim must be in \[1, "),
        ("inference.bank_size=-5", r"inference.bank_size must be in \[1, "),
        ("model.slots=0", r"model.slots must be in \[1, "),
        ("eval_chunk=0", r"eval_chunk must be in \[1, "),
        ("model.dropout=1.5", "dropout"),
        ("amp=maybe", "true or false"),
        ("device=tpu", "device must be"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.name=procrustes", "seed=7"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_override_parsing_is_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


def test_shipped_default_yaml_is_the_built_in_default():
    """`stitch train` with no config and with the shipped default.yaml train the same recipe."""
    from stitch.packaged import resolve

    shipped = resolve("default", "config")
    assert load_config(shipped, []).to_dict() == load_config(None, []).to_dict()


def test_a_setting_the_model_kind_does_not_read_is_named_not_silently_dropped(caplog):
    """Each model kind declares the model.* settings it reads (registry tag config_keys); one it does not read,
    changed from its default, is named in a warning. Named recipes pin only what their kind reads."""
    import logging

    from stitch.recipes import RECIPES
    from stitch.training.config import load_config

    with caplog.at_level(logging.WARNING):
        load_config(None, ["model.name=resmlp", "model.slots=4"])
    assert "model.name=resmlp does not use model.slots: ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_config(None, ["model.name=set", "loss.name=set-infonce", "model.slots=4"])
        for recipe in RECIPES.values():
            load_config(None, list(recipe.overrides))
    assert "ignored" not in caplog.text
