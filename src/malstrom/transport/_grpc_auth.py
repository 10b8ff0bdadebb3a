"""Who may talk to a malstrom gRPC server: per-job token, protocol version, optional TLS.

Every RPC carries the job's identity as call metadata (``x-malstrom-job``,
``x-malstrom-token``, ``x-malstrom-version``). A server interceptor refuses a wrong protocol
version or a peer of another job (``FAILED_PRECONDITION``) and a wrong token
(``UNAUTHENTICATED``) with a message that names both sides; the refusal is logged and recorded
on the server, and clients turn it into a :class:`TransportError` carrying that message.

Servers that send pickled data back (control, admin) also prove they know the token: the
client sends a random nonce, the server answers with ``HMAC(token, nonce)`` in its initial
metadata, and the client checks it (:func:`verify_server`) before unpickling anything. So
pickle only ever flows between authenticated peers of one job.
Without TLS the token travels in clear text: use :class:`TlsConfig` across untrusted networks.

Every server also answers the standard gRPC health checking protocol (``grpc.health.v1``,
what Kubernetes' ``grpc`` probes call) without a token: it tells only that the process serves.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from malstrom.transport._exchange import TransportError

__all__ = [
    "JOB_ENV",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "TOKEN_ENV",
    "JobAuth",
    "Rejections",
    "TlsConfig",
    "is_refusal",
    "make_channel",
    "make_server",
    "new_nonce",
    "new_token",
    "rpc_error",
    "server_proof",
    "verify_server",
]

log = logging.getLogger(__name__)

#: Version of malstrom's wire protocol (messages, framing, pickled types). Peers must agree.
PROTOCOL_VERSION = 2
#: Largest gRPC message either side accepts; larger payloads travel in chunks.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: Environment variables a cluster's processes read the job id and token from.
JOB_ENV = "MALSTROM_JOB"
TOKEN_ENV = "MALSTROM_TOKEN"

MD_JOB = "x-malstrom-job"
MD_TOKEN = "x-malstrom-token"
MD_VERSION = "x-malstrom-version"
MD_NONCE = "x-malstrom-nonce"
MD_PROOF = "x-malstrom-proof"

_REFUSALS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION)


def new_token() -> str:
    """A fresh random job token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class JobAuth:
    """The identity every RPC of a job carries: job id and shared secret token.

    ``protocol_version`` defaults to :data:`PROTOCOL_VERSION`; override it only in tests.
    """

    job_id: str
    token: str = field(repr=False)
    protocol_version: int = PROTOCOL_VERSION

    @staticmethod
    def local(job_id: str | None = None) -> JobAuth:
        """A new identity for a job whose processes all start here (fresh token)."""
        return JobAuth(job_id or f"job-{secrets.token_hex(4)}", new_token())

    @staticmethod
    def from_env(environ: dict[str, str] | None = None) -> JobAuth:
        """The identity given by ``MALSTROM_JOB`` / ``MALSTROM_TOKEN`` (cluster processes)."""
        env = os.environ if environ is None else environ
        job, token = env.get(JOB_ENV), env.get(TOKEN_ENV)
        if not job or not token:
            raise ValueError(f"set {JOB_ENV} and {TOKEN_ENV} (or pass --job/--token)")
        return JobAuth(job, token)

    def metadata(self, nonce: str | None = None) -> tuple[tuple[str, str], ...]:
        """Call metadata proving this identity (plus a nonce the server must sign, if given)."""
        md = (
            (MD_JOB, self.job_id),
            (MD_TOKEN, self.token),
            (MD_VERSION, str(self.protocol_version)),
        )
        return (*md, (MD_NONCE, nonce)) if nonce is not None else md

    def check(self, md: dict[str, str]) -> tuple[grpc.StatusCode, str] | None:
        """Why a peer presenting metadata ``md`` must be refused here, or None if it may pass."""
        version = md.get(MD_VERSION)
        if version != str(self.protocol_version):
            theirs = f"version {version}" if version else "no malstrom protocol version"
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"incompatible malstrom protocol: this server speaks version "
                f"{self.protocol_version}, the client sent {theirs}",
            )
        job = md.get(MD_JOB)
        if job != self.job_id:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this server runs job {self.job_id!r}, you are from job {job!r}",
            )
        token = md.get(MD_TOKEN, "")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return grpc.StatusCode.UNAUTHENTICATED, f"bad token for job {self.job_id!r}"
        return None

    def proof(self, nonce: str) -> str:
        """``HMAC(token, nonce)``: what a server answers to prove it knows the token."""
        mac = hmac.new(self.token.encode(), f"{self.job_id}\0{nonce}".encode(), hashlib.sha256)
        return mac.hexdigest()


