"""How a failed in-process job shows its cause: ``JobFailed`` chained to the original error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from malstrom import JobFailed

E = TypeVar("E", bound=BaseException)


@contextmanager
def job_fails_with(
    cause: type[E] | tuple[type[E], ...], match: str | None = None
) -> Iterator[pytest.ExceptionInfo[E]]:
    """Expect the block to raise :class:`JobFailed` whose ``__cause__`` is a ``cause``
    (matching ``match``); the yielded info describes the cause, like ``pytest.raises``."""
    info: pytest.ExceptionInfo[Any] = pytest.ExceptionInfo.for_later()
    with pytest.raises(JobFailed) as failed:
        yield info
    err = failed.value.__cause__
    assert isinstance(err, cause), f"JobFailed caused by {err!r}, expected {cause}"
    if match is not None:
        assert re.search(match, str(err)), f"{match!r} not found in {str(err)!r}"
    info.fill_unfilled((type(err), err, err.__traceback__))
