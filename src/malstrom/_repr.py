"""Bounded reprs for error messages."""

from __future__ import annotations

from reprlib import Repr

__all__ = ["short_repr"]

_repr = Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = 8
_repr.maxtuple = 8
_repr.maxdict = 8
_repr.maxlevel = 3


def short_repr(obj: object) -> str:
    """A repr bounded in length, so a huge record never floods an error message."""
    try:
        return _repr.repr(obj)
    except Exception:  # a user __repr__ may itself fail
        return f"<unprintable {type(obj).__name__}>"
