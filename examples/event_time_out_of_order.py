"""Event time with out-of-order data: ``limit_out_of_orderness``.

The transactions of ``event_time.py`` arrive shuffled. ``limit_out_of_orderness(name, bound)``
assumes no record is more than ``bound`` behind the newest timestamp seen so far, and issues
epochs that trail that newest timestamp by ``bound`` (here 62 days). Records at or behind the
epoch go to the second, *late*, stream (none do with this data); everything else stays on time.

The same ``MonthlyBalance`` operator reports a month once the epoch has passed its last day.
With the newest transaction on 2025-04-21 the epoch only reaches 2025-02-18: January is
reported with its closing date, while February, March and April are still open when the
stream ends and are flushed at ``MAX``. The job prints::

    (2025,1) 830.0 @2025-01-31
    (2025,2) -165.0 @MAX
    (2025,3) 145.0 @MAX
    (2025,4) -15.0 @MAX

The balances equal the in-order ones: waiting for the epoch makes the result independent of
arrival order. (The reference framework reports a month as soon as the epoch enters it, which
would report February on 2025-02-02 although on-time February transactions may still come.)
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


# The transactions of event_time.py, out of order (never more than 62 days behind the newest).
TRANSACTIONS = [
    tx(-250.0, 2025, 1, 9),
    tx(1200.0, 2025, 1, 2),
    tx(-400.0, 2025, 2, 3),
    tx(-120.0, 2025, 1, 22),
    tx(55.0, 2025, 2, 27),
    tx(90.0, 2025, 3, 5),
    tx(180.0, 2025, 2, 14),
    tx(25.0, 2025, 4, 6),
    tx(100.0, 2025, 3, 30),
    tx(-40.0, 2025, 4, 21),
    tx(-45.0, 2025, 3, 18),
]


def month_of(t: Transaction) -> Month:
    return (t.date.year, t.date.month)


def last_day(month: Month) -> dt.date:
    year, m = month
    return dt.date(year, m, calendar.monthrange(year, m)[1])


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


def report_late(record: Record, _ctx: OperatorContext) -> None:
    print(f"late: {record.value}")


def build(provider: StreamProvider) -> None:
    on_time, late = (
        provider.new_stream()
        .source("iter-source", IterSource(TRANSACTIONS))
        .key_distribute("key-year-month", month_of)
        .assign_timestamps("assign-time", lambda t: t.date)
        .limit_out_of_orderness("end-of-month", dt.timedelta(days=62))
    )
    on_time.stateful_op("monthly-balance", MonthlyBalance()).inspect("print", show)
    late.inspect("print-late", report_late)


if __name__ == "__main__":
    SingleThreadRuntime(build).execute()