def server_proof(auth: JobAuth, context: Any) -> None:
    """Send the server's proof of the token in the initial metadata of the current call."""
    md = dict(context.invocation_metadata() or ())
    nonce = md.get(MD_NONCE)
    if nonce is not None:
        context.send_initial_metadata(((MD_PROOF, auth.proof(nonce)),))


def verify_server(auth: JobAuth, nonce: str, initial_metadata: Any, address: str) -> None:
    """Raise TransportError unless the server at ``address`` signed ``nonce`` with the token."""
    md = dict(initial_metadata or ())
    proof = md.get(MD_PROOF, "")
    if not hmac.compare_digest(proof.encode(), auth.proof(nonce).encode()):
        raise TransportError(
            f"the server at {address} did not prove it belongs to job {auth.job_id!r} "
            "(wrong token or not a malstrom server); refusing to talk to it"
        )


def rpc_error(err: grpc.RpcError, address: str, what: str = "") -> TransportError:
    """A TransportError with a clear message for a failed call to ``address``."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    prefix = f"{what}: " if what else ""
    if code in _REFUSALS:
        return TransportError(f"{prefix}{address} refused us: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return TransportError(
            f"{prefix}cannot reach {address}: {details} (is it running, and is TLS "
            "configured alike on both sides?)"
        )
    name = code.name if code is not None else "error"
    return TransportError(f"{prefix}call to {address} failed ({name}): {details}")


def is_refusal(err: grpc.RpcError) -> bool:
    """True if ``err`` is an authentication/compatibility refusal (never worth retrying)."""
    return hasattr(err, "code") and err.code() in _REFUSALS


class Rejections:
    """The last refusals a server made (thread-safe), for status reports and tests.

    Also decides which refusals reach the log: the first from a client host, then at most
    one per ``log_every`` seconds per host, saying how many were left out. A scanner or a
    misconfigured client retrying in a loop must not flood the log (or fill a disk).
    """

    def __init__(self, keep: int = 100, log_every: float = 10.0) -> None:
        self._items: deque[str] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.log_every = log_every
        #: Refusals recorded since the server started.
        self.total = 0
        self._next_log: dict[str, float] = {}  # client host -> when it may be logged again
        self._unlogged: dict[str, int] = {}

    def add(self, text: str) -> None:
        """Record one refusal."""
        with self._lock:
            self._items.append(text)
            self.total += 1

    def refuse(self, text: str, peer: str) -> None:
        """Record one refusal of a call from ``peer`` and log it unless rate-limited."""
        host = peer.rpartition(":")[0] or peer  # ipv4:1.2.3.4:5678 -> ipv4:1.2.3.4
        now = time.monotonic()
        with self._lock:
            self._items.append(text)
            self.total += 1
            if now < self._next_log.get(host, 0.0):
                self._unlogged[host] = self._unlogged.get(host, 0) + 1
                return
            if len(self._next_log) > 10_000:  # many hosts: forget the ones long quiet
                self._next_log = {h: t for h, t in self._next_log.items() if t > now}
            self._next_log[host] = now + self.log_every
            left_out = self._unlogged.pop(host, 0)
        more = f" ({left_out} more refused from this host, not logged)" if left_out else ""
        log.warning("%s%s", text, more)

    def __iter__(self) -> Any:
        with self._lock:
            return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


class _AuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata does not match the server's :class:`JobAuth`."""

    def __init__(self, auth: JobAuth, rejections: Rejections) -> None:
        self._auth = auth
        self._rejections = rejections

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if details.method.startswith(_HEALTH_METHODS):  # probes carry no job token
            return continuation(details)
        md = dict(details.invocation_metadata or ())
        refusal = self._auth.check(md)
        handler = continuation(details)
        if refusal is None or handler is None:
            return handler
        code, message = refusal
        method = details.method
        rejections = self._rejections

        def abort(_request: Any, context: Any) -> Any:
            peer = context.peer()
            rejections.refuse(f"refused {method} from {peer}: {message}", peer)
            context.abort(code, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(abort)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(abort)
        return grpc.unary_unary_rpc_method_handler(abort)


@dataclass(frozen=True)
class TlsConfig:
    """TLS material: this process's certificate and key, and the CA that signs its peers.

    With ``ca_file`` set, TLS is mutual: servers require client certificates signed by the CA
    and clients verify servers against it. ``server_name`` overrides the name a client
    expects in the server's certificate (when peers are addressed by IP without a SAN for it).
    """

    cert_file: str | Path
    key_file: str | Path
    ca_file: str | Path | None = None
    server_name: str | None = None

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            cert = Path(self.cert_file).read_bytes()
            key = Path(self.key_file).read_bytes()
            ca = Path(self.ca_file).read_bytes() if self.ca_file is not None else None
        except OSError as e:
            raise TransportError(f"cannot read TLS material: {e}") from e
        return cert, key, ca

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for a server (requires client certificates when a CA is given)."""
        cert, key, ca = self._read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a client channel (presents this process's certificate)."""
        cert, key, ca = self._read()
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


_COMMON_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A fixed 2 MiB stream window instead of BDP probing (which grows it to several MiB): what
    # gRPC itself holds in flight per pipe stays small and predictable (backpressure).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 2 << 20),
)
_SERVER_OPTIONS = (
    *_COMMON_OPTIONS,
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)
_CHANNEL_OPTIONS = (
    *_COMMON_OPTIONS,
    # We detect loss with sequence numbers and restart the job; transparent retries would
    # only buffer messages behind our back.
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


#: The health checking service's methods (answered without a token).
_HEALTH_METHODS = "/grpc.health.v1.Health/"


def make_server(
    auth: JobAuth,
    tls: TlsConfig | None = None,
    listen: str = "127.0.0.1:0",
    *,
    max_workers: int = 256,
    rejections: Rejections | None = None,
) -> tuple[grpc.Server, str]:
    """An unstarted gRPC server guarded by ``auth`` and bound to ``listen``.

    Returns the server and the ``host:port`` actually bound (``listen`` may use port 0).
    Add services, then call ``server.start()``. Every streaming RPC holds one thread of the
    pool while it lasts, so ``max_workers`` bounds the number of concurrent streams (threads
    are started only when needed). Refusals are logged and recorded in ``rejections``.
    The server answers health checks (``grpc.health.v1``, status SERVING) once started.
    """
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="malstrom-grpc"),
        interceptors=(_AuthInterceptor(auth, Rejections() if rejections is None else rejections),),
        options=_SERVER_OPTIONS,
    )
    host = listen.rsplit(":", 1)[0]
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.server_credentials())
    except RuntimeError as e:
        raise TransportError(f"cannot listen on {listen}: {e}") from e
    if not port:
        raise TransportError(f"cannot listen on {listen}")
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    return server, f"{host}:{port}"


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = getattr(base, "compression", None)


class _AuthMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the job's identity to the metadata of every call on a channel."""

    def __init__(self, auth: JobAuth) -> None:
        self._md = auth.metadata()

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(details, (*self._md, *(details.metadata or ())))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def make_channel(address: str, auth: JobAuth, tls: TlsConfig | None = None) -> grpc.Channel:
    """A client channel to ``address`` whose every call carries ``auth``'s metadata.

    TLS when ``tls`` is given; malstrom's options (message size, keepalive, fast reconnect,
    no transparent retries). Extra per-call metadata (a nonce) is merged in.
    """
    if tls is None:
        channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    else:
        options: Sequence[tuple[str, Any]] = _CHANNEL_OPTIONS
        if tls.server_name:
            options = (*options, ("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.intercept_channel(channel, _AuthMetadata(auth))


def new_nonce() -> str:
    """A random challenge for :func:`verify_server`."""
    return secrets.token_hex(16)
