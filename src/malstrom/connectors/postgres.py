"""PostgreSQL sink (psycopg 3): exactly-once through two-phase commit, or idempotent upserts.

``pip install 'malstrom[postgres]'``.

Exactly-once (``mode="exactly_once"``): each sink part writes the rows of one snapshot
interval into one transaction on its own connection (COPY, in batches). At the snapshot
barrier the transaction is ``PREPARE TRANSACTION``-ed (its rows are on disk but invisible) and
its id goes into the part's snapshot state; once the job's snapshot commits, the part runs
``COMMIT PREPARED``. On restore, each part commits the prepared transactions its snapshot
lists (the snapshot committed, the worker died before ``COMMIT PREPARED``) and rolls back
every other prepared transaction of the part (prepared at a barrier whose snapshot never
committed, or written by a failed attempt): their rows are replayed. The server must allow
prepared transactions: ``max_prepared_transactions`` at least twice the number of parts of all
exactly-once sinks writing to it.

Transaction ids are ``<transaction_prefix>:<part>:<build id>:<n>``: the build id is random per
part build, so a process of a failed attempt can never commit a transaction of the attempt
that replaced it. ``transaction_prefix`` (default ``malstrom:<table>``, followed by ``:<sink
operator name>`` where the engine tells the sink its name) must be unique among the jobs and
sink operators writing exactly-once to one database cluster: a restore rolls back the prepared
transactions of its prefix it does not know.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

from malstrom.keyed.partitioners import stable_hash
from malstrom.sinks._protocols import RecordBatch, StatefulSink
from malstrom.types import Record

__all__ = ["Mode", "PostgresSink", "RowFn"]

Mode = Literal["exactly_once", "upsert"]
"""How :class:`PostgresSink` writes: ``"exactly_once"`` (two-phase commit) or ``"upsert"``."""
RowFn = Callable[[Record], Mapping[str, Any] | Sequence[Any]]
"""Turns a record into a row: a column mapping, or values in the order of ``columns``."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ImportError("PostgresSink needs psycopg: pip install 'malstrom[postgres]'") from e
    return psycopg


def _not_a_row(v: Any) -> TypeError:
    return TypeError(
        f"a record value of type {type(v).__name__} is not a row: emit dicts, tuples or "
        "dataclasses, or give PostgresSink(row=lambda record: {...})"
    )


def _as_mapping(v: Any) -> Mapping[str, Any] | None:
    if isinstance(v, Mapping):
        return v
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
    return None


class _Control:
    """One autocommit connection per process and DSN for ``COMMIT/ROLLBACK PREPARED`` (which
    cannot run on a part's connection while it holds the next interval's transaction)."""

    _conns: dict[str, Any] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, dsn: str, timeout: float) -> Any:
        with cls._lock:
            conn = cls._conns.get(dsn)
            if conn is None or conn.closed or conn.broken:
                conn = _psycopg().connect(dsn, autocommit=True, connect_timeout=max(1, timeout))
                cls._conns[dsn] = conn
            return conn


