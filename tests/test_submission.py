"""The Kaggle CSV submission: real CSV quoting, id checks, and exact float round trips."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from stitch.data import DataError, Queries
from stitch.outputs.submission import check_ids, read_csv_submission, write_csv

AWKWARD_IDS = ["plain", "with,comma", 'with "quotes"', "two\nlines", "crlf\r\ninside", "tab\there", "ünï ✓", "-3"]


def _queries(ids, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return Queries(rng.standard_normal((len(ids), dim)).astype(np.float32), ids=np.array(ids))


def test_awkward_ids_round_trip_exactly(tmp_path):
    queries = _queries(AWKWARD_IDS)
    pred = np.random.default_rng(1).standard_normal((len(AWKWARD_IDS), 5)).astype(np.float32)
    out = write_csv(tmp_path / "sub.csv", queries, pred)
    ids, rows = read_csv_submission(out)
    assert list(ids) == AWKWARD_IDS
    assert rows.dtype == np.float32 and np.array_equal(rows, pred)
    # any CSV reader (not only ours) sees exactly two fields per row, and the sample file's CRLF rows
    with out.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    assert records[0] == ["id", "embedding"]
    assert [r[0] for r in records[1:]] == AWKWARD_IDS and all(len(r) == 2 for r in records)
    assert out.read_bytes().startswith(b"id,embedding\r\n")


def test_float_values_read_back_bit_for_bit(tmp_path):
    rng = np.random.default_rng(2)
    pred32 = (rng.standard_normal((50, 64)) * 10.0 ** rng.integers(-30, 30, (50, 64))).astype(np.float32)
    pred32[0, :4] = [np.finfo(np.float32).tiny, np.finfo(np.float32).max, -0.0, 1e-45]  # edges and a subnormal
    write_csv(tmp_path / "a.csv", _queries([str(i) for i in range(50)]), pred32)
    assert np.array_equal(read_csv_submission(tmp_path / "a.csv")[1], pred32)

    pred64 = rng.standard_normal((50, 8)) / 3.0
    write_csv(tmp_path / "b.csv", _queries([str(i) for i in range(50)]), pred64)
    back = read_csv_submission(tmp_path / "b.csv", dtype=np.float64)[1]
    assert back.dtype == np.float64 and np.array_equal(back, pred64)


@pytest.mark.parametrize("bad", ['=HYPERLINK("http://x","y")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_ids_are_refused_by_default(tmp_path, bad):
    out = tmp_path / "sub.csv"
    with pytest.raises(ValueError) as err:
        write_csv(out, _queries(["ok", bad]), np.zeros((2, 3), np.float32))
    message = str(err.value)
    assert repr(bad) in message and "row 1" in message and "exactly" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_formula_ids_prefixed_only_when_asked(tmp_path):
    out = write_csv(tmp_path / "sub.csv", _queries(["=1+1", "ok"]), np.ones((2, 3), np.float32), formula_ids="prefix")
    assert list(read_csv_submission(out)[0]) == ["'=1+1", "ok"]
    with pytest.raises(ValueError, match="refuse"):
        check_ids(["a"], formula_ids="drop")


def test_duplicate_ids_are_refused_naming_both_rows():
    with pytest.raises(ValueError, match=r"'b' at row 2 repeats row 1"):
        check_ids(["a", "b", "b", "c", "c"])
    # prefixing must not create a duplicate silently
    with pytest.raises(ValueError, match="repeats row 0"):
        check_ids(["'=x", "=x"], formula_ids="prefix")


@pytest.mark.parametrize("bad", ["nul\x00id", "esc\x1b[31m", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"row 2 contains the control character"):
        write_csv(tmp_path / "sub.csv", _queries(["a", "b", bad]), np.zeros((3, 2), np.float32))
    assert not (tmp_path / "sub.csv").exists()


def test_empty_id_is_refused():
    with pytest.raises(ValueError, match="row 1 is empty"):
        check_ids(["a", ""])


def test_ids_without_a_file_are_row_numbers(tmp_path):
    queries = Queries(np.ones((3, 2), np.float32))
    ids, rows = read_csv_submission(write_csv(tmp_path / "s.csv", queries, np.ones((3, 2), np.float32)))
    assert list(ids) == ["0", "1", "2"] and rows.shape == (3, 2)


def test_reader_names_the_line_of_a_broken_row(tmp_path):
    path = tmp_path / "bad.csv"
    # an unquoted id with a comma: what the old writer produced
    path.write_text('id,embedding\r\n0,"[1.0, 2.0]"\r\na,b,"[1.0, 2.0]"\r\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:3: expected 2 fields"):
        read_csv_submission(path)
    path.write_text('id,embedding\r\n"multi\nline","[1.0, 2.0]"\r\n1,"[1.0]"\r\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:4: 1 values, earlier rows have 2"):
        read_csv_submission(path)
    path.write_text('id,embedding\r\n1,"[1.0]"\r\n1,"[2.0]"\r\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:3: id '1' repeats line 2"):
        read_csv_submission(path)
    path.write_text('id,embedding\r\n1,"[1.0, x]"\r\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:2: .*not a number"):
        read_csv_submission(path)


def test_reader_accepts_wide_embeddings(tmp_path):
    pred = np.random.default_rng(3).standard_normal((2, 20000)).astype(np.float32)  # a field > 128 KiB
    out = write_csv(tmp_path / "wide.csv", _queries(["a", "b"]), pred)
    assert np.array_equal(read_csv_submission(out)[1], pred)


def test_sample_submission_still_reads(formats_dir):
    ids, rows = read_csv_submission(formats_dir / "aml2025" / "sample_submission.csv")
    assert len(ids) == len(rows) > 0 and ids[0] == "0" and rows.shape[1] > 0


def test_written_file_has_the_sample_layout(tmp_path, formats_dir):
    from stitch.data import load_queries

    sample = formats_dir / "aml2025" / "sample_submission.csv"
    sample_ids, sample_rows = read_csv_submission(sample)
    queries = load_queries(formats_dir / "aml2025" / "test.clean.npz")
    pred = np.random.default_rng(4).standard_normal((len(queries), sample_rows.shape[1])).astype(np.float32)
    out = write_csv(tmp_path / "sub.csv", queries, pred)
    ids, rows = read_csv_submission(out)
    assert list(ids[: len(sample_ids)]) == list(sample_ids) and rows.shape[1] == sample_rows.shape[1]
    ours, theirs = out.read_bytes(), sample.read_bytes()
    assert ours.split(b"\r\n")[0] == theirs.split(b"\r\n")[0] == b"id,embedding"
    for row in (ours.split(b"\r\n")[1], theirs.split(b"\r\n")[1]):
        assert row.startswith(b'0,"[') and row.endswith(b']"') and b", " in row
