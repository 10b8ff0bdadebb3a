"""Observability test support: a SingleThreadRuntime job on a thread, watched through
``rt.state()`` and stopped through its HTTP endpoint."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from malstrom import SingleThreadRuntime, StreamProvider

TOKEN = "observe-test"


class Running:
    """``with Running(build) as job:`` runs ``build`` until it ends or :meth:`stop`."""

    def __init__(self, build: Callable[[StreamProvider], None]) -> None:
        self.rt = SingleThreadRuntime(build, http="127.0.0.1:0", token=TOKEN)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.rt.execute()
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self) -> Running:
        self.thread.start()
        self.wait(lambda s: s is not None and self.rt.http_url is not None, "the job starts")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.thread.is_alive():
            self.stop()

    def state(self) -> Any:
        return self.rt.state()

    def wait(self, pred: Callable[[Any], Any], what: str, timeout: float = 60) -> Any:
        """Poll the job's state until ``pred(state)`` is true; returns what it returned."""
        deadline = time.monotonic() + timeout
        while True:
            assert not self.errors, self.errors
            got = pred(self.state())
            if got:
                return got
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.1)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.rt.http_url}metrics", timeout=30) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        req = urllib.request.Request(f"{self.rt.http_url}api/stop", data=b"{}", method="POST")
        req.add_header("Authorization", f"Bearer {TOKEN}")
        urllib.request.urlopen(req, timeout=60).read()
        self.join()

    def join(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job did not end"
        assert not self.errors, self.errors


def part_lags(state: Any, operator: str) -> dict[str, int]:
    """``{part: lag}`` of one source, from ``state["source_parts"]``."""
    return {p["part"]: p["lag"] for p in state["source_parts"] if p["operator"] == operator}


def lag_samples(text: str) -> dict[tuple[str, str], float]:
    """``{(operator, part): value}`` of ``malstrom_source_lag`` in a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "malstrom_source_lag":
            for s in fam.samples:
                out[(s.labels["operator"], s.labels["part"])] = s.value
    return out
