"""Transports between workers and the coordinator: in-process queues and gRPC."""

import warnings

# The committed gRPC modules carry the oldest protobuf runtime they support (5.27, see
# _grpc_codegen). protobuf 6.30-6.32 warn that such code is "one major version older" though
# it runs unchanged there (tests/test_packaging.py), so that warning about our own module is
# silenced.
warnings.filterwarnings(
    "ignore",
    message=r".*one major version older.*malstrom/transport/malstrom\.proto",
    category=UserWarning,
)
