"""Trace readers on slices of the real traces (tests/data) and on small files in the real formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.errors import TraceError
from harness.traces import detect_format, read_trace, read_trace_report, write_native
from harness.traces.azure import wall_clock_ns


def test_mooncake_conversation_real(mooncake_slice):
    trace, report = read_trace_report(mooncake_slice)
    assert report.format == "mooncake" and report.skipped == 0
    assert len(trace) == 300  # the slice's facts (tests/data/README.md)
    assert trace.input_tokens.mean() == pytest.approx(4_269_971 / 300)
    counts = np.diff(trace.hash_offsets)
    assert np.array_equal(counts, -(-trace.input_tokens // 512))  # ceil(input / 512) on every row
    assert trace.block_tokens == 512
    # Independent check against the raw file: first and last rows, timestamps in ms -> s.
    with mooncake_slice.open() as fh:
        lines = fh.readlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert list(trace.hash_ids(0)) == first["hash_ids"]
    assert trace.arrival_s[-1] == pytest.approx((last["timestamp"] - first["timestamp"]) / 1000)
    assert trace.output_tokens[-1] == last["output_length"]
    assert np.all(np.diff(trace.arrival_s) >= 0)


def test_azure_code_2023_real(azure_code_slice):
    trace, report = read_trace_report(azure_code_slice)
    assert report.format == "azure"
    assert len(trace) == 300  # the slice's facts (tests/data/README.md)
    assert trace.input_tokens.mean() == pytest.approx(627_529 / 300)
    assert trace.input_tokens.max() == 7_436
    # 18:17:03.9799600 -> 18:17:04.0319600 is exactly 52 ms (7-digit fractions parsed exactly).
    assert trace.arrival_s[1] == pytest.approx(0.052, abs=1e-9)
    # No prefix information: every block id is unique, ceil(input/512) of them per request.
    assert len(np.unique(trace.hash_values)) == len(trace.hash_values)
    assert np.array_equal(np.diff(trace.hash_offsets), -(-trace.input_tokens // 512))


AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.009930+00:00,100,10
2024-05-10 00:00:01+00:00,200,20
2024-05-10 00:00:01.5+00:00,1025,5
2024-05-10 02:00:02.25+02:00,513,1
"""


