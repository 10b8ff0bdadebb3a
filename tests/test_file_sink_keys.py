"""FileSink with one file per key: any key maps to a safe, distinct file name inside the
output directory (never ``..``, ``/``, an absolute path, NUL or a name too long)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from malstrom import SingleThreadRuntime
from malstrom.sinks import FileSink
from malstrom.sources import IterSource

HOSTILE = [
    "../../victim",
    "../victim",
    "..",
    ".",
    "",
    ".hidden",
    "a/b",
    "a_b",
    "a%2Fb",
    "a\\b",
    "a\x00b",
    "tab\there",
    "new\nline",
    " spaced ",
    "ünï€ødé/🙂",
    "x" * 1_000,
    "x" * 999,
    "%",
    "~",
    "A",
    "a",
    7,
    (1, "/etc"),
]


def test_hostile_keys_stay_inside_the_directory_one_file_each(tmp_path: Path) -> None:
    out = tmp_path / "out" / "deeper"
    victim = tmp_path / "out" / "victim.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("precious\n")
    absolute = tmp_path / "abs-victim"
    absolute.write_text("precious too\n")
    keys: list[Any] = [*HOSTILE, str(absolute), str(tmp_path / "out" / "victim")]
    records = [(k, f"value {i}") for i, k in enumerate(keys)] * 3

    def build(provider: Any) -> None:
        (
            provider.new_stream()
            .source("records", IterSource(records))
            .key_distribute("by-key", lambda r: r[0])
            .sink("files", FileSink(out, fmt=lambda r: r.value[1], per_key=True))
        )

    SingleThreadRuntime(build).execute()
    assert victim.read_text() == "precious\n"
    assert absolute.read_text() == "precious too\n"
    entries = sorted(os.listdir(out))
    assert ".malstrom-fence" in entries
    files = [e for e in entries if e != ".malstrom-fence"]
    assert all((out / e).is_file() for e in files)  # no subdirectories
    assert len(files) == len({str(k) for k in keys})  # distinct keys never share a file
    for i, k in enumerate(keys):
        name = FileSink.file_name(k)
        assert len(name.encode()) <= 255 and not name.startswith(".")
        assert (out / name).read_text().splitlines() == [f"value {i}"] * 3
        text = FileSink.key_text(name)
        assert text == str(k) or (text is None and len(str(k)) > 100)


def test_plain_keys_keep_their_names() -> None:
    assert FileSink.file_name(3) == "3.txt"
    assert FileSink.file_name("user-42_a.b") == "user-42_a.b.txt"
    assert FileSink.key_text("3.txt") == "3"
    assert FileSink.key_text("%ZZ.txt") is None  # not a name FileSink makes


@given(st.text())
def test_names_are_safe_and_reversible(text: str) -> None:
    name = FileSink.file_name(text)
    stem = name[: -len(".txt")]
    assert "/" not in name and "\x00" not in name and "\\" not in name
    assert stem not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 255
    back = FileSink.key_text(name)
    assert back == text or (back is None and "~" in stem)


@given(st.text(), st.text())
def test_distinct_texts_get_distinct_names(a: str, b: str) -> None:
    if a != b:
        assert FileSink.file_name(a) != FileSink.file_name(b)
