"""The kopf handlers of the operator: a thin adapter from kopf's events to
:meth:`Operator.reconcile_once <malstrom.k8s._runner.Operator.reconcile_once>`.

Every event of a MalstromJob (created, spec changed, operator restarted) and a timer every few
seconds run the same reconcile round; deletion runs it until the job is stopped (kopf holds
its finalizer until then). Run it with ``python -m malstrom.k8s operator``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from malstrom.k8s._runner import Operator
from malstrom.k8s._spec import GROUP, PLURAL, VERSION

__all__ = ["operator"]

log = logging.getLogger("malstrom.k8s")

_operator: Operator | None = None
#: How often the timer looks at every job (seconds).
INTERVAL = 5.0


def operator() -> Operator:
    """The process's operator (a :class:`KubeApi` on the cluster it runs in)."""
    global _operator
    if _operator is None:
        from malstrom.k8s._kube import KubeApi

        _operator = Operator(KubeApi())
    return _operator


def _plain(value: Any) -> Any:
    """kopf's read-only body views as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "malstrom.io/finalizer"
    settings.posting.level = logging.WARNING
    # Rescales and stops wait for the coordinator; other jobs go on meanwhile.
    settings.execution.max_workers = 16


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def _on_change(body: Any, **_: Any) -> None:
    operator().reconcile_once(_plain(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, initial_delay=INTERVAL)
def _on_timer(body: Any, **_: Any) -> None:
    if not (body.get("metadata") or {}).get("deletionTimestamp"):
        operator().reconcile_once(_plain(body))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def _on_delete(body: Any, **_: Any) -> None:
    plan = operator().reconcile_once(_plain(body))
    if not plan.finalized:
        raise kopf.TemporaryError("still stopping the job", delay=plan.requeue or 5.0)
