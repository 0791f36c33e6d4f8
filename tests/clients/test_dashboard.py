"""The dashboard (`GET /dashboard`) driven in a real headless browser: Debian's `chromium`,
through Playwright's Python API (never a downloaded browser). It checks, against a daemon with an
admin token and the fake upstreams, that the page loads without console errors, lists the
example model, shows a streaming run while it streams and after it ends, groups spend by a
metadata key exactly as `/v1/usage` does, cancels a run from its button, and shows (then deletes)
a run's stored payload. Screenshots go to `target/test-artifacts/dashboard/`.
"""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, hearth_with_fakes

ADMIN_TOKEN = "dashboard-test-admin-token"
ARTIFACTS = ROOT / "target" / "test-artifacts" / "dashboard"


def chromium_path() -> str:
    path = os.environ.get("HEARTH_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("the dashboard test needs Debian's chromium (`apt-get install chromium`)")
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dashboard")
    with hearth_with_fakes(directory, {"HEARTH_ADMIN_TOKEN": ADMIN_TOKEN}) as url:
        yield url


def call(url, body=None, headers=None, method=None):
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                     headers={"content-type": "application/json", **(headers or {})},
                                     method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.headers, json.loads(response.read() or b"null")


def chat(base, model, team, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return urllib.request.urlopen(urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json",
                 "x-hearth-metadata": json.dumps({"team": team})}), timeout=120)


class SlowStream:
    """A streamed chat run on the slow upstream, read in the background until it ends."""

    def __init__(self, base):
        self.response = chat(base, "upstream-slow", "green", stream=True)
        self.run_id = self.response.headers["x-hearth-run-id"]
        self.frames = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.response:
            if line.startswith(b"data: "):
                self.frames.append(line[6:].strip())

    def wait(self):
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the stream ended"


def test_dashboard_shows_catalog_runs_spend_and_cancels(daemon):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for team in ["red", "red", "blue"]:
        chat(daemon, "upstream-priced", team).read()
    slow = SlowStream(daemon)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{daemon}/dashboard")
        # The admin token is typed once; the page keeps it for the tab.
        page.fill("#token-input", ADMIN_TOKEN)
        page.locator("#token-form").locator("button[type=submit]").click()

        expect(page.locator('#catalog-table tr[data-model="tiny-llama"]')).to_be_visible()
        running = page.locator(f'#runs-table tr[data-run-id="{slow.run_id}"]')
        expect(running).to_be_visible()
        expect(running).to_contain_text("upstream-slow")
        page.screenshot(path=str(ARTIFACTS / "running.png"), full_page=True)

        # Spend grouped by a metadata key, as /v1/usage groups it.
        page.select_option("#group-by", "metadata")
        page.fill("#metadata-key", "team")
        page.locator("#metadata-key").press("Enter")
        _, usage = call(f"{daemon}/v1/usage?group_by=metadata.team")
        expected = {g["key"]: g["requests"] for g in usage["data"]}
        assert expected["red"] == 2 and expected["blue"] == 1, expected
        for key, requests in expected.items():
            row = page.locator(f'#usage-table tr[data-key="{key or ""}"]')
            expect(row).to_contain_text(str(requests))
        page.screenshot(path=str(ARTIFACTS / "spend-by-team.png"), full_page=True)

        # Cancelled from its button: the stream ends with a cancelled error, the run leaves
        # the live list, and its run page shows how it ended.
        running.locator("button.cancel").click()
        slow.wait()
        assert b"cancel" in slow.frames[-2] or b"cancel" in slow.frames[-1], slow.frames[-3:]
        expect(running).to_have_count(0)
        page.goto(f"{daemon}/dashboard#run/{slow.run_id}")
        expect(page.locator("#run-page")).to_contain_text("cancelled")
        expect(page.locator("#run-payload")).to_contain_text("No payload stored")
        page.screenshot(path=str(ARTIFACTS / "run-cancelled.png"), full_page=True)

        # A run whose request asked for its payload: the run page shows the request and the
        # answer, and its button deletes them.
        body = {"model": "upstream-priced", "messages": [{"role": "user", "content": "Keep this"}]}
        headers, answer = call(f"{daemon}/v1/chat/completions", body,
                               headers={"x-hearth-collect-log-payload": "true"})
        kept = headers["x-hearth-run-id"]
        page.goto(f"{daemon}/dashboard#run/{kept}")
        expect(page.locator("#run-payload .payload-request")).to_contain_text("Keep this")
        reply = answer["choices"][0]["message"]["content"]
        expect(page.locator("#run-payload .payload-response")).to_contain_text(reply)
        page.screenshot(path=str(ARTIFACTS / "run-payload.png"), full_page=True)
        page.locator("#run-payload button.delete-payload").click()
        expect(page.locator("#run-payload")).to_contain_text("No payload stored")
        browser.close()
    assert problems == [], problems
    _, record = call(f"{daemon}/admin/runs/{slow.run_id}",
                     headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert record["record"]["status"] == "cancelled", record
    with pytest.raises(urllib.error.HTTPError) as gone:
        call(f"{daemon}/admin/runs/{kept}/payload",
             headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert gone.value.code == 404, "the button deleted the payload"
