"""A coordinator answers admin calls that were waiting when its job ended, before it closes
its server (an operator's stop racing the job's end gets "the job is finished", not a
cancelled call)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from malstrom import SingleThreadRuntime
from malstrom.runtime._multi import ClusterLauncher, JobSettings, Supervisor
from malstrom.snapshot import LocalDiskPersistence
from malstrom.sources import IterSource
from malstrom.transport._grpc_auth import JobAuth
from malstrom.transport._grpc_control import AdminClient, AdminError

pytestmark = pytest.mark.timeout(60)


def build(provider: Any) -> None:
    provider.new_stream().source("numbers", IterSource(range(10))).map("double", lambda x: x * 2)


def test_an_admin_call_waiting_as_the_job_ends_gets_its_answer(tmp_path: Path) -> None:
    SingleThreadRuntime(build, persistence=LocalDiskPersistence(tmp_path)).execute()
    auth = JobAuth.local("ending")
    sup = Supervisor(
        JobSettings(
            parallelism=1,
            persistence=LocalDiskPersistence(tmp_path),
            snapshot_interval=None,
            max_restarts=0,
            heartbeat_timeout=30,
            auth=auth,
        ),
        ClusterLauncher(),
    )
    answers: list[Any] = []

    def stop() -> None:
        with AdminClient(sup.address, auth) as admin:
            try:
                answers.append(admin.call("stop", json.dumps({"timeout": 30}).encode(), 30))
            except Exception as e:
                answers.append(e)

    caller = threading.Thread(target=stop)
    caller.start()
    while sup.requests.empty():  # the stop is queued: now let the (completed) job end
        threading.Event().wait(0.01)
    sup.start()
    caller.join(30)
    assert sup.done.wait(10) and sup.phase == "finished"
    assert len(answers) == 1 and isinstance(answers[0], AdminError), answers
    assert "the job is finished" in str(answers[0])
