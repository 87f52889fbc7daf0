"""Fuzzing the config overrides: any `key=value` either gives a valid config or one clear ConfigError,
and a command that exits 0 never reports a non-finite metric."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stitch.apps.cli import main
from stitch.training.config import RANGES, ConfigError, TrainConfig, load_config


def _keys(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


KEYS = _keys(TrainConfig())
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.booleans(),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "", "true", "none", "~", "[1, 2]", "{a: 1}", "0x10", "1_000"]),
    st.text(max_size=12),
)


def _override(key: str, value) -> str:
    text = json.dumps(value) if isinstance(value, (bool, int)) else str(value)
    return f"{key}={text}"


@settings(max_examples=400, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
def test_overrides_give_a_valid_config_or_one_config_error(pairs):
    overrides = [_override(k, v) for k, v in pairs]
    try:
        config = load_config(None, overrides)
    except ConfigError as err:
        assert str(err)  # one message, naming what to fix
        return
    for key, (low, high) in RANGES.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert isinstance(value, (int, float)) and math.isfinite(value)
        assert low <= value <= high, key


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, small_data):
    from conftest import write_flickr_like

    return write_flickr_like(tmp_path_factory.mktemp("fuzz") / "d.npz", small_data)


NUMERIC = [k for k in RANGES if k not in ("optim.epochs", "model.hidden", "model.slots", "loss.sinkhorn_iters")]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(NUMERIC), value=VALUES)
def test_train_exits_0_only_with_finite_metrics(data_file, tmp_path_factory, capsys, key, value):
    out = tmp_path_factory.mktemp("run")
    tiny = ["optim.epochs=1", "model.hidden=16", "optim.batch_size=64", "inference.bank_size=64"]
    args = ["train", "--data", str(data_file), "--out", str(out / "r"), "--force", "--quiet"]
    code = main([*args, *tiny, _override(key, value)])
    captured = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in captured.err
    if code == 2:
        assert captured.err.startswith("error: ")
        return
    summary = json.loads((out / "r" / "summary.json").read_text())
    assert all(math.isfinite(v) for v in summary["dev"].values())
