"""The append-only results store: round trip, refusals, crash and disk-full behaviour."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.results import STORE_FILE, ResultsStore, read_store

HEADER = {"study": "tiny", "study_hash": "aaaa1111", "config": {"targets": ["xcopa"], "seeds": [0]}}


def cell(cid: str, status: str = "finished", **kw) -> dict:
    config, target, seed = cid.split("|")
    record = {"cell": cid, "config": config, "method": "single", "target": target, "seed": int(seed[4:]),
              "intermediate": {"tasks": ["siqa"], "dir": None}, "status": status}
    if status == "finished":
        record.update(metric="accuracy", primary="accuracy",
                      languages={"sw": {"scores": {"accuracy": 50.0}, "n": 2, "low_resource": True,
                                        "split": "test", "source": "bundled", "stats": [[1.0], [0.0]],
                                        "ids_sha": "0123456789abcdef"}},
                      missing={"qu": "no bundled data — élan"}, trace={"model": "me5-small"}, notes=[])
    else:
        record["error"] = "boom"
    record.update(kw)
    return record


def lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_round_trip_replacement_and_finished(tmp_path):
    path = tmp_path / "study" / STORE_FILE
    store = ResultsStore(path, HEADER)
    assert path.is_file() and store.cells == {}
    store.add(cell("A|xcopa|seed0"))
    store.add(cell("B|xcopa|seed0", "failed"))
    store.add(cell("C|xcopa|seed0"))
    assert store.finished("A|xcopa|seed0") and not store.finished("B|xcopa|seed0")
    assert not store.finished("nothing|xcopa|seed0")
    store.add(cell("B|xcopa|seed0"))  # run again, now finished
    assert store.finished("B|xcopa|seed0")

    raw = lines(path)
    assert len(raw) == 5 and raw[0]["kind"] == "study" and all(r["kind"] == "cell" for r in raw[1:])
    header, cells = read_store(path.parent)  # the folder works as well as the file
    assert header["study"] == "tiny" and header["study_hash"] == "aaaa1111" and "created" in header
    assert header["config"] == HEADER["config"]
    assert [c["cell"] for c in cells] == ["A|xcopa|seed0", "B|xcopa|seed0", "C|xcopa|seed0"]  # first-seen order
    b = cells[1]
    assert b["status"] == "finished" and "error" not in b and "finished" in b
    assert cells[0]["languages"]["sw"]["stats"] == [[1.0], [0.0]]
    assert cells[0]["missing"]["qu"] == "no bundled data — élan"

    again = ResultsStore(path, HEADER)  # reopening keeps header and cells, writes nothing
    assert again.header == header
    assert set(again.cells) == {"A|xcopa|seed0", "B|xcopa|seed0", "C|xcopa|seed0"}
    assert again.finished("B|xcopa|seed0")
    assert len(lines(path)) == 5


def test_refuses_another_study(tmp_path):
    path = tmp_path / STORE_FILE
    ResultsStore(path, HEADER).add(cell("A|xcopa|seed0"))
    before = path.read_bytes()
    with pytest.raises(AdaptertxError) as err:
        ResultsStore(path, {**HEADER, "study": "other", "study_hash": "bbbb2222"})
    msg = str(err.value)
    assert "aaaa1111" in msg and "bbbb2222" in msg and "another study" in msg
    assert path.read_bytes() == before


def test_torn_last_line_is_ignored_and_next_append_is_clean(tmp_path, caplog):
    path = tmp_path / STORE_FILE
    store = ResultsStore(path, HEADER)
    store.add(cell("A|xcopa|seed0"))
    whole = json.dumps(cell("B|xcopa|seed0", kind="cell"), ensure_ascii=False).encode()
    with open(path, "ab") as f:  # a crash mid-write: part of a line, no newline
        f.write(whole[: len(whole) // 2])
    with caplog.at_level(logging.WARNING, logger="adaptertx.results"):
        header, cells = read_store(path)
    assert [c["cell"] for c in cells] == ["A|xcopa|seed0"]
    assert "torn last line" in caplog.text

    store = ResultsStore(path, HEADER)
    assert not store.finished("B|xcopa|seed0")  # the torn cell runs again
    store.add(cell("B|xcopa|seed0"))
    store.add(cell("C|xcopa|seed0"))
    raw = lines(path)  # every line is valid JSON: the torn one neither stays nor glues on
    assert [r.get("cell") for r in raw] == [None, "A|xcopa|seed0", "B|xcopa|seed0", "C|xcopa|seed0"]
    assert [c["cell"] for c in read_store(path)[1]] == ["A|xcopa|seed0", "B|xcopa|seed0", "C|xcopa|seed0"]


def test_torn_inside_a_utf8_character(tmp_path, caplog):
    path = tmp_path / STORE_FILE
    ResultsStore(path, HEADER).add(cell("A|xcopa|seed0"))
    whole = json.dumps(cell("B|xcopa|seed0", kind="cell"), ensure_ascii=False).encode()
    cut = whole.index("é".encode()) + 1  # between the two bytes of é
    with open(path, "ab") as f:
        f.write(whole[:cut])
    with caplog.at_level(logging.WARNING, logger="adaptertx.results"):
        assert [c["cell"] for c in read_store(path)[1]] == ["A|xcopa|seed0"]
    assert "torn last line" in caplog.text
    ResultsStore(path, HEADER).add(cell("B|xcopa|seed0"))
    assert [c["cell"] for c in read_store(path)[1]] == ["A|xcopa|seed0", "B|xcopa|seed0"]


def test_whole_last_record_without_newline_is_kept(tmp_path):
    # Killed between the record and its newline: the record is whole, so it counts.
    path = tmp_path / STORE_FILE
    ResultsStore(path, HEADER)
    with open(path, "ab") as f:
        f.write(json.dumps({"kind": "cell", **cell("A|xcopa|seed0")}).encode())
    store = ResultsStore(path, HEADER)
    assert store.finished("A|xcopa|seed0")
    store.add(cell("B|xcopa|seed0"))
    assert [c["cell"] for c in read_store(path)[1]] == ["A|xcopa|seed0", "B|xcopa|seed0"]


def test_damaged_middle_line_is_an_error(tmp_path):
    path = tmp_path / STORE_FILE
    store = ResultsStore(path, HEADER)
    store.add(cell("A|xcopa|seed0"))
    store.add(cell("B|xcopa|seed0"))
    text = path.read_text(encoding="utf-8").splitlines()
    text[1] = text[1][:40]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    with pytest.raises(AdaptertxError, match=rf"{STORE_FILE}:2: not a JSON line; the results store is damaged"):
        read_store(path)
    with pytest.raises(AdaptertxError, match="damaged"):
        ResultsStore(path, HEADER)


def test_not_a_store(tmp_path):
    path = tmp_path / STORE_FILE
    path.write_text(json.dumps({"kind": "cell", "cell": "A|xcopa|seed0"}) + "\n", encoding="utf-8")
    with pytest.raises(AdaptertxError, match="first line is no study header"):
        read_store(path)
    with pytest.raises(AdaptertxError, match="first line is no study header"):
        ResultsStore(path, HEADER)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(AdaptertxError, match="first line is no study header"):
        read_store(empty)
    with pytest.raises(AdaptertxError, match="no results store at"):
        read_store(tmp_path / "nowhere")
    # A non-cell record after the header is refused too.
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"kind": "study", **HEADER}) + "\n" + json.dumps({"kind": "note"}) + "\n",
                   encoding="utf-8")
    with pytest.raises(AdaptertxError, match="a record that is not a cell"):
        read_store(odd)


@pytest.mark.parametrize("record", [
    {"status": "finished"},
    {"cell": "A|xcopa|seed0"},
    {"cell": "A|xcopa|seed0", "status": "done"},
])
def test_add_refuses_bad_records(tmp_path, record):
    path = tmp_path / STORE_FILE
    store = ResultsStore(path, HEADER)
    before = path.read_bytes()
    with pytest.raises(AdaptertxError, match="needs a 'cell' id and a status 'finished' or 'failed'"):
        store.add(record)
    assert path.read_bytes() == before and store.cells == {}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to simulate a full disk")
def test_full_disk_is_a_clear_error_and_keeps_earlier_results(tmp_path):
    path = tmp_path / STORE_FILE
    store = ResultsStore(path, HEADER)
    store.add(cell("A|xcopa|seed0"))
    before = path.read_bytes()
    store.path = Path("/dev/full")  # every write there fails with ENOSPC
    with pytest.raises(AdaptertxError, match=r"could not append to /dev/full .*earlier results are kept"):
        store.add(cell("B|xcopa|seed0"))
    assert not store.finished("B|xcopa|seed0")  # not recorded in memory either
    assert path.read_bytes() == before
    assert [c["cell"] for c in read_store(path)[1]] == ["A|xcopa|seed0"]
