"""Regenerate the protobuf/gRPC modules from ``malstrom.proto`` (development only).

Run ``python -m malstrom.transport._grpc_codegen`` after editing the ``.proto``; it needs
``grpcio-tools`` (the ``dev`` extra). The generated modules are committed next to the
``.proto``; ``tests/test_transport.py`` regenerates them into a temporary directory and
checks that nothing drifted.

protoc stamps the generated modules with its own version as the oldest runtime they accept
(``grpcio>=`` and ``protobuf>=``), which would force users onto the newest grpcio and
protobuf. The committed modules carry :data:`GRPCIO_FLOOR` and :data:`PROTOBUF_FLOOR`
instead: the oldest releases that run this code (``grpcio`` 1.64 added the registered-method
calls the stubs use; ``protobuf`` 5.27 added the runtime version check the messages call).
``tests/test_packaging.py`` runs the transport tests on exactly those releases.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = [
    "GENERATED",
    "GRPCIO_FLOOR",
    "PROTO",
    "PROTOBUF_FLOOR",
    "generate",
    "normalize_versions",
    "stamp_floors",
]

#: The .proto file, inside the package (``src/malstrom/transport/malstrom.proto``).
PROTO = Path(__file__).with_name("malstrom.proto")
#: Names of the generated files, all next to the .proto.
GENERATED = ("malstrom_pb2.py", "malstrom_pb2.pyi", "malstrom_pb2_grpc.py")
#: The oldest grpcio the committed stubs accept (and the tests run on).
GRPCIO_FLOOR = "1.64.0"
#: The oldest protobuf runtime the committed messages accept (and the tests run on).
PROTOBUF_FLOOR = (5, 27, 0)


def generate(out_dir: Path | str) -> list[Path]:
    """Generate the modules into ``out_dir/malstrom/transport/``; return their paths.

    The proto is compiled with the source root as include path, so the generated gRPC module
    imports ``malstrom.transport.malstrom_pb2`` (a package import, no fix-up needed) and the
    descriptor is registered as ``malstrom/transport/malstrom.proto`` (no clash with other
    packages' protos).
    """
    from grpc_tools import protoc  # dev-only dependency (grpcio-tools)

    src_root = PROTO.parents[2]
    rel = PROTO.relative_to(src_root).as_posix()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{src_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        rel,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
    target = out / PROTO.parent.relative_to(src_root)
    return [target / name for name in GENERATED]


_VERSION_PATTERNS = (
    (re.compile(r"^# Protobuf Python Version: .*$", re.M), "# Protobuf Python Version: X"),
    (
        re.compile(r"(_runtime_version\.Domain\.PUBLIC,\n)\s*\d+,\n\s*\d+,\n\s*\d+,\n"),
        r"\1    X,\n    X,\n    X,\n",
    ),
    (re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M), "GRPC_GENERATED_VERSION = 'X'"),
)


def normalize_versions(text: str) -> str:
    """``text`` with the generator's version numbers masked (to compare across tool versions)."""
    for pattern, repl in _VERSION_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def stamp_floors(text: str) -> str:
    """``text`` with the generator's version numbers replaced by the supported floors."""
    major, minor, patch = PROTOBUF_FLOOR
    floors = (
        f"# Protobuf Python Version: {major}.{minor}.{patch}",
        rf"\1    {major},\n    {minor},\n    {patch},\n",
        f"GRPC_GENERATED_VERSION = '{GRPCIO_FLOOR}'",
    )
    for (pattern, _), repl in zip(_VERSION_PATTERNS, floors, strict=True):
        text = pattern.sub(repl, text)
    return text


def main() -> int:
    """Regenerate the committed modules in place, stamped with the supported floors."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(tmp):
            dest = PROTO.with_name(path.name)
            dest.write_text(stamp_floors(path.read_text()))
            print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
