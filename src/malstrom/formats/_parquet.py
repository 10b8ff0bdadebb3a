"""Parquet through pyarrow (``pip install 'malstrom[parquet]'``): typed columns, one record
per row as a dict. A reader's state is the number of rows read; a written file is complete
only once its footer is written, so Parquet files cannot be appended to (DirectorySink rolls a
new file at every snapshot instead)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from malstrom.formats._base import FileReader, FileWriter, Format

__all__ = ["Parquet"]


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the Parquet format needs pyarrow: pip install 'malstrom[parquet]'"
        ) from e
    return pyarrow


class Parquet(Format):
    """Apache Parquet files (needs ``pip install 'malstrom[parquet]'``).

    Reading: each row is a record, a ``dict`` column -> value with the column's Python type
    (int, float, str, bytes, bool, datetime, Decimal, list, dict...); ``columns`` reads only
    those columns. Writing: values are dicts (or sequences, if ``schema`` names the columns);
    the column types come from ``schema`` (a ``pyarrow.Schema``) or, without one, are inferred
    from the first values written to each file and then kept for the rest of it. Pass a
    schema when a column may be None in the first values.
    """

    suffix = ".parquet"
    appendable = False

    def __init__(
        self,
        *,
        schema: Any = None,
        columns: Sequence[str] | None = None,
        compression: str = "zstd",
        batch_rows: int = 8192,
    ) -> None:
        self.schema = schema
        self.columns = list(columns) if columns is not None else None
        self.compression = compression
        self.batch_rows = batch_rows

    def _reader(self, path: str, state: object | None) -> FileReader:
        return _ParquetReader(path, int(state) if state is not None else 0, self)  # type: ignore[call-overload]

    def _writer(self, f: BinaryIO, path: str, has_content: bool) -> FileWriter:
        if has_content:
            raise ValueError(f"{path}: a Parquet file cannot be appended to")
        return _ParquetWriter(f, path, self)

    def __repr__(self) -> str:
        return f"Parquet(columns={self.columns!r})"


class _ParquetReader:
    def __init__(self, path: str, done: int, fmt: Parquet) -> None:
        pa = _pyarrow()
        self._path = path
        self._file: Any = pa.parquet.ParquetFile(path)
        meta = self._file.metadata
        # Resume: start at the row group holding row ``done`` and skip to it.
        group, skip = 0, done
        while group < meta.num_row_groups and skip >= meta.row_group(group).num_rows:
            skip -= meta.row_group(group).num_rows
            group += 1
        self._batches: Any = iter(
            self._file.iter_batches(
                batch_size=fmt.batch_rows,
                row_groups=list(range(group, meta.num_row_groups)),
                columns=fmt.columns,
            )
        )
        self._skip = skip
        self._pending: list[dict[str, Any]] = []
        self._pos = 0
        self._done = done
        self._rows = int(meta.num_rows)
        self._finished = group >= meta.num_row_groups

    def _poll_columns(self, n: int) -> tuple[list[Any], range]:
        if self._finished:
            return [], range(0)
        if self._pos >= len(self._pending):
            self._pending, self._pos = [], 0
            while not self._pending:
                batch = next(self._batches, None)
                if batch is None:
                    self.close()
                    return [], range(0)
                if self._skip:
                    if batch.num_rows <= self._skip:
                        self._skip -= batch.num_rows
                        continue
                    batch = batch.slice(self._skip)
                    self._skip = 0
                self._pending = batch.to_pylist()
        values = self._pending[self._pos : self._pos + n]
        self._pos += len(values)
        start = self._done
        self._done = start + len(values)
        return values, range(start, self._done)

    def is_finished(self) -> bool:
        return self._finished

    def lag(self) -> int:
        """Rows of the file not read yet."""
        return 0 if self._finished else max(0, self._rows - self._done)

    def snapshot(self) -> object:
        return self._done

    def collect(self) -> object:
        self.close()
        return self._done

    def close(self) -> None:
        if not self._finished:
            self._finished = True
        if self._file is not None:
            self._file.close()
            self._file = None


class _ParquetWriter:
    def __init__(self, f: BinaryIO, path: str, fmt: Parquet) -> None:
        self._pa = _pyarrow()
        self._f = f
        self._path = path
        self._fmt = fmt
        self._schema = fmt.schema
        self._writer: Any = None

    def write(self, values: Sequence[Any]) -> None:
        if not values:
            return
        pa = self._pa
        schema = self._schema
        if not isinstance(values[0], Mapping):
            if schema is None:
                raise ValueError(
                    f"{self._path}: Parquet rows that are not dicts need schema= to name columns"
                )
            names = schema.names
            values = [dict(zip(names, v)) for v in values]
        try:
            table = pa.Table.from_pylist(values, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise ValueError(
                f"{self._path}: rows do not fit the Parquet schema "
                f"({schema or 'inferred from the first rows'}): {e}"
            ) from e
        if self._writer is None:
            self._schema = table.schema
            self._writer = pa.parquet.ParquetWriter(
                self._f, table.schema, compression=self._fmt.compression
            )
        self._writer.write_table(table)

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
