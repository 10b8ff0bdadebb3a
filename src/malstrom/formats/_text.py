"""Text formats: Lines, Csv, JsonLines. A reader's state is ``(byte offset, records read)``,
so a restored part resumes exactly where its snapshot left it; files can be appended to and
cut back, which is what FileSink needs."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, BinaryIO

from malstrom.formats._base import FileReader, FileWriter, Format

__all__ = ["Csv", "JsonLines", "Lines"]


def _seek(f: BinaryIO, path: str, offset: int) -> None:
    """Resume ``f`` at ``offset``; a named pipe cannot go back to what it gave before."""
    if not f.seekable():
        f.close()
        raise ValueError(
            f"cannot resume {path!r} at byte {offset}: it is not seekable (a pipe?); what was "
            "read before the snapshot cannot be read again"
        )
    f.seek(offset)


class _TextReader:
    """What the text readers share: the open file, and the state ``(byte offset, records
    read)`` a restored part resumes from."""

    _f: BinaryIO | None
    _offset: int
    _index: int

    def _numbered(self, n: int) -> range:
        """Timestamps of the next ``n`` records (their numbers in the file)."""
        start = self._index
        self._index = start + n
        return range(start, self._index)

    def is_finished(self) -> bool:
        return self._f is None

    def lag(self) -> int | None:
        """Bytes of the file after what was read (None for a pipe: it cannot tell)."""
        f = self._f
        if f is None:
            return 0
        try:
            st = os.fstat(f.fileno())
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return max(0, st.st_size - self._offset)

    def snapshot(self) -> object:
        return (self._offset, self._index)

    def collect(self) -> object:
        self.close()
        return (self._offset, self._index)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class _LineReader(_TextReader):
    """One record per line; ``parse`` turns a line's text into a value (None: the text)."""

    def __init__(
        self,
        path: str,
        state: object | None,
        encoding: str,
        parse: Callable[[str], Any] | None,
        skip_blank: bool,
    ) -> None:
        offset, index = (0, 0) if state is None else tuple(state)  # type: ignore[arg-type]
        self._path = path
        self._f: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - lives as long as the part
        if offset:
            _seek(self._f, path, offset)
        self._offset = offset
        self._index = index
        self._encoding = encoding
        self._parse = parse
        self._skip_blank = skip_blank

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        f = self._f
        if f is None:
            return [], range(0)
        raws = list(islice(f, n))  # whole lines (the last one may lack its newline at EOF)
        if len(raws) < n:
            self.close()
        start = self._offset
        self._offset = start + sum(map(len, raws))
        # Lines end at b"\n", so a run of whole lines decodes as one piece.
        text = b"".join(raws).decode(self._encoding)
        lines = text.split("\n")
        if text.endswith("\n") or not text:
            lines.pop()
        if "\r" in text:
            lines = [line.removesuffix("\r") for line in lines]
        parse = self._parse
        if parse is None:
            values: list[Any] = lines
        else:
            values = []
            offset = start
            for raw, line in zip(raws, lines):
                if not (self._skip_blank and not line.strip()):
                    try:
                        values.append(parse(line))
                    except ValueError as e:
                        raise ValueError(f"{self._path}, byte {offset}: {e}") from e
                offset += len(raw)
        return values, self._numbered(len(values))


class _TextWriter:
    def __init__(self, f: BinaryIO, encode: Callable[[Sequence[Any]], str], encoding: str) -> None:
        self._f = f
        self._encode = encode
        self._encoding = encoding

    def write(self, values: Sequence[Any]) -> None:
        self._f.write(self._encode(values).encode(self._encoding))

    def finish(self) -> None:
        pass


class Lines(Format):
    """Plain text, one value per line: values read are the lines without their line ending;
    values written are ``str(value)``."""

    suffix = ".txt"

    def __init__(self, encoding: str = "utf-8") -> None:
        self.encoding = encoding

    def _reader(self, path: str, state: object | None) -> FileReader:
        return _LineReader(path, state, self.encoding, None, False)

    def _writer(self, f: BinaryIO, path: str, has_content: bool) -> FileWriter:
        return _TextWriter(f, lambda values: "".join([f"{v}\n" for v in values]), self.encoding)

    def __repr__(self) -> str:
        return "Lines()"