class _PgPart:
    """One part of a PostgresSink: a connection, a buffer, and (exactly-once) the transaction
    of the current interval plus prepared ones waiting for their snapshot to commit.

    A prepared transaction is *armed* once a barrier has passed after it was prepared: that
    barrier's snapshot lists it, so the part may commit it when a snapshot commits.
    Transactions handed over by a rescale arrive unarmed.
    """

    def __init__(self, sink: PostgresSink, part: int, state: Any) -> None:
        psycopg = _psycopg()
        self._sink = sink
        self._part = part
        self._sql = psycopg.sql
        self._table = psycopg.sql.Identifier(*sink.table.split("."))
        self._row = sink.row
        self._batch_size = sink.batch_size
        self._upsert = sink.mode == "upsert"
        self._staged = False
        self._buf: list[Any] = []
        self._first_at = 0.0
        self._in_txn = False
        self._seq = 0
        self._token = secrets.token_hex(4)
        self._armed: list[str] = []
        self._unarmed: list[str] = []
        self._conn = psycopg.connect(
            sink.dsn, autocommit=True, connect_timeout=max(1, int(sink.connect_timeout))
        )
        try:
            self._table_columns = self._describe()
            self._columns: list[str] | None = list(sink.columns) if sink.columns else None
            if self._columns is not None:
                self._check_columns(self._columns)
            if sink.mode == "exactly_once":
                self._check_prepared_allowed()
                if state is not None and state.get("moving"):
                    self._unarmed = list(state["pending"])
                else:
                    self._recover(list(state["pending"]) if state is not None else [])
        except BaseException:
            self._conn.close()
            raise

    # ----- set-up ------------------------------------------------------------------------
    def _describe(self) -> list[str]:
        sink = self._sink
        try:
            cur = self._conn.execute(self._sql.SQL("SELECT * FROM {} LIMIT 0").format(self._table))
        except _psycopg().errors.UndefinedTable:
            raise ValueError(f"table {sink.table!r} does not exist") from None
        names = [d.name for d in cur.description or ()]
        missing = [c for c in sink.key_columns if c not in names]
        if missing:
            raise ValueError(f"key_columns {missing} are not columns of {sink.table!r} ({names})")
        return names

    def _check_columns(self, columns: Sequence[str]) -> None:
        unknown = [c for c in columns if c not in self._table_columns]
        if unknown:
            raise ValueError(
                f"{unknown} are not columns of {self._sink.table!r} ({self._table_columns})"
            )
        missing = [c for c in self._sink.key_columns if c not in columns]
        if missing:
            raise ValueError(f"rows lack the key columns {missing}")

    def _check_prepared_allowed(self) -> None:
        row = self._conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) <= 0:
            raise ValueError(
                "the server does not allow prepared transactions (max_prepared_transactions = "
                "0), which mode='exactly_once' needs: set max_prepared_transactions in "
                "postgresql.conf (at least twice the number of sink parts) and restart the "
                "server, or use mode='upsert'"
            )

    def _gid_prefix(self) -> str:
        return f"{self._sink.transaction_prefix}:{self._part}:"

    def _recover(self, committed: list[str]) -> None:
        """Commit the prepared transactions the restored snapshot lists; roll back every other
        prepared transaction of this part (its rows are replayed)."""
        control = self._control()
        rows = control.execute(
            "SELECT gid FROM pg_prepared_xacts "
            "WHERE database = current_database() AND starts_with(gid, %s)",
            (self._gid_prefix(),),
        ).fetchall()
        keep = set(committed)
        for (gid,) in rows:
            self._finish(control, gid, commit=gid in keep, strict=False)

    def _control(self) -> Any:
        return _Control.get(self._sink.dsn, self._sink.connect_timeout)

    def _finish(self, conn: Any, gid: str, *, commit: bool, strict: bool) -> None:
        verb = "COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}"
        try:
            conn.execute(self._sql.SQL(verb).format(self._sql.Literal(gid)))
        except _psycopg().errors.UndefinedObject:
            if strict:
                raise RuntimeError(
                    f"prepared transaction {gid!r} vanished before its snapshot's commit: "
                    "another job or sink uses the transaction prefix "
                    f"{self._sink.transaction_prefix!r}, or this process belongs to a failed "
                    "attempt that was replaced"
                ) from None

    # ----- writing -----------------------------------------------------------------------
    def sink(self, record: Record) -> None:
        buf = self._buf
        if not buf:
            self._first_at = time.monotonic()
        buf.append(record.value if self._row is None else self._row(record))
        if len(buf) >= self._batch_size or (
            self._upsert and time.monotonic() - self._first_at >= self._sink.max_delay
        ):
            self._flush()

    def sink_batch(self, records: RecordBatch) -> None:
        buf = self._buf
        if not buf:
            self._first_at = time.monotonic()
        if self._row is None:
            buf += records.values
        else:
            buf += map(self._row, records)
        if len(buf) >= self._batch_size or (
            self._upsert and time.monotonic() - self._first_at >= self._sink.max_delay
        ):
            self._flush()

    def _rows(self, buf: list[Any]) -> list[Sequence[Any]]:
        """The rows as sequences in the order of ``self._columns`` (fixed by the first row)."""
        columns = self._columns
        if columns is None:
            first = buf[0]
            if type(first) in (tuple, list):
                named = None
            elif isinstance(first, tuple) and hasattr(first, "_fields"):
                named = first._fields  # a NamedTuple names its columns
            else:
                named = _as_mapping(first)
            columns = list(named) if named is not None else self._table_columns
            self._check_columns(columns)
            self._columns = columns
        width = len(columns)
        out: list[Sequence[Any]] = []
        for r in buf:
            t = type(r)
            if t is tuple or t is list:
                if len(r) != width:
                    raise ValueError(f"row {r!r} has {len(r)} values, expected {width} {columns}")
                out.append(r)
                continue
            m = _as_mapping(r)
            if m is None:
                if isinstance(r, tuple | list):  # a NamedTuple or list subclass
                    if len(r) != width:
                        raise ValueError(
                            f"row {r!r} has {len(r)} values, expected {width} {columns}"
                        )
                    out.append(r)
                    continue
                raise _not_a_row(r)
            if len(m) != width:
                extra = sorted(set(m) - set(columns))
                raise ValueError(f"row {r!r} has columns {extra} not in {columns}")
            try:
                out.append([m[c] for c in columns])
            except KeyError as e:
                raise ValueError(f"row {r!r} lacks column {e.args[0]!r}") from None
        return out

    def _flush(self) -> None:
        buf, self._buf = self._buf, []
        if not buf:
            return
        rows = self._rows(buf)
        sink = self._sink
        if sink.key_columns:
            rows = self._dedup(rows)
        try:
            if self._upsert:
                with self._conn.transaction():
                    self._upsert_staged(rows)
                return
            if not self._in_txn:
                self._conn.execute("BEGIN")
                self._in_txn = True
            if sink.key_columns:
                self._conn.cursor().executemany(self._upsert_sql(), rows)
            else:
                self._copy(self._table, rows)
        except Exception as e:
            raise RuntimeError(
                f"writing {len(rows)} rows to {sink.table!r} failed: {type(e).__name__}: {e}"
            ) from e

    def _dedup(self, rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
        # One statement may not update a row twice: keep each key's last row.
        assert self._columns is not None
        idx = [self._columns.index(c) for c in self._sink.key_columns]
        last: dict[tuple[Any, ...], Sequence[Any]] = {}
        for r in rows:
            last[tuple([r[i] for i in idx])] = r
        return list(last.values()) if len(last) < len(rows) else rows

    def _copy(self, table: Any, rows: list[Sequence[Any]]) -> None:
        sql = self._sql
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            table, sql.SQL(", ").join(map(sql.Identifier, self._columns or ()))
        )
        with self._conn.cursor().copy(stmt) as copy:
            write = copy.write_row
            for r in rows:
                write(r)

    def _conflict_sql(self) -> Any:
        sql = self._sql
        keys = self._sink.key_columns
        others = [c for c in self._columns or () if c not in keys]
        if not others:
            action = sql.SQL("DO NOTHING")
        else:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                    for c in others
                )
            )
        return sql.SQL("ON CONFLICT ({}) {}").format(
            sql.SQL(", ").join(map(sql.Identifier, keys)), action
        )

    def _upsert_sql(self) -> Any:
        sql = self._sql
        columns = self._columns or []
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}) {}").format(
            self._table,
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
            self._conflict_sql(),
        )

    def _upsert_staged(self, rows: list[Sequence[Any]]) -> None:
        # COPY into a session-local staging table, then one INSERT ... SELECT ... ON CONFLICT.
        # (Temporary tables cannot take part in a prepared transaction: upsert mode only.)
        sql = self._sql
        stage = sql.Identifier(f"malstrom_stage_{self._part}")
        if not self._staged:
            self._conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
                ).format(stage, self._table)
            )
            self._staged = True
        self._copy(stage, rows)
        cols = sql.SQL(", ").join(map(sql.Identifier, self._columns or ()))
        self._conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} {}").format(
                self._table, cols, cols, stage, self._conflict_sql()
            )
        )

    # ----- snapshots ---------------------------------------------------------------------
    def _prepare(self) -> None:
        self._flush()
        if self._in_txn:
            gid = f"{self._gid_prefix()}{self._token}:{self._seq}"
            self._seq += 1
            self._conn.execute(
                self._sql.SQL("PREPARE TRANSACTION {}").format(self._sql.Literal(gid))
            )
            self._in_txn = False
            self._unarmed.append(gid)

    def snapshot(self) -> object:
        if self._upsert:
            self._flush()
            return None
        self._prepare()
        self._armed += self._unarmed
        self._unarmed = []
        return {"pending": list(self._armed)}

    def commit(self, version: int) -> None:
        if not self._armed:
            return
        armed, self._armed = self._armed, []
        control = self._control()
        for gid in armed:
            self._finish(control, gid, commit=True, strict=True)

    def collect(self) -> object:
        if self._upsert:
            self._flush()
            self._conn.close()
            return None
        self._prepare()
        self._conn.close()
        return {"pending": self._armed + self._unarmed, "moving": True}


