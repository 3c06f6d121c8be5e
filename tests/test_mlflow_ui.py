"""End to end: runs logged by tracking show in the MLflow UI with their bytes and accuracy (headless Chromium).

Two runs (an hvdspar-like compressor at 10% of the dense bytes, and a dense one) are logged through
``hvdspar.tracking.make_tracker`` to a real ``mlflow server``; Playwright then opens the UI as a user would
(tracking/README.md, "Comparing runs"): the runs table with the bytes/accuracy columns, the chart
view, and the compare page. Screenshots go to the test's tmp dir, and to out/ (or the directory
HVDSPAR_SAVE_SCREENSHOTS names) when HVDSPAR_SAVE_SCREENSHOTS is set.
"""

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from tests.workers.tracking_mlflow_server import MlflowServer

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPERIMENT = "ui-e2e"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's /usr/bin/chromium"),
]


class Compressor:
    """Stands in for a compressor: fixed bytes per step (hvdspar-like: has traffic() and spec())."""

    def __init__(self, name, per_step, dense=1000):
        self.name, self.per_step, self.dense, self.steps = name, per_step, dense, 0

    def spec(self):
        return self.name

    def config(self):
        return {"seed": 1}

    def traffic(self):
        return {"bytes_sent": self.per_step * self.steps, "dense_bytes": self.dense * self.steps,
                "density": self.per_step / self.dense, "variance_ratio": self.dense / self.per_step}


def log_run(name, per_step, accuracy):
    from hvdspar.tracking import make_tracker

    comp = Compressor(name, per_step)
    tracker = make_tracker({"model": "logreg", "data": "synthetic", "log_every": 5, "run_name": name}, comp)
    for epoch in range(3):
        tracker.epoch_begin()
        for s in range(1, 11):
            comp.steps += 1
            step = epoch * 10 + s
            tracker.log_step(step, {"loss": 1.0 / step, "accuracy": accuracy * step / 30})
        tracker.log_epoch(epoch + 1, {"loss": 1.0 / (epoch + 1), "test_accuracy": accuracy - 0.1 * (2 - epoch)},
                          step=(epoch + 1) * 10)
    tracker.close()
    return tracker.run_id


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-ui")
    server = MlflowServer(root / "server").start()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "HVDSPAR_EXPERIMENT", "MLFLOW_DISABLE_TELEMETRY",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ.update(MLFLOW_TRACKING_URI=server.url, HVDSPAR_EXPERIMENT=EXPERIMENT, MLFLOW_DISABLE_TELEMETRY="true")
    cwd = os.getcwd()
    os.chdir(root)  # the trackers' spools live in the working directory
    try:
        runs = {"gspar-rho0.1": log_run("gspar-rho0.1", 100, 0.9), "dense-none": log_run("dense-none", 1000, 0.8)}
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    experiment_id = server.api("experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]["experiment_id"]
    yield server, experiment_id, runs
    server.kill()


def save(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("HVDSPAR_SAVE_SCREENSHOTS")
    if target:
        out = Path(target) if "/" in target else ROOT / "out"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / name)
    return path


def test_runs_and_their_bytes_and_accuracy_show_in_the_ui(logged, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server, experiment_id, runs = logged
    expect.set_options(timeout=120_000)  # a loaded CI machine renders the UI slowly
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 2000, "height": 1000})
            page.set_default_timeout(120_000)

            # 1. the experiment's runs table, with the communication and accuracy columns added
            page.goto(f"{server.url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning",
                      wait_until="domcontentloaded")
            for name in runs:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            close = page.get_by_role("button", name="Close")  # the assistant panel, if open
            if close.count():
                close.first.click()
            page.get_by_role("button", name="Columns").click()
            for key in ("bytes_sent", "compression_ratio", "bits_communicated", "test_accuracy"):
                page.get_by_text(key, exact=True).first.click()
            page.keyboard.press("Escape")
            rows = page.locator("[role=row]")
            expect(rows.filter(has_text="bits_communicated").first).to_be_visible()
            # per run: bytes 100*30, ratio 0.1, bits 8*3000, test accuracy 0.9 | bytes 30000, 1, 240000, 0.8
            expect(rows.filter(has_text="3000").filter(has_text="24000").filter(has_text="0.9").first).to_be_visible()
            expect(rows.filter(has_text="30000").filter(has_text="240000").filter(has_text="0.8").first).to_be_visible()
            save(page, tmp_path, "mlflow_ui_runs_table.png")

            # 2. the chart view: every step metric of both runs against steps
            page.locator("label:has(input[value=CHART])").click()
            for chart in ("step/bytes_sent", "step/bits_communicated"):  # charts below the fold render lazily
                expect(page.get_by_text(chart, exact=True).first).to_be_visible()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()  # the charts have drawn
            page.wait_for_timeout(1000)
            save(page, tmp_path, "mlflow_ui_charts.png")

            # 3. the compare page of the two runs: params and metrics side by side
            ids = urllib.parse.quote(json.dumps(list(runs.values())))
            page.goto(f"{server.url}/#/compare-runs?runs={ids}&experiments=" + urllib.parse.quote(json.dumps([experiment_id])),
                      wait_until="domcontentloaded")
            expect(page.get_by_text("Comparing 2 Runs", exact=False).first).to_be_visible()
            # (the metrics list there is a scrolled, virtualized table: check names near its top)
            for text in ("bits_communicated", "bytes_sent", "compression_ratio", "gspar-rho0.1", "dense-none"):
                expect(page.get_by_text(text, exact=True).first).to_be_visible()
            page.get_by_text("bytes_sent", exact=True).first.scroll_into_view_if_needed()
            save(page, tmp_path, "mlflow_ui_compare.png")
        finally:
            browser.close()