class JsonLines(Format):
    """JSON Lines: one JSON value per line (blank lines are skipped when reading).

    ``default`` is passed to :func:`json.dumps` for values it cannot encode (e.g.
    ``default=str`` writes datetimes as text).
    """

    suffix = ".jsonl"

    def __init__(
        self, encoding: str = "utf-8", default: Callable[[Any], Any] | None = None
    ) -> None:
        self.encoding = encoding
        self.default = default

    def _reader(self, path: str, state: object | None) -> FileReader:
        def parse(text: str) -> Any:
            try:
                return json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON: {e}") from None

        return _LineReader(path, state, self.encoding, parse, True)

    def _writer(self, f: BinaryIO, path: str, has_content: bool) -> FileWriter:
        dumps = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), default=self.default
        ).encode
        return _TextWriter(
            f, lambda values: "".join([dumps(v) + "\n" for v in values]), self.encoding
        )

    def __repr__(self) -> str:
        return "JsonLines()"


Converter = Callable[[str], Any]


class Csv(Format):
    """Comma-separated values (any :mod:`csv` dialect).

    Reading: with ``header=True`` (the default) the first row names the columns and is not a
    record; each record is a ``dict`` column -> value. Without a header, records are lists,
    or dicts if ``columns`` names them. ``types`` converts fields: a mapping column -> function
    (``{"amount": float}``) or a sequence with one function (or None) per column. A row whose
    number of fields differs from the columns is an error naming the file and byte offset.
    Blank lines are skipped.

    Writing: values are dicts (written in the order of ``columns``, else of the first dict's
    keys) or sequences (written as they are). With ``header=True`` a new file starts with the
    header row (dict values, or ``columns`` given).
    """

    suffix = ".csv"

    def __init__(
        self,
        *,
        header: bool = True,
        columns: Sequence[str] | None = None,
        types: Mapping[str, Converter] | Sequence[Converter | None] | None = None,
        delimiter: str = ",",
        encoding: str = "utf-8",
        **dialect: Any,
    ) -> None:
        self.header = header
        self.columns = list(columns) if columns is not None else None
        self.types = types
        self.encoding = encoding
        self.dialect: dict[str, Any] = {"delimiter": delimiter, **dialect}

    def _reader(self, path: str, state: object | None) -> FileReader:
        return _CsvReader(path, state, self)

    def _writer(self, f: BinaryIO, path: str, has_content: bool) -> FileWriter:
        return _CsvWriter(f, path, has_content, self)

    def __repr__(self) -> str:
        return f"Csv(header={self.header!r}, columns={self.columns!r})"


def _converters(
    types: Mapping[str, Converter] | Sequence[Converter | None] | None,
    columns: list[str] | None,
    path: str,
) -> list[Converter | None] | None:
    if types is None:
        return None
    if isinstance(types, Mapping):
        if columns is None:
            raise ValueError(f"{path}: Csv types by column name need a header or columns=")
        unknown = set(types) - set(columns)
        if unknown:
            raise ValueError(f"{path}: Csv types name unknown columns {sorted(unknown)}")
        return [types.get(c) for c in columns]
    return list(types)


