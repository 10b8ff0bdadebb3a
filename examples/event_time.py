"""Event time: epochs tell operators when a period is complete.

Bank transactions (Jan..Apr 2025, in order) are keyed by ``(year, month)`` and stamped with
their date by ``assign_timestamps``. ``generate_epochs`` then issues epochs: a transaction on
some date promises that every earlier month is complete, so the generator returns the last
day of the previous month (epochs only ever rise; smaller candidates are ignored).

``MonthlyBalance`` (a :class:`~malstrom.StatefulLogic`) adds up each month's transactions and,
in ``on_epoch``, reports every month the epoch has passed: a month whose last day is ``<=``
the epoch can receive no more transactions. A closed month is stamped with its last day; the
months still open when the stream ends are flushed by ``Epoch(MAX)`` and stamped ``MAX``.
The job prints::

    (2025,1) 830.0 @2025-01-31
    (2025,2) -165.0 @2025-02-28
    (2025,3) 145.0 @2025-03-31
    (2025,4) -15.0 @MAX

The output does not depend on how records are batched: the engine may skip an epoch when a
larger one follows in the same batch, and one larger epoch closes all the months it passed.
"""

import calendar
import datetime as dt
from collections.abc import MutableMapping
from typing import Any, NamedTuple

from malstrom import (
    MAX,
    OperatorContext,
    Output,
    Record,
    SingleThreadRuntime,
    StatefulLogic,
    StreamProvider,
)
from malstrom.sources import IterSource

Month = tuple[int, int]


class Transaction(NamedTuple):
    amount: float
    date: dt.date


def tx(amount: float, year: int, month: int, day: int) -> Transaction:
    return Transaction(amount, dt.date(year, month, day))


# Fake transactions, in date order. Monthly sums: 830, -165, 145, -15.
TRANSACTIONS = [
    tx(1200.0, 2025, 1, 2),
    tx(-250.0, 2025, 1, 9),
    tx(-120.0, 2025, 1, 22),
    tx(-400.0, 2025, 2, 3),
    tx(180.0, 2025, 2, 14),
    tx(55.0, 2025, 2, 27),
    tx(90.0, 2025, 3, 5),
    tx(-45.0, 2025, 3, 18),
    tx(100.0, 2025, 3, 30),
    tx(25.0, 2025, 4, 6),
    tx(-40.0, 2025, 4, 21),
]


def month_of(t: Transaction) -> Month:
    return (t.date.year, t.date.month)


def last_day(month: Month) -> dt.date:
    year, m = month
    return dt.date(year, m, calendar.monthrange(year, m)[1])


def end_of_previous_month(record: Record, _prev_epoch: Any) -> dt.date:
    """Epoch candidate: every month before this transaction's month is complete."""
    return record.timestamp.replace(day=1) - dt.timedelta(days=1)


class MonthlyBalance(StatefulLogic[Month, Transaction, float, float]):
    """Sums each month's transactions; reports a month once the epoch has passed its end."""

    def initial_state(self) -> float:
        return 0.0

    def on_data(self, record: Record, state: float | None, output: Output[float]) -> float:
        return (state or 0.0) + record.value.amount

    def on_epoch(
        self, epoch: Any, states: MutableMapping[Month, float], output: Output[float]
    ) -> None:
        for month in sorted(states):
            end = last_day(month)
            if epoch is MAX:
                output.emit(states.pop(month), key=month, timestamp=MAX)
            elif end <= epoch:
                output.emit(states.pop(month), key=month, timestamp=end)


def show(record: Record, _ctx: OperatorContext) -> None:
    (year, month), ts = record.key, record.timestamp
    print(f"({year},{month}) {record.value} @{ts if ts is MAX else ts.isoformat()}")


def build(provider: StreamProvider) -> None:
    on_time, _late = (
        provider.new_stream()
        .source("iter-source", IterSource(TRANSACTIONS))
        # key transactions by (year, month) to keep monthly balances
        .key_distribute("key-year-month", month_of)
        .assign_timestamps("assign-time", lambda t: t.date)
        .generate_epochs("end-of-month", end_of_previous_month)
    )
    on_time.stateful_op("monthly-balance", MonthlyBalance()).inspect("print", show)


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
