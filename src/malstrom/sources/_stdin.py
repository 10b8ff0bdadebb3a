"""StdInSource: the lines of standard input, read by a background thread."""

from __future__ import annotations

import multiprocessing
import queue
import sys
import threading
from collections.abc import Hashable
from typing import Any, BinaryIO

from malstrom.sources._protocols import StatelessSource
from malstrom.types import NoKey

__all__ = ["StdInSource"]

_EOF = object()


class _StdInPart:
    """A reader thread moves chunks of lines into a bounded queue (so a slow job slows the
    reader instead of growing memory); the worker loop only ever takes what is there."""

    def __init__(self, stream: BinaryIO, encoding: str, max_chunks: int) -> None:
        self._q: queue.Queue[Any] = queue.Queue(max_chunks)
        self._encoding = encoding
        self._pending: list[bytes] = []
        self._pos = 0
        self._line = 0
        self._done = False
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name="malstrom-stdin", daemon=True
        )
        self._thread.start()

    def _read(self, stream: BinaryIO) -> None:
        put = self._q.put
        try:
            read1 = getattr(stream, "read1", None)
            if read1 is None:
                for line in iter(stream.readline, b""):
                    put([line])
                return
            tail = b""
            while chunk := read1(1 << 16):
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                if lines:
                    put(lines)
            if tail:
                put([tail])
        except BaseException as e:
            put(e)
        finally:
            put(_EOF)

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        if self._done:
            return [], range(0)
        out: list[str] = []
        enc = self._encoding
        while len(out) < n:
            if self._pos >= len(self._pending):
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _EOF:
                    self._done = True
                    break
                if isinstance(item, BaseException):
                    self._done = True
                    raise OSError(f"reading stdin failed: {type(item).__name__}: {item}") from item
                self._pending, self._pos = item, 0
            take = self._pending[self._pos : self._pos + n - len(out)]
            self._pos += len(take)
            out.extend([b.decode(enc).removesuffix("\n").removesuffix("\r") for b in take])
        start = self._line
        self._line += len(out)
        return out, range(start, self._line)

    def poll(self) -> tuple[Any, Any] | None:
        values, stamps = self._poll_columns(1)
        return (values[0], stamps[0]) if values else None

    def is_finished(self) -> bool:
        return self._done


class StdInSource(StatelessSource):
    """The lines of standard input (without line endings), one part keyed ``NoKey``;
    timestamps are line numbers (0-based) in this run. The stream ends at end of input.

    A background thread reads, so the worker loop never waits for input. Delivery: standard
    input cannot be read twice, so this source is stateless: every line read becomes a record
    once, but lines read after the last committed snapshot are lost if the job fails (it
    resumes with whatever input comes next), i.e. at-most-once across failures. Put it in
    front of a durable log (a file, Kafka) when every line must count.

    It reads the standard input of the process its part runs in: use it with
    :class:`~malstrom.SingleThreadRuntime` (or a ``malstrom worker`` whose stdin you feed);
    worker processes of ``MultiProcessRuntime`` have no standard input. ``stream`` reads
    another binary stream instead (e.g. a pipe). At most ``buffer_chunks`` chunks of lines
    (up to 64 KiB each) wait between the reader thread and the job.
    """

    def __init__(
        self, encoding: str = "utf-8", *, stream: BinaryIO | None = None, buffer_chunks: int = 64
    ) -> None:
        super().__init__(self)
        self._encoding = encoding
        self._stream = stream
        self._buffer_chunks = buffer_chunks

    def list_parts(self) -> list[Hashable]:
        """The single part, ``NoKey``."""
        return [NoKey]

    def build_part(self, part: Any) -> _StdInPart:
        """Start the reader thread on this process's standard input (or ``stream``)."""
        stream = self._stream
        if stream is None:
            if multiprocessing.parent_process() is not None:
                raise RuntimeError(
                    "StdInSource reads the standard input of its process, and this worker "
                    "process (of MultiProcessRuntime) has none: use SingleThreadRuntime"
                )
            stdin = sys.stdin
            if stdin is None:
                raise RuntimeError("StdInSource: this process has no standard input")
            stream = stdin.buffer
        return _StdInPart(stream, self._encoding, self._buffer_chunks)

    def __repr__(self) -> str:
        return "StdInSource()"
