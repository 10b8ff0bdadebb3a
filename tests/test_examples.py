"""The examples in ``examples/`` run as real scripts and print their documented output."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from itertools import accumulate
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

PORTED = [
    "basic_noop",
    "basic_operators",
    "cloned_streams",
    "custom_stateful_operator",
    "custom_stateless_operator",
    "event_time",
    "event_time_out_of_order",
    "file_sink_stateful",
    "file_sink_stateless",
    "file_source_stateful",
    "file_source_stateless",
    "joining_streams",
    "keyed_streams",
    "look_ma_im_streaming",
    "multithreading",
    "persistence_backend",
    "persistence_backend_failing",
    "rescaling",
    "split_streams",
    "stateful_program_multiple_keys",
    "stateful_programs",
    "ttl_map_example",
]


def run(name: str, *args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def lines(name: str, *args: str | Path) -> list[str]:
    return run(name, *args).stdout.splitlines()


def rec(key: str, value: object, ts: object) -> str:
    return f"Record(key={key}, value={value!r}, timestamp={ts})"


def running(values: list[int]) -> list[int]:
    return list(accumulate(values))


# -- shape ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PORTED)
def test_example_has_docstring_build_and_main(name: str) -> None:
    tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
    assert ast.get_docstring(tree), f"{name}: module docstring missing"
    builds = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build"]
    assert builds and builds[0].args.args[0].arg == "provider"
    mains = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert mains, f"{name}: no `if __name__ == '__main__':` block"


# -- simple streams ----------------------------------------------------------------------------


def test_basic_noop_does_nothing() -> None:
    proc = run("basic_noop")
    assert proc.stdout == ""


def test_basic_operators_prints_every_second_number_to_200() -> None:
    assert lines("basic_operators") == [str(n) for n in range(0, 201, 2)]


def test_look_ma_im_streaming() -> None:
    assert lines("look_ma_im_streaming") == [
        "Record(key=NoKey, value='LOOK', timestamp=0)",
        'Record(key=NoKey, value="MA\'", timestamp=1)',
        'Record(key=NoKey, value="I\'M", timestamp=2)',
        "Record(key=NoKey, value='STREAMING', timestamp=3)",
    ]


def test_cloned_streams_print_every_record_twice() -> None:
    out = lines("cloned_streams")
    for sink in ("numbers-sink", "more-numbers-sink"):
        got = [line.split(": ", 1)[1] for line in out if line.startswith(f"{sink}: ")]
        assert got == [rec("NoKey", n, n) for n in range(101)]
    assert len(out) == 202


def test_split_streams_evens_to_both_odds_to_all() -> None:
    out = lines("split_streams")
    even = [line.split(": ", 1)[1] for line in out if line.startswith("even-sink: ")]
    every = [line.split(": ", 1)[1] for line in out if line.startswith("all-sink: ")]
    assert even == [rec("NoKey", n, n) for n in range(0, 101, 2)]
    assert every == [rec("NoKey", n, n) for n in range(101)]
    assert len(out) == len(even) + len(every)


def test_joining_streams_prints_each_number_twice() -> None:
    out = lines("joining_streams")
    assert Counter(out) == Counter({rec("NoKey", n, n): 2 for n in range(101)})


# -- custom operators ----------------------------------------------------------------------------


def test_custom_stateless_operator_flattens_to_1_through_10() -> None:
    stamps = [0] * 4 + [1] * 3 + [2] * 3
    assert lines("custom_stateless_operator") == [
        rec("NoKey", v, t) for v, t in zip(range(1, 11), stamps, strict=True)
    ]


def test_custom_stateful_operator_batches_of_five_and_rest_at_max() -> None:
    want = [rec("'all'", list(range(i, i + 5)), i + 4) for i in range(0, 100, 5)]
    want.append(rec("'all'", [100], "MAX"))
    assert lines("custom_stateful_operator") == want


# -- keyed state ---------------------------------------------------------------------------------


def test_stateful_programs_running_sum_ends_at_5050() -> None:
    out = lines("stateful_programs")
    assert out == [str(s) for s in running(list(range(101)))]
    assert out[-1] == "5050"


def test_stateful_program_multiple_keys_sums_evens_and_odds() -> None:
    out = lines("stateful_program_multiple_keys")
    evens, odds = list(range(0, 101, 2)), list(range(1, 101, 2))
    even_sums = iter(running(evens))
    odd_sums = iter(running(odds))
    want = [
        rec("'even'", next(even_sums), n) if n % 2 == 0 else rec("'odd'", next(odd_sums), n)
        for n in range(101)
    ]
    assert out == want
    assert [line for line in out if "'even'" in line][-1].startswith(
        "Record(key='even', value=2550,"
    )
    assert [line for line in out if "'odd'" in line][-1].startswith("Record(key='odd', value=2500,")


def test_keyed_streams_keys_by_parity() -> None:
    """Two worker processes: each key on the worker the partitioner picks, every record once."""
    from malstrom import rendezvous_select

    out = lines("keyed_streams")
    expected = {
        f"{rec(repr(parity), n, n)} @ Worker {rendezvous_select(parity, [0, 1])}"
        for n in range(101)
        for parity in ["even" if n % 2 == 0 else "odd"]
    }
    assert len(out) == 101 and set(out) == expected


def test_multithreading_doubles_values_on_four_workers() -> None:
    from malstrom import rendezvous_select

    out = lines("multithreading")
    expected = {f"{2 * n} @ Worker {rendezvous_select(n, [0, 1, 2, 3])}" for n in range(101)}
    assert len(out) == 101 and set(out) == expected
    assert len({line.rsplit(" ", 1)[1] for line in out}) > 1  # spread over several workers


def test_rescaling_sums_per_parity() -> None:
    """Rescaled 2 -> 3 -> 1 -> 2 while running: every running sum exactly once, in order."""
    out = lines("rescaling")
    assert len(out) == 3 * 101
    sums: dict[str, list[int]] = {"even": [], "odd": []}
    for line in out:
        m = re.fullmatch(r"(even|odd) sum (\d+) @ Worker \d", line)
        assert m, line
        sums[m[1]].append(int(m[2]))
    values = list(range(101)) * 3
    assert sums["even"] == list(accumulate(v for v in values if v % 2 == 0))
    assert sums["odd"] == list(accumulate(v for v in values if v % 2 == 1))


def test_ttl_map_example() -> None:
    out = lines("ttl_map_example")
    sep = out.index("=== Sliding Window Example ===")
    assert out[0] == "=== Running Total Example ==="
    totals = out[1 : sep - 1]
    evens, odds = iter(running(list(range(0, 100, 2)))), iter(running(list(range(1, 100, 2))))
    assert totals == [
        rec("'even'", next(evens), n) if n % 2 == 0 else rec("'odd'", next(odds), n)
        for n in range(100)
    ]
    assert out[sep + 1 :] == [
        rec("0", w, t)
        for t, w in enumerate(["foo", "foo|bar", "bar|hello", "hello|world", "world|baz"])
    ]


# -- event time ----------------------------------------------------------------------------------


def test_event_time_monthly_balances() -> None:
    assert lines("event_time") == [
        "(2025,1) 830.0 @2025-01-31",
        "(2025,2) -165.0 @2025-02-28",
        "(2025,3) 145.0 @2025-03-31",
        "(2025,4) -15.0 @MAX",
    ]


def test_event_time_out_of_order_same_balances() -> None:
    # The epoch trails the newest date (2025-04-21) by 62 days, reaching 2025-02-18: only
    # January is complete before the end of the stream, the other months close at MAX.
    assert lines("event_time_out_of_order") == [
        "(2025,1) 830.0 @2025-01-31",
        "(2025,2) -165.0 @MAX",
        "(2025,3) 145.0 @MAX",
        "(2025,4) -15.0 @MAX",
    ]


# -- files ---------------------------------------------------------------------------------------


def test_file_sink_stateless_writes_one_file_per_key_and_reruns(tmp_path: Path) -> None:
    for _ in range(2):  # re-runnable: the second run rewrites the same files
        out = lines("file_sink_stateless", tmp_path)
        assert out == [f"{k}.txt: ['{k}']" for k in range(5)]
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{k}.txt" for k in range(5)]
        for k in range(5):
            assert (tmp_path / f"{k}.txt").read_text() == f"{k}\n"


def test_file_sink_stateful_numbered_lines_and_reruns(tmp_path: Path) -> None:
    want = {k: [f"{i} {k + 5 * i}" for i in range(10)] for k in range(5)}
    for _ in range(2):
        out = lines("file_sink_stateful", tmp_path)
        assert out == [f"{k}.txt: {want[k]!r}" for k in range(5)]
        for k in range(5):
            assert (tmp_path / f"{k}.txt").read_text().splitlines() == want[k]


SOURCE_LINES = [
    "first.txt:0: Look",
    "first.txt:1: ma'",
    "first.txt:2: I'm",
    "first.txt:3: streaming",
    "second.txt:0: from",
    "second.txt:1: two",
    "second.txt:2: files",
]


@pytest.mark.parametrize("name", ["file_source_stateless", "file_source_stateful"])
def test_file_sources_create_their_input_and_read_it(name: str, tmp_path: Path) -> None:
    assert lines(name, tmp_path) == SOURCE_LINES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt", "second.txt"]
    (tmp_path / "second.txt").write_text("edited\n")  # existing input is used as it is
    assert lines(name, tmp_path) == [*SOURCE_LINES[:4], "second.txt:0: edited"]


# -- persistence ---------------------------------------------------------------------------------


def test_persistence_backend_completes_then_resumes_complete(tmp_path: Path) -> None:
    first = lines("persistence_backend", tmp_path)
    records = [line for line in first if line.startswith("Record(")]
    assert len(records) == 101
    assert records[-2:] == [rec("'odd'", 2500, 99), rec("'even'", 2550, 100)]
    assert first[-1].startswith("completed; snapshots are in")
    again = lines("persistence_backend", tmp_path)
    assert len(again) == 1 and again[0].startswith("resumed from snapshot version")


TOTAL = sum(range(2000))
FINAL = f"final: count=2000 total={TOTAL}"


def check_resumed_output(out: list[str]) -> None:
    built = [line for line in out if line.startswith("source part 'numbers' built with state")]
    assert built[-1] != "source part 'numbers' built with state None"  # resumed, not fresh
    resumed_at = int(built[-1].rsplit(" ", 1)[1])
    assert 0 < resumed_at <= 1000  # a snapshot committed before the failure at record 1000
    assert [line for line in out if line.startswith("final:")] == [FINAL]
    for line in out:
        if line.startswith("progress:"):
            m = re.fullmatch(r"progress: count=(\d+) total=(\d+)", line)
            assert m and int(m[2]) == sum(range(int(m[1]))), line


def test_persistence_backend_failing_restarts_in_process_exactly_once(tmp_path: Path) -> None:
    out = lines("persistence_backend_failing", tmp_path)
    assert len([line for line in out if line.startswith("job failed")]) == 1
    assert "injected failure" in next(line for line in out if line.startswith("job failed"))
    check_resumed_output(out)
    assert out[-1] == f"expected: count=2000 total={TOTAL}"


def test_persistence_backend_failing_crash_then_second_process_resumes(tmp_path: Path) -> None:
    crashed = run("persistence_backend_failing", tmp_path, "--no-restart", ok=False)
    assert crashed.returncode != 0
    assert "injected failure after 1000 records" in crashed.stderr
    assert not any(line.startswith("final:") for line in crashed.stdout.splitlines())
    out = lines("persistence_backend_failing", tmp_path, "--no-restart")
    assert not any(line.startswith("job failed") for line in out)
    check_resumed_output(out)


def test_kafka_wordcount_is_exactly_once_on_two_workers() -> None:
    """Kafka in (a mock cluster the example starts), 10 s event-time windows, Kafka out."""
    pytest.importorskip("confluent_kafka")
    import importlib.util

    path = EXAMPLES / "kafka_wordcount.py"
    spec = importlib.util.spec_from_file_location("kafka_wordcount", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    counts: Counter[tuple[int, str]] = Counter()
    for second, sentence in example.SENTENCES:
        for word in sentence.split():
            counts[(second // 10 * 10, word)] += 1
    expected = [f"[{s}s, {s + 10}s) {w}: {n}" for (s, w), n in sorted(counts.items())]
    assert lines("kafka_wordcount") == expected


@pytest.mark.usefixtures("ctrl_c_reaches_children")
def test_events_runs_on_the_command_line_until_ctrl_c(tmp_path: Path) -> None:
    """The README's command line example: `malstrom run examples/events.py:build ...` runs
    until Ctrl-C, which stops it with a snapshot; a second run starts from there."""
    import os
    import signal
    import time

    from malstrom.snapshot import LocalDiskPersistence

    snap = tmp_path / "snap"
    cmd = [sys.executable, "-m", "malstrom.cli", "run", "examples/events.py:build", "-w", "2"]
    cmd += ["--persistence", str(snap), "--snapshot-interval", "0.5"]
    versions = []
    for _ in range(2):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        start = LocalDiskPersistence(snap).last_committed()
        while LocalDiskPersistence(snap).last_committed() in (None, start):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: stop with a final snapshot
        _, err = proc.communicate(timeout=90)
        assert proc.returncode in (0, 130), err
        versions.append(LocalDiskPersistence(snap).last_committed())
    assert versions[1] > versions[0]
