"""Transports between workers and the coordinator: in-process queues and gRPC.

Public here: :class:`TlsConfig` (mutual TLS for every gRPC link of a job) and
:class:`~malstrom.errors.TransportError`. The gRPC modules load on first use, so importing
this package never imports grpc.
"""

import warnings

from malstrom._lazy import lazy_exports as _lazy_exports
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


__getattr__, __dir__ = _lazy_exports(globals(), {"TlsConfig": "malstrom.transport._grpc_auth"})
