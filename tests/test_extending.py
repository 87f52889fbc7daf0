"""The README's "Extending stitch" example, for real: a model kind added by one class and one registry
entry trains, evaluates, predicts and searches through the contract, and configs and errors know it."""

from __future__ import annotations

import pytest
from torch import nn

from stitch import api, registries
from stitch.registries import Entry
from stitch.training import ConfigError, load_config
from stitch.translators.mapped import MappedTranslator


class BottleneckTranslator(MappedTranslator):
    @classmethod
    def from_config(cls, c, text_dim, image_dim):
        net = nn.Sequential(nn.Linear(text_dim, c.hidden), nn.Linear(c.hidden, image_dim))
        return cls(net, text_dim, image_dim)


@pytest.fixture
def bottleneck_registered(monkeypatch):
    entries = {**registries.MODELS.entries}
    entries["bottleneck"] = Entry(
        "test_extending:BottleneckTranslator", "linear map through a bottleneck", {"task": "translate"}
    )
    monkeypatch.setattr(registries.MODELS, "entries", entries)


def test_a_new_model_kind_is_one_class_and_one_registry_line(bottleneck_registered, small_data, tmp_path):
    overrides = [
        "model.name=bottleneck",
        "model.hidden=8",
        "optim.epochs=2",
        "optim.batch_size=64",
        "inference.bank_size=64",
    ]
    api.train(small_data, None, out=tmp_path / "run", overrides=overrides, progress=False)
    run = api.open(tmp_path / "run")
    assert isinstance(run.model, BottleneckTranslator)
    assert api.evaluate(run, small_data, split="dev")[0].metrics["mrr"] > 0.05
    assert api.predict(run, small_data.captions[:2]).shape == (2, small_data.image_dim)
    hits = api.open_searcher(run, small_data, split="dev").search(small_data.captions[:2], k=3)
    assert [len(h) for h in hits] == [3, 3]


def test_unregistered_kinds_are_named_in_the_error():
    with pytest.raises(ConfigError, match=r"model.name must be one of \['ridge', .*'set'\], got 'bottleneck'"):
        load_config(None, ["model.name=bottleneck"])
