"""FileSink: records appended to a file (or one file per key) in a text format; exactly once.

**Exactly once.** A part snapshots its file's length; restoring cuts the file back to that
length before writing resumes, so after any crash and restart the file holds every record
once. A part no snapshot covers (a fresh start) starts with an empty file.

**Fencing.** A worker of a failed job attempt may still hold a part and write to it (a worker
that was paused, or slow to notice the failure). Every write, cut and flush of a part runs
under an exclusive lock (``flock``) on the sink's *fence file*, which holds the id of the
newest attempt that used the sink's files: a part of an older attempt is refused there
(:class:`~malstrom.errors.AttemptFenced`) and its output never reaches the file; a newer one
takes the fence over. The fence file sits next to the output: ``.<name>.malstrom-fence`` for a
single file, ``.malstrom-fence`` in the directory of per-key files. Parts buffer their lines
in memory, encoded by the format, and write them at snapshots (and every 16 KiB); an aborted
part drops its buffer.

**Per-key file names.** A key's file is ``<encoded str(key)><suffix>`` (``.txt``, ``.csv``,
``.jsonl`` by format): letters, digits, ``_``,
``-`` and ``.`` stay as they are (except a leading ``.``); every other byte of the key's
UTF-8 text is written ``%XX``, and the empty text is ``%``. So a key never names a path
outside the directory (``../x``, ``/etc/x``, NUL), names are reversible
(:meth:`FileSink.key_text`) and distinct texts never share a file. Keys whose texts are
equal share one (``1`` and ``"1"``), and on a case-insensitive file system keys that differ
only in case do. A name longer than 200 bytes is cut and ends with ``~`` and a hash of the
whole text (not reversible).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Hashable, Iterator
from typing import Any

from malstrom.errors import AttemptFenced
from malstrom.formats import Format, Lines
from malstrom.sinks._protocols import RecordBatch, StatefulSink
from malstrom.types import Record

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no fencing
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileSink"]

_FLUSH_BYTES = 16 * 1024  # a part writes its buffered lines once they reach this size
_LOCK_WAIT = 5.0  # seconds to wait for the fence lock before giving up
_MAX_NAME = 200  # bytes of an encoded key in a file name (file systems allow 255)
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def encode_key(text: str) -> str:
    """The file name stem of a key whose ``str`` is ``text`` (see the module docs)."""
    if not text:
        return "%"
    raw = text.encode("utf-8", "surrogatepass")
    parts = []
    for i, b in enumerate(raw):
        if b in _SAFE and not (i == 0 and b == 0x2E):  # no leading "." (".", "..", hidden)
            parts.append(chr(b))
        else:
            parts.append(f"%{b:02X}")
    name = "".join(parts)
    if len(name) <= _MAX_NAME:
        return name
    cut = name[: _MAX_NAME - 40]
    if "%" in cut[-2:]:  # do not end inside an escape
        cut = cut[: cut.rindex("%")]
    return f"{cut}~{hashlib.sha256(raw).hexdigest()[:32]}"


def decode_key(stem: str) -> str | None:
    """The key text :func:`encode_key` made ``stem`` from; None if it was cut (hashed)."""
    if stem == "%":
        return ""
    if "~" in stem:
        return None
    out = bytearray()
    i = 0
    try:
        while i < len(stem):
            c = stem[i]
            if c == "%":
                out.append(int(stem[i + 1 : i + 3], 16))
                i += 3
            else:
                out.extend(c.encode())
                i += 1
        return out.decode("utf-8", "surrogatepass")
    except ValueError:  # not a name encode_key makes
        return None


class _Fence:
    """The sink's fence file: an exclusive lock, and the newest attempt that used the files."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            d = os.path.dirname(self.path)
            if d:
                os.makedirs(d, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    @contextlib.contextmanager
    def hold(self, attempt: int, what: str) -> Iterator[None]:
        """Lock the fence, refuse ``attempt`` if a newer one used the files, else take the
        fence over; run the body (the write) under the lock."""
        if fcntl is None:  # pragma: no cover - not POSIX
            yield
            return
        fd = self._open()
        deadline = time.monotonic() + _LOCK_WAIT
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"FileSink: {self.path} stayed locked for {_LOCK_WAIT:g} s: another "
                        "process holds it (a stalled worker of an earlier attempt?)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            raw = os.pread(fd, 64, 0)
            try:
                newest = int(raw.decode().strip() or 0)
            except ValueError:
                newest = 0  # not ours: overwritten below
            if newest > attempt:
                raise AttemptFenced(
                    f"FileSink: refusing to {what}: attempt {newest} of the job has used these "
                    f"files since this worker's attempt {attempt}, which is over"
                )
            if newest < attempt:
                data = b"%d\n" % attempt
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _FilePart:
    def __init__(
        self,
        path: str,
        state: object | None,
        value: Any,
        format: Format,
        fence: _Fence,
        attempt: int,
    ) -> None:
        self._fd: int | None = None
        self._value = value
        self._path = path
        self._fence = fence
        self._attempt = attempt
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        want = 0 if state is None else int(state)  # type: ignore[call-overload]
        with fence.hold(attempt, f"restore {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size < want:
                    raise RuntimeError(
                        f"FileSink: {path} holds {size} bytes but the snapshot being restored "
                        f"recorded {want}: the file was cut or replaced outside the job"
                    )
                # Restore: drop what was written after the snapshot we resume from, so every
                # record appears exactly once however often the job restarts. No snapshot
                # holds this part: nothing in the file is committed output of this job (e.g.
                # a run that crashed before its first snapshot), so start it empty.
                os.ftruncate(fd, want)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        self._pos = want
        self._synced = False
        # The format encodes into memory; _write moves the bytes to the file under the fence.
        self._pending = io.BytesIO()
        self._writer = format._writer(self._pending, path, want > 0)

    def sink(self, record: Record) -> None:
        self._writer.write([self._value(record)])
        if self._pending.tell() >= _FLUSH_BYTES:
            self._write()

    def sink_batch(self, records: RecordBatch) -> None:
        value = self._value
        self._writer.write(records.values if value is _value else list(map(value, records)))
        if self._pending.tell() >= _FLUSH_BYTES:
            self._write()

    def _write(self) -> None:
        pending = self._pending
        if not pending.tell():
            return
        data = pending.getvalue()
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"FileSink: part {self._path} is closed")
        with self._fence.hold(self._attempt, f"write to {self._path}"):
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        pending.seek(0)
        pending.truncate()
        self._pos += len(data)
        self._synced = False

    def snapshot(self) -> object:
        self._write()
        if self._fd is not None and not self._synced:
            os.fsync(self._fd)
            self._synced = True
        return self._pos

    def collect(self) -> object:
        pos = self.snapshot()
        self._close()
        return pos

    def abort(self) -> None:
        """Drop the buffered records unwritten and close the file (the attempt is over)."""
        self._pending = io.BytesIO()
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self._close()  # never writes: buffered records of a dropped part are not output


def _value(record: Record) -> Any:
    return record.value


class FileSink(StatefulSink):
    """Writes the records to a file, one after the other, exactly-once.

    ``format`` says how (:mod:`malstrom.formats`): by default one line per record,
    ``str(value)``; ``Csv()`` (a header row first, then one row per dict or sequence) and
    ``JsonLines()`` also append. ``fmt(record)`` gives what is written for a record (default:
    its value). With ``per_key=True`` each key gets its own file ``<path>/<name><suffix>``
    (``name`` encodes ``str(key)`` so that it stays inside the directory: :meth:`file_name`;
    the suffix is the format's, ``.txt``, ``.csv``, ``.jsonl``); otherwise all records go to
    the single file ``path``.

    The file's length is snapshotted; on restore the file is cut back to that length before
    writing resumes, so after any crash and restart the file holds every record exactly once.
    A part not covered by a snapshot (a fresh start) starts with an empty file. Writes of a
    worker whose job attempt is over are refused (the hidden ``.malstrom-fence`` file next to
    the output records the newest attempt). Readers of the file may see records that a crash
    later takes back: for output published only once its snapshot commits (and for Parquet),
    use :class:`~malstrom.sinks.DirectorySink`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: Any = None,
        per_key: bool = False,
        *,
        format: Format | None = None,
    ) -> None:
        super().__init__(self)
        self._path = os.fspath(path)
        self._format = format if format is not None else Lines()
        if not isinstance(self._format, Format):
            raise TypeError(f"FileSink: format must be a malstrom.formats format, got {format!r}")
        if not self._format.appendable:
            raise ValueError(
                f"FileSink appends to a file and cuts it back on restore, which {self._format!r} "
                "files do not allow: use DirectorySink, which writes a new part file per snapshot"
            )
        self._fmt = fmt or _value
        self._per_key = per_key
        self._attempt = 0
        if per_key:
            fence = os.path.join(self._path, ".malstrom-fence")
        else:
            head, tail = os.path.split(self._path)
            fence = os.path.join(head, f".{tail}.malstrom-fence")
        self._fence = _Fence(fence)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fence"] = _Fence(self._fence.path)  # never an open file descriptor
        return state

    @staticmethod
    def file_name(key: Any, suffix: str = ".txt") -> str:
        """The name of the file that records with ``key`` go to (``per_key=True``; ``suffix``
        is the format's)."""
        return f"{encode_key(str(key))}{suffix}"

    @staticmethod
    def key_text(file_name: str, suffix: str = ".txt") -> str | None:
        """The ``str`` of the key a per-key file holds, from its name (``3.txt`` -> ``"3"``);
        None for the names of very long keys, which are cut and hashed."""
        stem = file_name.removesuffix(suffix) if suffix else file_name
        return decode_key(stem)

    def begin_attempt(self, attempt: int) -> None:
        """Use job attempt ``attempt`` for the parts built from now on (fencing)."""
        self._attempt = attempt

    def assign_part(self, key: Any) -> Hashable:
        """The file a record with ``key`` goes to."""
        if self._per_key:
            return os.path.join(self._path, self.file_name(key, self._format.suffix))
        return self._path

    def build_part(self, part: Any, state: object | None) -> _FilePart:
        """Open the file, cut back to the snapshotted length (empty on a fresh start)."""
        return _FilePart(part, state, self._fmt, self._format, self._fence, self._attempt)
