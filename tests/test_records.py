"""The run directory keeps every record, also when the run is interrupted."""

import json

import pytest

from harness.records import RECORD_FIELDS, RequestRecord, RunWriter, read_meta, read_records


def _rec(i: int) -> RequestRecord:
    return RequestRecord(
        run_id="r", topology="t", request_id=f"q{i}", trace_row=i, scheduled_s=float(i),
        sent_s=i + 0.001, first_token_s=i + 0.5, last_token_s=i + 1.0, itl_s=[0.25, 0.25],
        output_tokens_requested=3, output_tokens_received=3,
    )  # fmt: skip


def test_roundtrip_parquet(tmp_path):
    with RunWriter(tmp_path, {"kind": "test"}) as w:
        for i in range(7):
            w.write(_rec(i))
    df = read_records(tmp_path)
    assert list(df.columns) == list(RECORD_FIELDS)
    assert len(df) == 7
    assert df["itl_s"].iloc[3].tolist() == [0.25, 0.25]
    assert read_meta(tmp_path)["complete"] is True


def test_interrupted_run_keeps_records(tmp_path):
    with pytest.raises(KeyboardInterrupt), RunWriter(tmp_path, {}) as w:
        for i in range(5):
            w.write(_rec(i))
        raise KeyboardInterrupt
    meta = read_meta(tmp_path)
    assert meta["complete"] is False and meta["incomplete_reason"] == "interrupted"
    assert len(read_records(tmp_path)) == 5


def test_torn_last_line_is_tolerated(tmp_path):
    w = RunWriter(tmp_path, {})
    for i in range(3):
        w.write(_rec(i))
    w._log.write(json.dumps(_rec(3).to_dict())[:40])  # a crash mid-write
    w._log.flush()
    try:
        assert len(read_records(tmp_path)) == 3
    finally:
        w._log.close()


def test_unwritable_run_dir_names_it(tmp_path):
    from harness.errors import InputError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot write the run directory") as info:
        RunWriter(blocker / "run", {"source": "test"})
    assert info.value.where == str(blocker / "run") and blocker.read_text() == "x"


def test_second_writer_on_a_run_dir_is_refused(tmp_path):
    from harness.errors import InputError

    with RunWriter(tmp_path, {"run_id": "a"}) as w:
        w.write(_rec(0))
    with pytest.raises(InputError, match="already holds a run"):
        RunWriter(tmp_path, {"run_id": "b"})
    assert read_meta(tmp_path)["run_id"] == "a" and len(read_records(tmp_path)) == 1