class _CsvReader(_TextReader):
    def __init__(self, path: str, state: object | None, fmt: Csv) -> None:
        offset, index = (0, 0) if state is None else tuple(state)  # type: ignore[arg-type]
        self._path = path
        self._encoding = fmt.encoding
        self._f: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - lives as long as the part
        columns = fmt.columns
        if fmt.header:
            self._offset = 0
            head = next(csv.reader(self._lines(), **fmt.dialect), None)
            if columns is None and head is not None:
                columns = head
            if offset > self._offset:  # else a fresh start: it begins after the header
                _seek(self._f, path, offset)
            offset = max(offset, self._offset)
        elif offset:
            _seek(self._f, path, offset)
        self._columns = columns
        self._conv = _converters(fmt.types, columns, path)
        self._offset = offset
        self._index = index
        self._rows = csv.reader(self._lines(), **fmt.dialect)

    def _lines(self) -> Iterator[str]:
        # csv pulls one line at a time until a record is complete, so after each record
        # ``_offset`` is exactly where the next one starts (quoted fields may span lines).
        f = self._f
        assert f is not None
        enc = self._encoding
        for raw in f:
            self._offset += len(raw)
            yield raw.decode(enc)

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        if self._f is None:
            return [], range(0)
        start = self._offset
        try:
            rows: list[Any] = list(islice(self._rows, n))
        except csv.Error as e:
            raise ValueError(f"{self._path}, in the rows after byte {start}: bad CSV: {e}") from e
        if len(rows) < n:
            self.close()
        if not all(rows):
            rows = [r for r in rows if r]  # blank lines
        columns = self._columns
        if columns is not None:
            width = len(columns)
            if any(len(r) != width for r in rows):
                i, bad = next((i, r) for i, r in enumerate(rows) if len(r) != width)
                raise ValueError(
                    f"{self._path}, record {self._index + i} (in the rows after byte {start}): "
                    f"row has {len(bad)} fields, expected {width} ({columns})"
                )
        conv = self._conv
        if conv is not None and rows and columns is None and len({len(r) for r in rows}) > 1:
            try:  # rows of different lengths: convert row by row
                rows = [
                    [v if c is None else c(v) for c, v in zip(conv, r)] + r[len(conv) :]
                    for r in rows
                ]
            except (TypeError, ValueError) as e:
                raise ValueError(f"{self._path}, in the rows after byte {start}: {e}") from e
        elif conv is not None and rows:
            # Convert column by column (one C-level map per column), then rebuild the rows.
            cols: list[Any] = list(zip(*rows))
            for j, c in enumerate(conv[: len(cols)]):
                if c is not None:
                    try:
                        cols[j] = list(map(c, cols[j]))
                    except (TypeError, ValueError) as e:
                        raise ValueError(
                            f"{self._path}, column {j} in the rows after byte {start}: {e}"
                        ) from e
            rows = list(map(list, zip(*cols)))
        values: list[Any] = [dict(zip(columns, r)) for r in rows] if columns is not None else rows
        return values, self._numbered(len(values))


class _CsvWriter:
    def __init__(self, f: BinaryIO, path: str, has_content: bool, fmt: Csv) -> None:
        self._f = f
        self._path = path
        self._encoding = fmt.encoding
        self._dialect = {"lineterminator": "\n", **fmt.dialect}
        self._columns = fmt.columns
        self._need_header = fmt.header and not has_content
        if fmt.header and has_content and self._columns is None:
            # Resuming a file: its header fixes the column order.
            with open(path, newline="", encoding=fmt.encoding) as existing:
                self._columns = next(csv.reader(existing, **fmt.dialect), None)

    def write(self, values: Sequence[Any]) -> None:
        if not values:
            return
        buf = io.StringIO()
        w = csv.writer(buf, **self._dialect)
        columns = self._columns
        if columns is None and isinstance(values[0], Mapping):
            columns = self._columns = list(values[0])
        if self._need_header:
            if columns is None:
                raise ValueError(
                    f"{self._path}: Csv(header=True) writing sequences needs columns=[...]"
                )
            w.writerow(columns)
            self._need_header = False
        if columns is None:
            w.writerows(values)
        else:
            width = len(columns)
            rows = []
            for v in values:
                if isinstance(v, Mapping):
                    if len(v) != width:
                        raise ValueError(
                            f"{self._path}: row {v!r} does not have exactly the columns {columns}"
                        )
                    try:
                        rows.append([v[c] for c in columns])
                    except KeyError as e:
                        raise ValueError(
                            f"{self._path}: row {v!r} lacks column {e.args[0]!r}"
                        ) from None
                else:
                    if len(v) != width:
                        raise ValueError(
                            f"{self._path}: row {v!r} has {len(v)} fields, "
                            f"expected {width} ({columns})"
                        )
                    rows.append(v)
            w.writerows(rows)
        self._f.write(buf.getvalue().encode(self._encoding))

    def finish(self) -> None:
        pass
