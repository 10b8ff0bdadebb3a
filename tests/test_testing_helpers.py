"""The public test helpers, and that the README's first example runs as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from malstrom import MAX
from malstrom.testing import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_run_pipeline_returns_records() -> None:
    out = run_pipeline([1, 2, 3], lambda s: s.map("double", lambda x: x * 2))
    assert [r.value for r in out] == [2, 4, 6]
    assert [r.timestamp for r in out] == [0, 1, 2]


def test_run_pipeline_with_keyed_state() -> None:
    out = run_pipeline(
        "abcab",
        lambda s: s.key_distribute("k", lambda c: c).stateful_map(
            "n", lambda k, v, n: (f"{k}{n + 1}", n + 1), initial=int
        ),
    )
    assert [r.value for r in out] == ["a1", "b1", "c1", "a2", "b2"]


def test_readme_first_example_prints_documented_records(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## A first job\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    script = tmp_path / "first_job.py"
    script.write_text(code.group(1))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out == [
        "Record(key=NoKey, value='LOOK', timestamp=0)",
        'Record(key=NoKey, value="MA\'", timestamp=1)',
        'Record(key=NoKey, value="I\'M", timestamp=2)',
        "Record(key=NoKey, value='STREAMING', timestamp=3)",
    ]


def test_readme_local_cluster_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Testing your dataflows\n\n.*?```python\n(.*?)```", readme, re.S)
    assert code is not None
    exec(compile(code.group(1), "README.md", "exec"), {})  # its asserts check the counts


def test_max_is_importable_from_top_level() -> None:
    assert MAX > 10**100


def test_sink_batch_receives_a_lazy_record_batch() -> None:
    from malstrom import Record, SingleThreadRuntime
    from malstrom.sinks import RecordBatch, StatelessSink
    from malstrom.sources import IterSource

    seen: list[RecordBatch] = []

    class Columns:
        def sink_batch(self, records: RecordBatch) -> None:
            assert isinstance(records, RecordBatch)
            seen.append(records)

    def build(provider: object) -> None:
        provider.new_stream().source("s", IterSource("abc")).sink("cols", StatelessSink(Columns()))  # type: ignore[attr-defined]

    SingleThreadRuntime(build).execute()
    (batch,) = seen
    assert len(batch) == 3
    assert list(batch.values) == ["a", "b", "c"]
    assert batch[1] == Record(batch.keys[1], "b", 1)
    assert batch[-1].value == "c"
    assert [r.value for r in batch[0:2]] == ["a", "b"]
    assert list(batch) == [Record(k, v, t) for k, v, t in zip(batch.keys, "abc", range(3))]