def test_azure_2024_zone_and_mixed_precision(tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_code_1week.csv"
    path.write_text(AZURE_2024)
    assert detect_format(path) == "azure"
    trace = read_trace(path)
    # The +02:00 row is 00:00:02.25 UTC.
    assert trace.arrival_s == pytest.approx([0.0, 0.99007, 1.49007, 2.24007], abs=1e-9)
    assert list(trace.input_tokens) == [100, 200, 1025, 513]
    assert list(np.diff(trace.hash_offsets)) == [1, 1, 3, 2]
    assert list(trace.hash_values) == list(range(7))


def test_wall_clock_styles():
    base = wall_clock_ns("2023-11-16 18:17:03")
    assert wall_clock_ns("2023-11-16 18:17:03.9799600") - base == 979_960_000
    assert wall_clock_ns("2023-11-16T18:17:03Z") == base
    assert wall_clock_ns("2023-11-16 19:17:03+01:00") == base
    assert wall_clock_ns("2023-11-17 00:00:00") - wall_clock_ns("2023-11-16 23:59:59.5") == 500_000_000


BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,API log
"""


def test_burstgpt_drops_or_keeps_failed(tmp_path):
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(BURSTGPT)
    assert detect_format(path) == "burstgpt"
    trace, report = read_trace_report(path)
    assert list(trace.arrival_s) == [0.0, 113.0]
    assert list(trace.output_tokens) == [18, 276]
    assert report.failed_dropped == 1
    kept, report = read_trace_report(path, keep_failed=True)
    assert list(kept.arrival_s) == [0.0, 40.0, 113.0]
    assert list(kept.output_tokens) == [18, 1, 276]
    assert report.failed_kept == 1 and report.failed_dropped == 0


def test_native_round_trip_keeps_every_column(tmp_path, mooncake_slice):
    trace = read_trace(mooncake_slice)
    sessions = np.where(np.arange(len(trace)) % 3 == 0, -1, np.arange(len(trace)) // 7)
    trace = trace.replace(session_id=sessions, block_tokens=512)
    path = write_native(trace, tmp_path / "out" / "trace.parquet")
    back, report = read_trace_report(path)
    assert report.format == "native"
    for column in ("arrival_s", "input_tokens", "output_tokens", "hash_values", "hash_offsets", "session_id"):
        assert np.array_equal(getattr(back, column), getattr(trace, column)), column
    assert back.block_tokens == 512


def test_native_detected_without_extension(tmp_path):
    trace = read_trace(_write(tmp_path, "t.jsonl", _mooncake_lines([(0, 600, 5), (10, 100, 7)])))
    path = write_native(trace, tmp_path / "trace.bin")
    assert detect_format(path) == "native"
    assert list(read_trace(path).arrival_s) == [0.0, 0.01]


def test_format_override(tmp_path):
    # A misnamed file: the extension says Parquet, the content is Mooncake JSONL.
    path = _write(tmp_path, "misnamed.parquet", _mooncake_lines([(0, 10, 3)]))
    with pytest.raises(TraceError, match="not a readable Parquet trace"):
        read_trace(path)
    assert list(read_trace(path, "mooncake").input_tokens) == [10]


def test_unknown_content_asks_for_format(tmp_path):
    path = _write(tmp_path, "odd.txt", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match=r"cannot tell the trace format.*--format") as err:
        read_trace(path)
    assert str(path) in str(err.value)


# --- bad input -------------------------------------------------------------------------------------


def _mooncake_lines(rows: list[tuple[int, int, int]]) -> str:
    return "".join(
        json.dumps(
            {
                "timestamp": t,
                "input_length": i,
                "output_length": o,
                "hash_ids": list(range(math.ceil(i / 512))),
            }
        )
        + "\n"
        for t, i, o in rows
    )


def _write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


GOOD = _mooncake_lines([(0, 1000, 10)])
LATER = _mooncake_lines([(2000, 300, 10)])
BAD_MOONCAKE = {
    "malformed": (GOOD + '{"timestamp": 1000, "input_length": 5\n' + LATER, "not valid JSON", None),
    "missing field": (
        GOOD + '{"timestamp": 1000, "input_length": 5, "hash_ids": [1]}\n' + LATER,
        "missing",
        "output_length",
    ),
    "zero length": (GOOD + _mooncake_lines([(1000, 0, 5)]) + LATER, "positive", "input_length"),
    "negative length": (GOOD + _mooncake_lines([(1000, 50, -3)]) + LATER, "positive", "output_length"),
    "backwards": (_mooncake_lines([(1500, 100, 5), (1000, 100, 5)]) + LATER, "backwards", "timestamp"),
    "undecodable": (
        GOOD.encode() + b'{"timestamp": 1000, "input_length": 5\xff\xfe}\n' + LATER.encode(),
        "UTF-8",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MOONCAKE))
def test_bad_mooncake_line_names_file_line_and_field(tmp_path, case):
    text, message, field = BAD_MOONCAKE[case]
    path = _write(tmp_path, "bad.jsonl", text)
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert str(path) in str(err.value) and "line 2" in str(err.value)
    assert message in str(err.value)
    if field:
        assert repr(field) in str(err.value)
    # --skip-bad: the bad line is counted, the other two are kept.
    trace, report = read_trace_report(path, skip_bad=True)
    assert report.skipped == 1 and len(trace) == 2
    assert "line 2" in report.skipped_examples[0]


def test_backwards_is_judged_against_the_last_kept_row(tmp_path):
    path = _write(
        tmp_path,
        "b.jsonl",
        _mooncake_lines([(0, 10, 1), (5000, 10, 1), (1000, 10, 1), (4000, 10, 1), (6000, 10, 1)]),
    )
    trace, report = read_trace_report(path, skip_bad=True)
    assert report.skipped == 2
    assert list(trace.arrival_s) == [0.0, 5.0, 6.0]


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = _write(tmp_path, "empty.jsonl", text)
    with pytest.raises(TraceError, match="empty") as err:
        read_trace(path)
    assert str(path) in str(err.value)


def test_header_only_csv_has_no_requests(tmp_path):
    path = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match="no requests") as err:
        read_trace(path)
    assert str(path) in str(err.value)


def test_all_lines_bad_is_an_error_even_when_skipping(tmp_path):
    path = _write(tmp_path, "bad.jsonl", "nonsense\nmore nonsense\n")
    with pytest.raises(TraceError, match=r"no requests in file \(2 bad lines skipped\)"):
        read_trace(path, "mooncake", skip_bad=True)


BAD_AZURE = {
    "timestamp": ("2024-05-10 00:00:0x,5,5", "wall-clock", "TIMESTAMP"),
    "zero": ("2024-05-10 00:00:02,0,5", "positive", "ContextTokens"),
    "not a number": ("2024-05-10 00:00:02,12,abc", "integer", "GeneratedTokens"),
    "fields": ("2024-05-10 00:00:02,12", "3 comma-separated fields", None),
    "backwards": ("2024-05-09 23:59:59,12,5", "backwards", "TIMESTAMP"),
}


@pytest.mark.parametrize("case", sorted(BAD_AZURE))
def test_bad_azure_line(tmp_path, case):
    line, message, field = BAD_AZURE[case]
    text = f"TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:01,10,1\n{line}\n2024-05-10 00:00:03,20,2\n"
    path = _write(tmp_path, "a.csv", text)
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert f"{path}: line 3" in str(err.value) and message in str(err.value)
    if field:
        assert repr(field) in str(err.value)
    trace, report = read_trace_report(path, skip_bad=True)
    assert report.skipped == 1 and list(trace.arrival_s) == [0.0, 2.0]


def test_missing_csv_column_names_header(tmp_path):
    path = _write(tmp_path, "b.csv", "Timestamp,Model,Request tokens,Total tokens\n1,x,5,5\n")
    with pytest.raises(TraceError, match=r"missing column.*Response tokens") as err:
        read_trace(path, "burstgpt")
    assert f"{path}: line 1" in str(err.value)


def test_native_bad_rows(tmp_path):
    trace = read_trace(
        _write(tmp_path, "t.jsonl", _mooncake_lines([(0, 600, 5), (10, 100, 7), (20, 100, 7)]))
    )
    bad = trace.replace(input_tokens=np.array([600, 0, 100]))
    path = write_native(bad, tmp_path / "bad.parquet")
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert f"{path}: row 2, field 'input_tokens'" in str(err.value)
    back, report = read_trace_report(path, skip_bad=True)
    assert report.skipped == 1 and list(back.input_tokens) == [600, 100]
    assert list(back.hash_ids(1)) == list(trace.hash_ids(2))


def test_not_parquet_and_missing_file(tmp_path):
    path = _write(tmp_path, "x.parquet", b"PAR1 but not really")
    with pytest.raises(TraceError, match="not a readable Parquet trace") as err:
        read_trace(path)
    assert str(path) in str(err.value)
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.jsonl")


def test_bom_and_crlf_are_tolerated(tmp_path):
    path = _write(
        tmp_path,
        "win.csv",
        b"\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.1,5,6\r\n",
    )
    assert detect_format(path) == "azure"
    assert list(read_trace(path).input_tokens) == [5]


def test_hash_id_beyond_int64_is_a_bad_field(tmp_path):
    line = '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [18446744073709551616]}\n'
    path = _write(tmp_path, "big.jsonl", line)
    with pytest.raises(TraceError, match="64-bit") as err:
        read_trace(path)
    assert f"{path}: line 1, field 'hash_ids'" in str(err.value)


def test_fast_and_line_paths_agree_on_real_azure(azure_code_slice):
    from harness.traces import azure

    fast = azure._read_vectorised(azure_code_slice)
    slow, _ = azure._read_lines(azure_code_slice, skip_bad=False)
    assert fast is not None
    assert np.array_equal(fast.input_tokens, slow.input_tokens)
    assert np.array_equal(fast.output_tokens, slow.output_tokens)
    assert np.abs(fast.arrival_s - slow.arrival_s).max() < 1e-9
    assert np.array_equal(fast.hash_values, slow.hash_values)


@pytest.mark.parametrize("keep_failed", [False, True])
def test_fast_and_line_paths_agree_on_burstgpt(tmp_path, keep_failed):
    from harness.traces import burstgpt

    path = _write(tmp_path, "b.csv", BURSTGPT)
    fast = burstgpt._read_vectorised(path, keep_failed)
    assert fast is not None
    slow = burstgpt._read_lines(path, skip_bad=False, keep_failed=keep_failed)
    assert fast[1] == slow[1]
    for column in ("arrival_s", "input_tokens", "output_tokens", "hash_values", "hash_offsets"):
        assert np.array_equal(getattr(fast[0], column), getattr(slow[0], column))


def test_bad_burstgpt_line_falls_back_to_exact_message(tmp_path):
    path = _write(tmp_path, "b.csv", BURSTGPT.replace("118,GPT-4,417", "118,GPT-4,-417"))
    with pytest.raises(TraceError) as err:
        read_trace(path)
    assert f"{path}: line 4, field 'Request tokens'" in str(err.value)
    trace, report = read_trace_report(path, skip_bad=True)
    assert report.skipped == 1 and report.failed_dropped == 1 and list(trace.input_tokens) == [472]


def test_absurd_length_is_a_bad_field_not_an_overflow(tmp_path):
    path = _write(
        tmp_path,
        "a.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,99999999999999999999999,5\n",
    )
    with pytest.raises(TraceError, match="implausibly large") as err:
        read_trace(path)
    assert f"{path}: line 2, field 'ContextTokens'" in str(err.value)


def test_fast_and_line_paths_agree_on_mixed_timestamp_styles(tmp_path):
    from harness.traces import azure

    path = _write(tmp_path, "mix.csv", AZURE_2024 + "2024-05-10 00:00:03.1234567,513,1\n")
    fast = azure._read_vectorised(path)
    slow, _ = azure._read_lines(path, skip_bad=False)
    assert fast is not None
    assert fast.arrival_s == pytest.approx([0.0, 0.99007, 1.49007, 2.24007, 3.1135267], abs=1e-9)
    assert np.abs(fast.arrival_s - slow.arrival_s).max() < 1e-9
