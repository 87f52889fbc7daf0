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


def test_a_model_setting_the_kind_does_not_have_is_refused_naming_the_kind(tmp_path):
    """Each model kind has its own settings (registry tag config_keys): one it does not have, given a value,
    is an error naming the kind and its settings, from an override or a config file."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["model.name=resmlp", "model.slots=4"])
    assert str(caught.value) == (
        "model.slots is not a setting of model kind 'resmlp' (its settings: hidden, depth, dropout, activation, "
        "standardize_target, init, ridge_alpha)"
    )
    with pytest.raises(ConfigError, match=r"^model.hidden, model.slots are not settings of model kind 'ridge' "):
        load_config(None, ["model.name=ridge", "model.hidden=32", "model.slots=3"])
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: procrustes\n  ridge_alpha: 3\n")
    with pytest.raises(ConfigError, match="model.ridge_alpha is not a setting of model kind 'procrustes'"):
        load_config(path)
    # the kind is the one finally chosen: a set-head file turned into a residual MLP by an override
    path.write_text("model:\n  name: set\n  slots: 3\nloss:\n  name: set-infonce\n")
    assert load_config(path).model.slots == 3
    with pytest.raises(ConfigError, match="model.slots is not a setting of model kind 'resmlp'"):
        load_config(path, ["model.name=resmlp", "loss.name=infonce"])


def test_a_full_config_loads_as_written(tmp_path):
    """A full config lists every model setting at its value: those the kind does not have sit at their
    defaults, which pass; --print-config's YAML trains the same config back."""
    for overrides in (["model.name=ridge", "model.ridge_alpha=3"], ["model.name=set", "loss.name=set-infonce"], []):
        config = load_config(None, overrides)
        path = tmp_path / "full.yaml"
        path.write_text(config.to_yaml())
        assert load_config(path) == config
    assert load_config(None, ["model.name=ridge", "model.hidden=3072"]).model.hidden == 3072  # the default


def test_a_saved_run_config_opens_even_with_a_setting_its_kind_does_not_have(tmp_path):
    """Runs written while such a setting was only warned about record it in config.json; they still open."""
    import json
    import shutil
    from pathlib import Path

    from stitch.training.run import RunInfo

    fixtures = Path(__file__).parent / "fixtures" / "runs_v0_1"
    for kind in ("resmlp", "set"):
        assert RunInfo.read(fixtures / kind).config.model.name == kind
    run = tmp_path / "run"
    shutil.copytree(fixtures / "resmlp", run)
    body = json.loads((run / "config.json").read_text())
    body["config"]["model"]["slots"] = 4
    (run / "config.json").write_text(json.dumps(body))
    config = RunInfo.read(run).config
    assert (config.model.name, config.model.slots) == ("resmlp", 4)
    assert config_from_dict(config.to_dict()) == config


def test_every_shipped_config_loads():
    from stitch.packaged import packaged_names, resolve

    for name in packaged_names("config"):
        load_config(resolve(name, "config"))


def test_a_kind_that_declares_no_settings_is_not_checked(monkeypatch):
    from stitch import registries
    from stitch.registries import Entry

    plain = Entry("stitch.translators.mapped:MLPTranslator", "an MLP with no settings declared", {"task": "translate"})
    entries = {**registries.MODELS.entries, "plain": plain}
    monkeypatch.setattr(registries.MODELS, "entries", entries)
    assert load_config(None, ["model.name=plain", "model.slots=4"]).model.slots == 4


def test_a_config_file_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: [ridge\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML at line \d") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)
