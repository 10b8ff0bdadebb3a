"""File formats (Lines, Csv, JsonLines, Parquet) for FileSource and FileSink: records, headers,
typed columns, exact resume from any snapshotted position, clear errors."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from job_errors import job_fails_with

from malstrom import OperatorError, SingleThreadRuntime
from malstrom.formats import Csv, Format, JsonLines, Lines, Parquet
from malstrom.sinks import FileSink, ListSink
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import FileSource, IterSource

CSV = 'id,name,amount\n1,apple,1.5\n2,"pear, green",2\n\n3,"multi\nline",3.25\n4,x,0\n'


def read_all(fmt: Format, path: Path, state: Any = None, n: int = 3) -> tuple[list[Any], Any]:
    r = fmt._reader(str(path), state)
    out: list[Any] = []
    while not r.is_finished():
        values, _ = r._poll_columns(n)
        out += values
    return out, r.snapshot()


def job_values(source: Any) -> list[Any]:
    sink = ListSink()
    SingleThreadRuntime(lambda p: p.new_stream().source("f", source).sink("out", sink)).execute()
    return sink.values


def test_csv_header_is_not_a_record_and_types_convert(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(CSV)
    got = job_values(FileSource(f, format=Csv(types={"id": int, "amount": float})))
    assert got == [
        {"id": 1, "name": "apple", "amount": 1.5},
        {"id": 2, "name": "pear, green", "amount": 2.0},
        {"id": 3, "name": "multi\nline", "amount": 3.25},
        {"id": 4, "name": "x", "amount": 0.0},
    ]


def test_csv_without_header_gives_lists_or_named_dicts(tmp_path: Path) -> None:
    f = tmp_path / "a.tsv"
    f.write_text("1\ta\n2\tb\n")
    assert job_values(FileSource(f, format=Csv(header=False, delimiter="\t"))) == [
        ["1", "a"],
        ["2", "b"],
    ]
    fmt = Csv(header=False, delimiter="\t", columns=["n", "s"], types=[int, None])
    assert job_values(FileSource(f, format=fmt)) == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]


@pytest.mark.parametrize(
    ("text", "fmt", "want"),
    [
        ("a,b\n1,2\n3\n", Csv(), "row has 1 fields, expected 2"),
        ("a,b\n1,2\nx,2\n", Csv(types={"a": int}), "invalid literal for int()"),
        ('{"a": 1}\n{"a": \n', JsonLines(), "invalid JSON"),
    ],
)
def test_bad_input_names_the_file_and_position(
    tmp_path: Path, text: str, fmt: Format, want: str
) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with job_fails_with(OperatorError) as info:
        job_values(FileSource(f, format=fmt))
    msg = str(info.value)
    assert "'f'" in msg and str(f) in msg and "byte" in msg and want in msg


def test_json_lines_values_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text('{"a": [1, 2]}\n\n"text"\n3.5\nnull\n')
    assert job_values(FileSource(f, format=JsonLines())) == [{"a": [1, 2]}, "text", 3.5, None]


ROWS = [
    {
        "i": i,
        "f": i / 4,
        "s": f"s{i}" if i % 5 else None,
        "b": i % 2 == 0,
        "t": datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i),
        "d": Decimal(f"{i}.25"),
        "l": list(range(i % 3)),
    }
    for i in range(1000)
]


def write_parquet(path: Path) -> None:
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, path, row_group_size=128)  # several row groups


def test_parquet_reads_typed_columns(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    write_parquet(f)
    assert job_values(FileSource(f, format=Parquet())) == ROWS
    assert job_values(FileSource(f, format=Parquet(columns=["i", "t"])))[5] == {
        "i": 5,
        "t": datetime.datetime(2024, 1, 1, 0, 0, 5),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Format, Path]]:
    d = tmp_path_factory.mktemp("fmt")
    (d / "a.txt").write_text("".join(f"line {i}\n" for i in range(300)) + "last")
    (d / "a.csv").write_text("x,y\n" + "".join(f'{i},"v\n{i}"\n' for i in range(300)))
    (d / "a.jsonl").write_text("".join(json.dumps({"i": i}) + "\n\n" for i in range(300)))
    write_parquet(d / "a.parquet")
    return {
        "lines": (Lines(), d / "a.txt"),
        "csv": (Csv(), d / "a.csv"),
        "jsonl": (JsonLines(), d / "a.jsonl"),
        "parquet": (Parquet(batch_rows=100), d / "a.parquet"),
    }


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["lines", "csv", "jsonl", "parquet"]),
    stops=st.lists(st.integers(1, 400), min_size=1, max_size=4),
)
def test_resume_from_any_snapshot_continues_exactly(
    files: dict[str, tuple[Format, Path]], kind: str, stops: list[int]
) -> None:
    """Reading in pieces, rebuilding the reader from each piece's snapshot, gives exactly the
    records of one uninterrupted read (the restore path of a FileSource part)."""
    fmt, path = files[kind]
    want, _ = read_all(fmt, path, n=2048)
    got: list[Any] = []
    state: Any = None
    for stop in stops:
        r = fmt._reader(str(path), state)
        values, stamps = r._poll_columns(stop)
        assert list(stamps) == list(range(len(got), len(got) + len(values)))
        got += values
        state = r.snapshot()
        r.close()
    rest, _ = read_all(fmt, path, state)
    assert got + rest == want


def crash_then_resume(tmp_path: Path, sink: Any, values: list[Any]) -> None:
    """Run a job that fails after a few snapshots, then run it again to completion."""
    persistence = LocalDiskPersistence(tmp_path / "snap")
    fail = [True]

    def check(v: Any) -> Any:
        if fail[0] and v == values[len(values) * 2 // 3]:
            raise ValueError("crash")
        return v

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(values))
            .map("check", check)
            .map("slow", lambda v: v)
            .sink("out", sink)
        )

    # Small batches, so that snapshots land in the middle of the stream.
    import malstrom.operators.io as io

    old, io.BATCH_SIZE = io.BATCH_SIZE, 16
    try:
        with job_fails_with(OperatorError):
            SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.0005).execute()
        fail[0] = False
        rt = SingleThreadRuntime(build, persistence=persistence, snapshot_interval=0.0005)
        rt.execute()
        assert rt.restored_from is not None and rt.restored_from > 0  # resumed mid-stream
    finally:
        io.BATCH_SIZE = old


def test_csv_file_sink_writes_one_header_and_every_row_once_across_a_restore(
    tmp_path: Path,
) -> None:
    rows = [{"n": i, "sq": i * i, "s": f"a,{i}"} for i in range(3000)]
    out = tmp_path / "out.csv"
    crash_then_resume(tmp_path, FileSink(out, format=Csv()), rows)
    back, _ = read_all(Csv(types={"n": int, "sq": int}), out)
    assert back == rows
    assert out.read_text().count("n,sq,s\n") == 1


def test_json_lines_file_sink_per_key(tmp_path: Path) -> None:
    values = [{"k": i % 3, "v": [i]} for i in range(500)]

    def build(p: Any) -> None:
        (
            p.new_stream()
            .source("n", IterSource(values))
            .key_local("k", lambda v: v["k"])
            .sink("out", FileSink(tmp_path / "out", per_key=True, format=JsonLines()))
        )

    SingleThreadRuntime(build).execute()
    for k in range(3):
        got, _ = read_all(JsonLines(), tmp_path / "out" / f"{k}.jsonl")
        assert got == [v for v in values if v["k"] == k]


def test_csv_writer_errors_and_parquet_file_sink_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use DirectorySink"):
        FileSink(tmp_path / "x.parquet", format=Parquet())

    def fails(values: list[Any], fmt: Csv) -> str:
        def build(p: Any) -> None:
            sink = FileSink(tmp_path / "o", format=fmt)
            p.new_stream().source("n", IterSource(values)).sink("out", sink)

        with job_fails_with(OperatorError) as info:
            SingleThreadRuntime(build).execute()
        return str(info.value)

    assert "lacks column 'b'" in fails([{"a": 1, "b": 2}, {"a": 1, "c": 2}], Csv())
    assert "needs columns=" in fails([(1, 2)], Csv())
    assert "has 3 fields, expected 2" in fails([(1, 2), (1, 2, 3)], Csv(columns=["a", "b"]))


def test_existing_file_source_and_sink_signatures_still_work(tmp_path: Path) -> None:
    f = tmp_path / "in.txt"
    f.write_text("a\nb\n")
    out = tmp_path / "out.txt"

    def build(p: Any) -> None:
        p.new_stream().source("f", FileSource(str(f), "utf-8")).sink(
            "out", FileSink(out, lambda r: f"{r.key}:{r.value}")
        )

    SingleThreadRuntime(build).execute()
    assert out.read_text() == f"{f}:a\n{f}:b\n"
