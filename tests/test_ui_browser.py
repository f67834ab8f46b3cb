"""The Prefect UI in a real headless browser (Debian's chromium via Playwright): open the
deployments page, start the train_classifier deployment with a custom `epochs`, see it complete.

A missing browser fails the test (CI installs it in .ci/run); it is never skipped.
"""
import re
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from tests import servers

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.mark.slow
def test_start_a_run_from_the_ui(tmp_path):
    assert CHROMIUM.is_file() or shutil.which("chromium"), \
        "no /usr/bin/chromium: `make browser` (which `make test` runs) installs it"
    from playwright.sync_api import expect, sync_playwright
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo = servers.small_repo(tmp_path / "repo")
    serve_log = tmp_path / "serve.log"
    run_name = f"ui-{uuid.uuid4().hex[:8]}"
    with servers.prefect_server(tmp_path) as (api, env), temporary_settings({PREFECT_API_URL: api}), \
            servers.serving(repo, env, serve_log) as proc, get_client(sync_client=True) as client, \
            sync_playwright() as pw:
        servers.wait_for_deployment(client, "stage-train_classifier/train_classifier", proc, serve_log)
        ui = api.removesuffix("/api")
        browser = pw.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium")),
                                     args=ARGS)
        try:
            print(f"chromium {browser.version}")  # Playwright's driver targets a newer one: keep a record
            page = browser.new_page()
            page.set_default_timeout(60_000)
            # The classic UI (/deployments); `/` redirects to the v2 UI, which lays the form out differently.
            page.goto(f"{ui}/deployments")
            page.get_by_role("link", name="train_classifier", exact=True).click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("link", name="Custom run").click()
            page.wait_for_url(re.compile(r".*/run\?parameters=.*"))
            page.get_by_role("button", name="int", exact=True).click()  # epochs: from None to an int
            epochs = page.get_by_role("spinbutton")
            epochs.wait_for()
            epochs.fill("2")
            page.get_by_role("textbox").first.fill(run_name)
            expect(epochs).to_have_value("2")
            expect(page.get_by_role("textbox").first).to_have_value(run_name)
            page.get_by_role("button", name="Submit").click()

            flow_run = None
            for _ in range(60):
                found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
                if found:
                    flow_run = found[0]
                    break
                page.wait_for_timeout(1000)
            assert flow_run is not None, "the UI's Submit created no flow run"
            assert flow_run.parameters.get("epochs") == 2
            flow_run = servers.wait_for_run(client, flow_run.id, timeout=600, log=serve_log)
            assert flow_run.state.is_completed(), f"{flow_run.state}\n{serve_log.read_text()[-4000:]}"

            page.goto(f"{ui}/runs/flow-run/{flow_run.id}")  # a fresh page, not stale content
            expect(page.get_by_text(run_name).first).to_be_visible()
            expect(page.get_by_text("Completed").first).to_be_visible()
        finally:
            browser.close()

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train_classifier"]["params"]["params.yaml"]["classifier"]["epochs"] == 2
    assert "export_maps" not in lock["stages"]  # only the deployment's stage and its upstream ran
