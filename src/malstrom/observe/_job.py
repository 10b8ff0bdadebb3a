"""What a runtime starts to be observed: the observer its coordinator reports to and, when
asked for, the HTTP endpoint serving it."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from malstrom.observe._aggregate import JobObserver, describe_graph
from malstrom.observe._http import Act, ObserveServer, serve

__all__ = ["Observation", "OperationQueue", "observe"]

log = logging.getLogger("malstrom.observe")


@dataclass
class Observation:
    observer: JobObserver
    server: ObserveServer | None

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def observe(
    job: str,
    graph: Any,
    *,
    http: str | None,
    token: str | None,
    act: Act | None,
    status: Callable[[], dict[str, Any]] | None,
) -> Observation:
    """An observer for ``job`` (``graph``: a built graph or its description), served at
    ``http`` (``HOST:PORT``) when given."""
    desc = graph if isinstance(graph, dict) or graph is None else describe_graph(graph)
    observer = JobObserver(job, desc or {"nodes": [], "edges": []}, status)
    server = serve(http, observer, token, act) if http else None
    return Observation(observer, server)


class OperationQueue:
    """Operations asked for from the HTTP thread, run by the job's own loop (single-thread
    runtime): :meth:`act` queues and waits, :meth:`serve` hands them to the coordinator."""

    def __init__(self, timeout: float = 300.0) -> None:
        self._q: queue.SimpleQueue[tuple[str, Any, Future[Any]]] = queue.SimpleQueue()
        self.timeout = timeout

    def act(self, kind: str, arg: Any) -> Any:
        fut: Future[Any] = Future()
        self._q.put((kind, arg, fut))
        return fut.result(self.timeout)

    def serve(self, coord: Any) -> None:
        while True:
            try:
                kind, _arg, fut = self._q.get_nowait()
            except queue.Empty:
                return

            def done(value: Any, err: BaseException | None, fut: Future[Any] = fut) -> None:
                if err is not None:
                    fut.set_exception(err)
                else:
                    fut.set_result(value)

            try:
                if kind == "snapshot":
                    coord.request_snapshot(done)
                elif kind == "stop":
                    coord.request_stop(done)
                else:
                    raise ValueError(
                        "SingleThreadRuntime runs one worker in this thread: it cannot rescale "
                        "(run the job with MultiProcessRuntime or `malstrom run` to rescale)"
                    )
            except Exception as e:
                fut.set_exception(e)

    def fail_all(self, err: BaseException) -> None:
        while True:
            try:
                _, _, fut = self._q.get_nowait()
            except queue.Empty:
                return
            fut.set_exception(err)
