"""The CLI's error boundary: every subcommand answers missing, invalid and out-of-range arguments with one
line on stderr and exit code 2 — no traceback — and a missing optional package names its extra."""

from __future__ import annotations

import re
import sys

import pytest

from stitch.apps.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """Exit code and the stderr lines (deprecation warnings left out)."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_data):
    from conftest import write_flickr_like
    from stitch import api

    root = tmp_path_factory.mktemp("cli")
    data = write_flickr_like(root / "d.npz", small_data)
    api.train(small_data, None, out=root / "run", overrides=["model.name=ridge"], progress=False)
    (root / "bad.yaml").write_text("model: [unclosed\n")
    (root / "folder").mkdir()
    return {"data": str(data), "run": str(root / "run"), "root": root}


CASES = {
    "train without data": ["train", "--out", "{root}/t1"],
    "train unknown config": ["train", "--data", "{data}", "--config", "nope", "--out", "{root}/t2"],
    "train invalid yaml": ["train", "--data", "{data}", "--config", "{root}/bad.yaml", "--out", "{root}/t3"],
    "train bad number": ["train", "--data", "{data}", "--out", "{root}/t4", "optim.lr=fast"],
    "train out of range": ["train", "--data", "{data}", "--out", "{root}/t5", "seed=-1"],
    "train data is a folder": ["train", "--data", "{root}/folder", "--out", "{root}/t6"],
    "train missing data file": ["train", "--data", "{root}/none.npz", "--out", "{root}/t7"],
    "train unknown recipe": ["train", "--data", "{data}", "--recipe", "magic", "--out", "{root}/t8"],
    "evaluate without run": ["evaluate", "--data", "{data}"],
    "evaluate no such run": ["evaluate", "--run", "{root}/none", "--data", "{data}", "--split", "dev"],
    "evaluate chunk 0": ["evaluate", "--run", "{run}", "--data", "{data}", "--split", "dev", "--chunk", "0"],
    "evaluate bad protocol": ["evaluate", "--run", "{run}", "--data", "{data}", "--protocol", "top5"],
    "evaluate bad split": ["evaluate", "--run", "{run}", "--data", "{data}", "--split", "test"],
    "index build no out": ["index", "build", "--run", "{run}", "--data", "{data}"],
    "index build bad kind": ["index", "build", "--run", "{run}", "--data", "{data}", "--kind", "lsh", "--out", "x"],
    "index build bad param": [
        *("index", "build", "--run", "{run}", "--data", "{data}", "--split", "dev"),
        *("--kind", "hnsw", "--param", "m=-1", "--out", "{root}/i1"),
    ],
    "search without index": ["search", "--run", "{run}", "--queries", "{data}"],
    "search without queries": ["search", "--run", "{run}", "--index-dir", "{root}/none"],
    "search no such index": ["search", "--run", "{run}", "--index-dir", "{root}/none", "--queries", "{data}"],
    "predict without queries": ["predict", "--run", "{run}", "--out", "{root}/p.csv"],
    "predict missing file": ["predict", "--run", "{run}", "--queries", "{root}/none.npz", "--out", "{root}/p.csv"],
    "ensemble zero weights": ["ensemble", "{run}", "{run}", "--out", "{root}/e", "--weights", "0", "0"],
    "ensemble into a run": ["ensemble", "{run}", "--out", "{run}"],
    "bench unknown method": ["bench", "--data", "{data}", "--methods", "magic", "--out", "{root}/b"],
    "metric bad miner": ["metric", "--miner", "magic"],
    "encode nothing": ["encode", "--out", "{root}/enc.npz"],
    "serve bad port": ["serve", "--run", "{run}", "--data", "{data}", "--image-dir", "{root}", "--port", "99999"],
    "serve no folder": ["serve", "--run", "{run}", "--data", "{data}", "--image-dir", "{root}/none"],
    "tune unknown space": ["tune", "--data", "{data}", "--space", "magic"],
    "report no such run": ["report", "--run", "{root}/none", "--data", "{data}"],
    "recipes extra argument": ["recipes", "--bogus"],
    "demo extra argument": ["demo", "--bogus"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_subcommand_answers_bad_arguments_in_one_line(files, capsys, case):
    args = [a.format(**files) for a in CASES[case]]
    code, lines = run_cli(args, capsys)
    assert code == 2, (case, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in lines[0]


EXTRA_CASES = {
    "faiss": ("index", ["index", "build", "--run", "{run}", "--data", "{data}", "--split", "dev", "--kind", "hnsw"]),
    "optuna": ("tune", ["tune", "--data", "{data}", "--space", "default", "--out", "{root}/tune", "--trials", "1"]),
    "fastapi": ("serve", ["serve", "--run", "{run}", "--data", "{data}", "--image-dir", "{root}"]),
    "sklearn": ("metric", ["metric", "--data", "digits", "--epochs", "1", "--out", "{root}/m"]),
    "sentence_transformers": ("encode", ["encode", "--captions", "{root}/caps.txt", "--out", "{root}/e.npz"]),
}


def _imports_at_top(loaded, module: str) -> bool:
    source = getattr(loaded, "__file__", None) or ""
    if not getattr(loaded, "__name__", "").startswith("stitch.") or not source.endswith(".py"):
        return False
    text = open(source).read()
    return re.search(rf"^(from|import) {module}\b", text, re.MULTILINE) is not None


@pytest.mark.parametrize("module", list(EXTRA_CASES))
def test_a_missing_extra_is_named(files, capsys, monkeypatch, module):
    extra, args = EXTRA_CASES[module]
    (files["root"] / "caps.txt").write_text("a dog runs\n")
    for name, loaded in list(sys.modules.items()):
        if name == module or name.startswith(module + ".") or _imports_at_top(loaded, module):
            monkeypatch.delitem(sys.modules, name)  # stitch modules loaded by earlier cases import it afresh
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    args = [a.format(out="x", **files) for a in args]
    if extra == "index":
        args += ["--out", str(files["root"] / "idx")]
    code, lines = run_cli(args, capsys)
    assert code == 2, lines
    assert lines == [f"error: this needs the optional package {module!r}: pip install 'stitch[{extra}]'"]


def test_old_spellings_still_work_with_a_deprecation_warning(files, capsys, tmp_path):
    old = ["predict", "--run", files["run"], "--data", files["data"], "--out", str(tmp_path / "p.csv")]
    assert main(old) == 0
    err = capsys.readouterr().err
    assert "warning: --data is deprecated in stitch predict; use --queries" in err
    assert (tmp_path / "p.csv").exists()


def test_only_anticipated_errors_become_one_line_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Every error stitch raises on purpose is a StitchError (one line, exit 2); a ValueError from anywhere else
    is a bug and must not be hidden behind a one-line message."""
    from stitch.apps.cli import declare
    from stitch.errors import StitchError, UsageError

    def anticipated() -> int:
        raise UsageError("model.hidden must be positive")

    def bug() -> int:
        raise ValueError("operands could not be broadcast together")

    for handler, hidden in ((anticipated, True), (bug, False)):
        monkeypatch.setitem(declare.COMMANDS, "recipes", handler)
        if hidden:
            assert main(["recipes"]) == 2
            assert capsys.readouterr().err.strip() == "error: model.hidden must be positive"
        else:
            with pytest.raises(ValueError, match="broadcast"):
                main(["recipes"])
    # the typed errors of each layer are StitchErrors and still ValueErrors for callers that catch those
    from stitch.data import DataError
    from stitch.retrieval.index import IndexFileError
    from stitch.training.config import ConfigError
    from stitch.training.run import RunError

    for kind in (DataError, ConfigError, RunError, IndexFileError, UsageError):
        assert issubclass(kind, StitchError) and issubclass(kind, ValueError)
