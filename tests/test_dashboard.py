"""The dashboard in a real browser (headless Chromium over the DevTools protocol) on a job
running in worker processes: every operator in the graph, numbers moving, a rescale from the
page, and a screenshot (kept next to the test's tmp_path)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_support import Browser, chromium_or_skip_reason
from jobs import observe_job

from malstrom import MultiProcessRuntime

OPERATORS = ["trickle", "stamp", "in-order", "tag", "by-seq", "count", "drop"]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_dashboard_in_chromium(tmp_path: Path) -> None:
    chromium, why = chromium_or_skip_reason()
    if chromium is None:
        pytest.skip(why)
    rt = MultiProcessRuntime(
        observe_job.build, parallelism=1, http="127.0.0.1:0", token="sesame", snapshot_interval=1
    )
    handle = rt.start()
    browser = None
    try:
        url = handle.http_url
        assert url is not None and not url.endswith(":0/")
        browser = Browser(chromium)
        browser.goto(f"{url}#token=sesame")
        # Every operator of the job is a node of the graph.
        names = browser.wait_for(
            "(() => { const n = [...document.querySelectorAll('#graph .node')]"
            ".map(g => g.dataset.name); return n.length >= 7 ? n : null })()"
        )
        assert sorted(names) == sorted(OPERATORS)
        # Numbers move: the sink's count grows between two looks.
        count = (
            "Number(document.querySelector('#graph .node[data-name=\"drop\"]')"
            ".dataset.records || 0)"
        )
        first = browser.wait_for(f"{count} > 0 && {count}")
        browser.wait_for(f"{count} > {first}")
        browser.wait_for("document.getElementById('throughput').textContent !== '…'")
        # The event-time lag is shown (the job stamps records with the wall clock).
        browser.wait_for("/ s$/.test(document.getElementById('lag').textContent)")
        assert browser.eval("document.getElementById('workers-count').textContent") == "1"
        # The operator table: the source's unread column shows its parts' lag; operators
        # that are no source show none.
        cell = (
            "[...document.querySelectorAll('#operators tbody tr')]"
            ".find(r => r.cells[0].textContent === '{}').cells[{}].textContent"
        )
        header = "document.querySelectorAll('#operators thead th')[6].textContent"
        assert browser.eval(header) == "unread"
        browser.wait_for(f"{cell.format('trickle', 6)} === '0'")
        assert browser.eval(cell.format("count", 6)) == "\u2013"  # an en dash: none
        # A rescale from the page: 1 -> 2 workers.
        browser.eval(
            "document.getElementById('rescale-n').value = '2';"
            "document.getElementById('rescale-btn').click(); true"
        )
        browser.wait_for(
            "/rescale: done/.test(document.getElementById('action-result').textContent)",
            timeout=120,
        )
        browser.wait_for("document.getElementById('workers-count').textContent === '2'")
        assert handle.status()["workers"] == [0, 1]
        browser.wait_for(
            "/rescaled to 2 workers/.test(document.getElementById('events').textContent)"
        )
        # Both workers report: the workers table has two rows.
        browser.wait_for("document.querySelectorAll('#workers tbody tr').length === 2")
        browser.wait_for("document.querySelectorAll('#snapshots tbody tr').length > 0")
        shot = tmp_path / "dashboard.png"
        browser.screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # A wrong token is refused.
        browser.eval(
            "document.getElementById('token').value = 'wrong';"
            "document.getElementById('snapshot-btn').click(); true"
        )
        browser.wait_for(
            "/snapshot failed: .*admin token/.test("
            "document.getElementById('action-result').textContent)"
        )
        # /metrics and /healthz of the same endpoint.
        code, body = _get(url + "metrics")
        text = body.decode()
        assert code == 200
        assert 'malstrom_records_in_total{job="' in text
        assert 'operator="count",worker="1"' in text or 'worker="1"' in text
        assert "malstrom_user_even_records_total" in text
        assert "malstrom_rescales_total" in text
        assert 'malstrom_records_routed_total{job="' in text  # key_distribute, 2 workers
        assert "malstrom_backpressured_seconds_total" in text
        code, body = _get(url + "healthz")
        assert code == 200 and json.loads(body)["ok"] is True
    finally:
        if browser is not None:
            browser.close()
        handle.stop(timeout=120)
