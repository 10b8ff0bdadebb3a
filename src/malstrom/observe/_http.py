"""The coordinator's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, the dashboard at
``/`` and its JSON API (``/api/state``; ``POST /api/snapshot|rescale|stop`` with the job's
admin token as ``Authorization: Bearer TOKEN``).

A ``ThreadingHTTPServer`` on a daemon thread: requests only read the observer (under its
lock) or queue an operation with the job's supervisor, so they never stall the job.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from malstrom.observe._aggregate import JobObserver

__all__ = ["ObserveServer", "parse_address", "serve"]

log = logging.getLogger("malstrom.observe")

Act = Callable[[str, Any], Any]
"""``act(kind, arg)``: run ``snapshot`` / ``rescale`` (arg: workers) / ``stop``, blocking;
returns the result or raises."""

_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any free port) as (host, port)."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"http address {value!r}: give HOST:PORT (port 0: any free port)")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Collector:
    def __init__(self, observer: JobObserver) -> None:
        self.observer = observer

    def collect(self) -> Any:
        return self.observer.prometheus_families()


class ObserveServer:
    """A running endpoint; :attr:`url` is where it listens (the port chosen if 0 was asked)."""

    def __init__(self, address: str, observer: JobObserver, token: str | None, act: Act | None):
        from prometheus_client import CollectorRegistry

        host, port = parse_address(address)
        self.observer = observer
        self.token = token
        self.act = act
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(observer))
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as e:
            raise OSError(e.errno, f"cannot serve http at {address}: {e.strerror}") from e
        self._httpd.daemon_threads = True
        shown = host if ":" not in host else f"[{host}]"
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        self.port = self._httpd.server_address[1]
        self.url = f"http://{shown}:{self.port}/"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="malstrom-http", daemon=True
        )
        self._thread.start()
        log.warning("malstrom: dashboard and metrics at %s (job %s)", self.url, observer.job)

    def close(self) -> None:
        """Stop serving (idempotent)."""
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(address: str, observer: JobObserver, token: str | None, act: Act | None) -> ObserveServer:
    """Serve ``observer`` at ``address`` (``HOST:PORT``) until :meth:`ObserveServer.close`."""
    return ObserveServer(address, observer, token, act)


def _handler(server: ObserveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "malstrom"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            self._send(code, json.dumps(data, default=str).encode(), "application/json")

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            try:
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    status = server.observer.status() if server.observer.status else {}
                    phase = status.get("phase", "running")
                    ok = phase not in ("failed", "killed")
                    self._json(200 if ok else 503, {"ok": ok, "phase": phase})
                elif path == "/api/state":
                    self._json(200, server.observer.state())
                elif path in _ASSETS:
                    name, ctype = _ASSETS[path]
                    body = resources.files("malstrom.observe").joinpath("dashboard", name)
                    self._send(200, body.read_bytes(), ctype)
                else:
                    self._json(404, {"error": f"no such page {path}"})
            except Exception as e:  # never let one request kill the server thread
                log.exception("http GET %s failed", path)
                self._json(500, {"error": f"{type(e).__name__}: {e}"})

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            kind = parts.path.removeprefix("/api/")
            if kind not in ("snapshot", "rescale", "stop") or not parts.path.startswith("/api/"):
                self._json(404, {"error": f"no such action {parts.path}"})
                return
            given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not server.token or not hmac.compare_digest(given.encode(), server.token.encode()):
                self._json(401, {"error": "give the job's admin token (Authorization: Bearer)"})
                return
            if server.act is None:
                self._json(501, {"error": f"this runtime cannot {kind}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            arg = None
            if kind == "rescale":
                raw = body.get("workers", parse_qs(parts.query).get("workers", [None])[0])
                try:
                    arg = int(raw)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    self._json(400, {"error": f"rescale: workers must be an int, got {raw!r}"})
                    return
            try:
                result = server.act(kind, arg)
            except Exception as e:
                self._json(409, {"error": f"{kind} refused: {e}"})
                return
            self._json(200, {"ok": True, "result": result})

    return Handler
