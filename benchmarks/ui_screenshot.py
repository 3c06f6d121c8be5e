"""The README's MLflow picture: the compare page of an experiment's latest runs, as a user sees it.

    scripts/main.sh                                   # logs the main job's runs to ./mlflow.db
    .venv/bin/python -m benchmarks.ui_screenshot      # -> docs/mlflow_ui_compare.png

Serves the store (``--store``, default ``sqlite:///mlflow.db`` in the working directory) with
``mlflow server`` on a free loopback port, opens the compare page of the ``--runs`` latest runs of
``--experiment`` (default "hvdspar-main", the main job's) in headless Chromium (Playwright), and
saves the page with the communication metrics in view. Needs Debian's chromium
(``scripts/setup.sh --test`` installs it).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store, port):
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", store,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"ui_screenshot: mlflow server on {store} did not come up")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="sqlite:///" + os.path.abspath("mlflow.db"))
    p.add_argument("--experiment", default="hvdspar-main")
    p.add_argument("--runs", type=int, default=3, help="how many of the latest runs to compare")
    p.add_argument("--out", default="docs/mlflow_ui_compare.png")
    args = p.parse_args(argv)
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    client = MlflowClient(tracking_uri=args.store)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"ui_screenshot: no experiment {args.experiment!r} in {args.store} (run scripts/main.sh)")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=args.runs)
    if len(runs) < 2:
        raise SystemExit(f"ui_screenshot: {args.experiment!r} has {len(runs)} runs; need 2 to compare")
    port = free_port()
    server = serve(args.store, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1550})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            ids = urllib.parse.quote(json.dumps([r.info.run_id for r in reversed(runs)]))
            page.goto(f"{url}/#/compare-runs?runs={ids}&experiments=" + urllib.parse.quote(json.dumps([exp.experiment_id])),
                      wait_until="domcontentloaded")
            expect(page.get_by_text(f"Comparing {len(runs)} Runs", exact=False).first).to_be_visible()
            for text in ("bytes_sent", "compression_ratio"):
                expect(page.get_by_text(text, exact=True).first).to_be_visible()
            close = page.get_by_role("button", name="Close")  # the assistant panel, if open
            if close.count():
                close.first.click()
            page.get_by_text("Show diff only", exact=True).first.click()  # the params that differ: the spec
            page.get_by_text("Run details", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1500)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, clip={"x": 0, "y": 0, "width": 1400, "height": 1200})
            browser.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    print(f"wrote {args.out} ({', '.join(r.info.run_name for r in reversed(runs))})")


if __name__ == "__main__":
    main()
