"""Merging epochs (watermarks) from several channels or workers: the one rule, used by every
multi-input operator, by distributors across their peers and by a rescale's agreed epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from malstrom._repr import short_repr
from malstrom.engine.messages import IDLE
from malstrom.errors import OperatorError

__all__ = ["merge_epochs"]


def merge_epochs(values: Sequence[Any], operator: str) -> Any:
    """The least of ``values`` leaving ``IDLE`` ones out; ``IDLE`` if every one is idle, None
    while one is None (its channel has not sent an epoch yet).

    Raises :class:`OperatorError` naming ``operator`` if the timestamps cannot be compared.
    """
    if any(v is None for v in values):
        return None
    live = [v for v in values if v is not IDLE]
    if not live:
        return IDLE
    try:
        return min(live)
    except TypeError as e:
        raise OperatorError(
            operator, f"cannot merge epochs of incomparable timestamps {short_repr(values)}"
        ) from e
