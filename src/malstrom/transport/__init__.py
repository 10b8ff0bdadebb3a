"""Transports between workers and the coordinator: in-process queues and gRPC.

Public here: :class:`TlsConfig` (mutual TLS for every gRPC link of a job) and
:class:`~malstrom.errors.TransportError`. The gRPC modules load on first use, so importing
this package never imports grpc.
"""

import warnings
from typing import Any

from malstrom.errors import TransportError

__all__ = ["TlsConfig", "TransportError"]

# The committed gRPC modules carry the oldest protobuf runtime they support (5.27, see
# _grpc_codegen). protobuf 6.30-6.32 warn that such code is "one major version older" though
# it runs unchanged there (tests/test_packaging.py), so that warning about our own module is
# silenced.
warnings.filterwarnings(
    "ignore",
    message=r".*one major version older.*malstrom/transport/malstrom\.proto",
    category=UserWarning,
)


_LAZY = {"TlsConfig": "malstrom.transport._grpc_auth"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
