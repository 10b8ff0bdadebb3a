"""The documentation site builds without a warning (mkdocs --strict: every page in the nav,
every link and anchor resolves, the API reference renders from the docstrings), and what
the "coming from Bytewax / Flink" page says malstrom does, it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from malstrom import Record, SingleThreadRuntime, StreamProvider
from malstrom.sinks import ListSink
from malstrom.testing import TimedSource
from malstrom.windows import Collect, Count, Session, Tumbling, WindowResult

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    api = (tmp_path / "site" / "reference" / "core" / "index.html").read_text()
    assert 'id="malstrom.Stream.key_distribute"' in api  # rendered from the docstrings
    assert (tmp_path / "site" / "deployment" / "index.html").exists()


def run(values: list[tuple[Any, Any]], wire: Any) -> tuple[list[Record], list[Record]]:
    out, late = ListSink(), ListSink()

    def build(p: StreamProvider) -> None:
        s = p.new_stream().source("src", TimedSource(values))
        a, b = wire(s.key_distribute("key", lambda v: "k"))
        a.sink("out", out)
        b.sink("late", late)

    SingleThreadRuntime(build).execute()
    return out.records, late.records


def test_a_second_record_at_the_max_timestamp_is_late_with_bound_zero() -> None:
    on_time, late = run(
        [("a", 3), ("b", 3), ("c", 4)], lambda s: s.limit_out_of_orderness("epochs", 0)
    )
    assert [r.value for r in on_time] == ["a", "c"]
    assert [r.value for r in late] == ["b"]


def test_sessions_that_only_touch_do_not_merge() -> None:
    def wire(s: Any) -> Any:
        on_time, _ = s.limit_out_of_orderness("epochs", 0)
        return on_time.window("sessions", Session(5), Collect())

    out, _ = run([("a", 0), ("b", 5)], wire)
    assert [r.value for r in out] == [WindowResult(0, 5, ["a"]), WindowResult(5, 10, ["b"])]


def test_a_window_result_is_stamped_with_its_end_and_lands_in_the_next_window() -> None:
    def wire(s: Any) -> Any:
        on_time, _ = s.limit_out_of_orderness("epochs", 0)
        tens, _ = on_time.window("tens", Tumbling(10), Count())
        return tens, tens.window("again", Tumbling(10), Collect())[0]

    out, cascaded = run([("a", 1), ("b", 12)], wire)
    assert [(r.value, r.timestamp) for r in out] == [
        (WindowResult(0, 10, 1), 10),
        (WindowResult(10, 20, 1), 20),
    ]
    assert [r.value.start for r in cascaded] == [10, 20]


def test_custom_io_guide_code_runs() -> None:
    """The guide's code blocks, run in order in one namespace (they assert their output)."""
    text = (ROOT / "docs" / "guides" / "custom-io.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 4
    namespace: dict[str, Any] = {"__name__": "custom_io_guide"}
    exec(compile("\n".join(blocks), "custom-io.md", "exec"), namespace)
    assert namespace["target"].published


def test_the_timer_example_in_concepts_runs() -> None:
    """The keyed-timer example of docs/concepts.md closes each auction at its end with its
    best bid."""
    from malstrom import SingleThreadRuntime, StatefulLogic
    from malstrom.sinks import ListSink
    from malstrom.testing import TimedSource

    text = (ROOT / "docs" / "concepts.md").read_text()
    (block,) = [b.split("```", 1)[0] for b in text.split("```python\n")[1:] if "on_timer" in b]
    namespace: dict[str, Any] = {"StatefulLogic": StatefulLogic}
    exec(compile(block, "concepts.md", "exec"), namespace)
    events = [
        ({"auction": 1, "expires": 10}, 0),
        ({"auction": 1, "price": 5}, 3),
        ({"auction": 2, "expires": 20}, 4),
        ({"auction": 1, "price": 7}, 8),
        ({"auction": 2, "price": 1}, 9),
        ({"auction": 9, "expires": 99}, 30),
    ]
    out = ListSink()

    def build(p: StreamProvider) -> None:
        (
            p.new_stream()
            .source("events", TimedSource(events))
            .limit_out_of_orderness("time", 0)[0]
            .key_distribute("by-auction", lambda e: e["auction"])
            .stateful_op("close", namespace["CloseAuction"]())
            .sink("out", out)
        )

    SingleThreadRuntime(build).execute()
    assert [(r.key, r.value, r.timestamp) for r in out.records] == [
        (1, 7, 10),
        (2, 1, 20),
        (9, None, 99),
    ]