class PostgresSink(StatefulSink):
    """Writes records as rows of a PostgreSQL table (``pip install 'malstrom[postgres]'``).

    ``row(record)`` gives a record's row: a dict column -> value, or a tuple in the order of
    ``columns`` (default: the table's columns). By default the record's value is the row
    (dicts, tuples, named tuples and dataclasses). Rows go in batches of ``batch_size`` (COPY;
    upserts through a staging table), never one round trip per record.

    - ``mode="exactly_once"`` (default): two-phase commit (see the module docs). Every row
      appears exactly once after any crash, visible once the snapshot that covers it commits.
      With ``key_columns`` rows are upserted inside those transactions. Without snapshots
      (``snapshot_interval=None``) everything commits when the job completes.
    - ``mode="upsert"``: ``INSERT ... ON CONFLICT (key_columns) DO UPDATE``, committed per
      batch (at the latest every ``max_delay`` seconds with records flowing, and at every
      snapshot barrier). After a restore, replayed rows overwrite their keys again: the final
      table is exact, though a reader may briefly see a key's older value during the replay.

    Records are spread over ``parts`` parts by key (a key's rows stay in order in one part);
    each part holds one connection. With ``key_columns``, rows of one batch with the same key
    are reduced to the last one (one statement may not update a row twice).
    """

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        mode: Mode = "exactly_once",
        key_columns: Sequence[str] = (),
        row: RowFn | None = None,
        columns: Sequence[str] | None = None,
        parts: int = 8,
        batch_size: int = 5000,
        max_delay: float = 1.0,
        transaction_prefix: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(self)
        if mode not in ("exactly_once", "upsert"):
            raise ValueError(f"PostgresSink: mode must be 'exactly_once' or 'upsert', not {mode!r}")
        if isinstance(key_columns, str):
            key_columns = (key_columns,)
        if mode == "upsert" and not key_columns:
            raise ValueError("PostgresSink: mode='upsert' needs key_columns (the conflict key)")
        if not isinstance(parts, int) or parts < 1:
            raise ValueError(f"PostgresSink: parts must be an int >= 1, got {parts!r}")
        if batch_size < 1:
            raise ValueError(f"PostgresSink: batch_size must be >= 1, got {batch_size!r}")
        if row is not None and not callable(row):
            raise TypeError(f"PostgresSink: row must be a function row(record), got {row!r}")
        prefix = transaction_prefix if transaction_prefix is not None else f"malstrom:{table}"
        if len(prefix) > 160 or not prefix.isprintable():
            raise ValueError(
                "PostgresSink: transaction_prefix must be printable and at most 160 characters "
                "(PostgreSQL transaction ids have at most 200)"
            )
        self.dsn = dsn
        self.table = table
        self.mode: Mode = mode
        self.key_columns = tuple(key_columns)
        self.row = row
        self.columns = list(columns) if columns is not None else None
        self.parts = parts
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.transaction_prefix = prefix
        self._default_prefix = transaction_prefix is None
        self.connect_timeout = connect_timeout

    def bind_operator(self, name: str) -> None:
        """Learn the sink operator's name (when the engine tells it): the default
        transaction prefix then names it too, so two exactly-once sinks of one job may
        write to the same table."""
        if self._default_prefix:
            prefix = f"malstrom:{self.table}:{name}"
            if len(prefix) <= 160 and prefix.isprintable():
                self.transaction_prefix = prefix

    def assign_part(self, key: Any) -> Hashable:
        """The part (0 .. parts-1) a record with ``key`` goes to."""
        return stable_hash(key) % self.parts

    def build_part(self, part: Any, state: object | None) -> _PgPart:
        """Connect part ``part``; with a snapshot's state, first settle its prepared
        transactions (commit what the snapshot lists, roll back the rest)."""
        return _PgPart(self, int(part), state)

    def __repr__(self) -> str:
        return f"PostgresSink({self.table!r}, mode={self.mode!r})"
