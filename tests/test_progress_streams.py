"""Progress in a notebook: epoch lines on stdout (Jupyter draws stderr as an error), a widget bar only where
ipywidgets can draw it; on a plain pipe, lines on stderr so stdout holds only results."""

from __future__ import annotations

import sys
import types

from stitch.io import progress


class ZMQInteractiveShell:  # the name of IPython's kernel shell class, which is what is checked
    pass


def _kernel(monkeypatch) -> None:
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_off_a_notebook_lines_go_to_stderr(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not progress.in_notebook()
    assert progress.status_stream() is sys.stderr


def test_in_a_notebook_lines_go_to_stdout_and_bars_need_widgets(monkeypatch):
    _kernel(monkeypatch)
    assert progress.in_notebook() and progress.status_stream() is sys.stdout
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    assert not progress.live_bars()  # no ipywidgets: lines, not a text bar on stderr
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: object())
    assert progress.live_bars()


def test_a_terminal_ipython_is_not_a_notebook(monkeypatch):
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: type("TerminalInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert not progress.in_notebook()


def test_epoch_lines_follow_the_stream(monkeypatch, capsys, small_data):
    from stitch import api

    _kernel(monkeypatch)
    api.train(small_data, None, overrides=["model.name=mlp", "model.hidden=16", "optim.epochs=1"], progress=True)
    out, err = capsys.readouterr()
    assert "epoch 0: loss" in out and "epoch 0: loss" not in err


def test_steps_say_each_step_as_it_starts_off_a_terminal(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    steps = progress.Steps("report", 3)
    for name in ("scoring", "map", "examples"):
        steps(name)
    steps.close()
    assert capsys.readouterr().err.splitlines() == [
        "report [1/3]: scoring",
        "report [2/3]: map",
        "report [3/3]: examples",
    ]
    quiet = progress.Steps("report", 1, enabled=False)
    quiet("scoring")
    assert capsys.readouterr().err == ""
