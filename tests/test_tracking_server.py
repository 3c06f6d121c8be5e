"""Tracking against a real `mlflow server` on loopback, checked through MLflow's REST API.

- a 2-rank Keras training with hvdspar.GSpar: params, step and epoch metrics, artifacts; bytes in
  MLflow equal the compressors' own counters summed over ranks;
- the training CLI (python -m hvdspar.training.train) against the server with no tracking flag, then
  resumed from its checkpoint: one run, counters and steps continuing;
- Ctrl-C or SIGTERM in the middle of an epoch: every metric logged is delivered, the run is KILLED;
- the server killed mid-run and restarted on the same port and store: no metric is lost;
- 16 clients and a 2-rank training run at once, against servers on a real PostgreSQL and on SQLite:
  every metric stored exactly once.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvdspar.tracking.context import DEFAULT_LOG_EVERY
from tests.workers.tracking_mlflow_server import MlflowServer, metrics, params, tags

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "workers" / "tracking_train_worker.py"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.kill()


def tracking_env(server, experiment, **extra):
    return {"MLFLOW_TRACKING_URI": server.url, "HVDSPAR_EXPERIMENT": experiment, "MLFLOW_DISABLE_TELEMETRY": "true",
            "HVDSPAR_TRACKING_FLUSH_SECS": "1", **extra}


def test_two_rank_run_logs_summed_bytes_params_and_artifacts(server, horovodrun):
    steps, epochs, every = 10, 2, 5
    results, _ = horovodrun("tracking_train_worker", "--compressor", "gspar:rho=0.1", "--epochs", epochs,
                            "--steps", steps, "--seed", 5,
                            env=tracking_env(server, "two-rank", HVDSPAR_LOG_EVERY=str(every)))
    run_id = results[0]["run_id"]
    assert run_id and results[1]["run_id"] is None  # only rank 0 talks to MLflow
    (run,) = server.runs("two-rank")
    assert run["info"]["run_id"] == run_id and run["info"]["status"] == "FINISHED"

    p, m = params(run), metrics(run)
    assert p["compressor"].startswith("gspar:rho=0.1") and p["compressor.rho"] == "0.1" and p["num_ranks"] == "2"
    assert p["model"] == "mlp" and p["data"] == "synthetic" and p["optimizer"] == "sgd" and p["seed"] == "5"
    assert p["learning_rate"] == "0.1" and p["batch_size"] == "16" and p["log_every"] == str(every)
    assert p["version.tensorflow"].startswith("2.15") and p["version.horovod"] == "0.28.1"
    assert p["version.hvdspar"] and len(p["git_commit"]) in (40, len("unknown"))
    assert tags(run)["hvdspar.compressor"] == p["compressor"]

    # bytes summed over ranks == the compressors' own counters summed
    traffic = [r["traffic"] for r in results]
    sent = sum(t["bytes_sent"] for t in traffic)
    dense = sum(t["dense_bytes"] for t in traffic)
    assert all(t["steps"] == steps * epochs for t in traffic)
    assert m["bytes_sent"] == sent and m["dense_bytes"] == dense and 0 < sent < dense
    assert m["last_step_bytes_sent"] == sum(t["last_step_bytes_sent"] for t in traffic)
    assert m["compression_ratio"] == pytest.approx(sent / dense) and m["bits_communicated"] == 8 * sent
    assert m["bits_saved"] == 8 * (dense - sent)
    assert m["density"] == pytest.approx(sum(t["density"] for t in traffic) / 2, rel=1e-9)  # equal sizes per rank
    lo, hi = sorted(t["variance_ratio"] for t in traffic)
    assert lo - 1e-9 <= m["variance_ratio"] <= hi + 1e-9 and m["variance_ratio"] > 1  # pooled, unbiased Q: >= 1
    assert {"loss", "accuracy", "test_accuracy", "data_passes", "epoch_time_s"} <= set(m)

    # every logged step is there, the last one equal to the final counters
    step_bytes = server.history(run_id, "step/bytes_sent")
    assert [s for s, _ in step_bytes] == list(range(every, steps * epochs + 1, every))
    assert step_bytes[-1][1] == sent and all(a[1] < b[1] for a, b in zip(step_bytes, step_bytes[1:]))
    assert [s for s, _ in server.history(run_id, "step/loss")] == [s for s, _ in step_bytes]
    assert [s for s, _ in server.history(run_id, "loss")] == [1, 2]
    assert [s for s, _ in server.history(run_id, "bits_communicated")] == [1, 2]

    assert {"config.json", "config.yaml", "plots"} <= server.artifacts(run_id)
    assert server.artifacts(run_id, "plots") == {"plots/loss_vs_epochs.png", "plots/loss_vs_bits.png"}
    config = json.loads(server.get("get-artifact", path="config.json", run_uuid=run_id))
    assert config["compressor"] == p["compressor"] and config["num_ranks"] == 2
    png = server.get("get-artifact", path="plots/loss_vs_bits.png", run_uuid=run_id)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not (ROOT / "training" / "train.py").exists(), reason="training/train.py is not written yet")
def test_training_cli_tracks_by_default_and_resumes_into_the_same_run(server, horovodrun, tmp_path):
    """python -m hvdspar.training.train with no tracking flag, 1 epoch, then resumed from its checkpoint to 2."""
    def train(epochs):
        return horovodrun(["-m", "hvdspar.training.train", "--model", "logreg", "--data", "synthetic", "--epochs", str(epochs),
                           "--compressor", "gspar:rho=0.1", "--seed", "1", "--verbose", "0",
                           "--checkpoint-dir", str(tmp_path / "ckpt")], env=tracking_env(server, "cli"))

    _, output = train(1)
    runs = server.runs("cli")
    assert len(runs) == 1, output[-3000:]
    run = runs[0]
    run_id = run["info"]["run_id"]
    p, m = params(run), metrics(run)
    assert run["info"]["status"] == "FINISHED"
    assert p["model"] == "logreg" and p["data"] == "synthetic" and p["num_ranks"] == "2" and p["seed"] == "1"
    assert p["compressor"].startswith("gspar:rho=0.1") and p["optimizer"] == "sgd" and p["learning_rate"]
    assert p["batch_size"] == "8" and p["version.horovod"] == "0.28.1" and p["git_commit"]
    for key in ("loss", "suboptimality", "test_accuracy", "bytes_sent", "dense_bytes", "compression_ratio",
                "bits_communicated", "density", "variance_ratio", "data_passes"):
        assert key in m, key
    assert 0 < m["bytes_sent"] < m["dense_bytes"] and m["density"] == pytest.approx(0.1, rel=0.2)
    assert (tmp_path / "ckpt" / "mlflow_run_id").read_text().strip() == run_id
    assert {"config.json", "config.yaml", "plots"} <= server.artifacts(run_id)
    steps_per_epoch = int(p["steps_per_epoch"])

    _, output = train(2)  # resumes from the checkpoint: same run, counters and steps continue
    runs = server.runs("cli")
    assert [r["info"]["run_id"] for r in runs] == [run_id], output[-3000:]
    assert runs[0]["info"]["status"] == "FINISHED"
    assert tags(runs[0])["hvdspar.resumed_param.epochs"] == "2"
    sent = server.history(run_id, "bytes_sent")
    assert [s for s, _ in sent] == [1, 2] and 1.5 < sent[1][1] / sent[0][1] < 2.5
    assert [s for s, _ in server.history(run_id, "suboptimality")] == [1, 2]
    step_sent = server.history(run_id, "step/bytes_sent")
    every = DEFAULT_LOG_EVERY  # step metrics by default, across the resume
    assert 2 * steps_per_epoch >= every
    assert [s for s, _ in step_sent] == list(range(every, 2 * steps_per_epoch + 1, every))
    assert all(a[1] < b[1] for a, b in zip(step_sent, step_sent[1:]))


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_mid_epoch_delivers_every_metric_logged_and_marks_the_run_killed(server, tmp_path, sig):
    """Ctrl-C (SIGINT), or SIGTERM as horovodrun sends its ranks when interrupted, in the middle of epoch 2,
    with step metrics logged but not yet delivered (deliveries every 60 s): the process exits, the run is
    KILLED, and every metric in the spool is in MLflow."""
    import signal

    hold = tmp_path / "hold"
    hold.mkdir()
    steps, every = 40, 2
    env = {**os.environ, **tracking_env(server, f"interrupted-{sig}", HVDSPAR_LOG_EVERY=str(every),
                                        HVDSPAR_TRACKING_FLUSH_SECS="60"),
           "PYTHONPATH": str(ROOT), "HVDSPAR_TEST_OUT": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    spool = tmp_path / "ckpt" / "mlflow-spool" / "spool.jsonl"
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), "--compressor", "gspar:rho=0.1", "--epochs", "3", "--steps", str(steps),
         "--checkpoint-dir", str(tmp_path / "ckpt"), "--hold-dir", str(hold), "--sleep", "0.05"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def logged_steps():
            records = [json.loads(line) for line in spool.read_text().splitlines()] if spool.exists() else []
            return [r["s"] for r in records if r["t"] == "metrics" and "step/loss" in r["m"]]

        wait_for(lambda: (hold / "at1").exists() or worker.poll() is not None, 300, "epoch 1")
        (hold / "go1").touch()
        wait_for(lambda: any(s > steps + 4 for s in logged_steps()) or worker.poll() is not None, 120,
                 "step metrics of epoch 2")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        worker.send_signal(getattr(signal, sig))
        worker.wait(timeout=120)
        out = (tmp_path / "worker.log").read_text()
        assert worker.returncode != 0 and not (hold / "at2").exists(), out[-3000:]

        (run,) = server.runs(f"interrupted-{sig}")
        assert run["info"]["status"] == "KILLED", out[-3000:]
        logged = logged_steps()
        assert logged[-1] > steps and logged[-1] < 2 * steps  # stopped in the middle of epoch 2
        assert [s for s, _ in server.history(run["info"]["run_id"], "step/loss")] == logged
        assert [s for s, _ in server.history(run["info"]["run_id"], "step/bytes_sent")] == logged
        assert [s for s, _ in server.history(run["info"]["run_id"], "loss")] == [1]
    finally:
        if worker.poll() is None:
            worker.kill()


def test_server_killed_mid_run_loses_no_metric(server, tmp_path):
    """Epoch 1 with the server up, epoch 2 with it dead, epoch 3 after a restart (same port and store).

    Uses (and kills, and restarts) the module's server: keep this test last in the module."""
    hold = tmp_path / "hold"
    hold.mkdir()
    steps, epochs, every = 20, 3, 2
    env = {**os.environ, **tracking_env(server, "outage", HVDSPAR_LOG_EVERY=str(every)),
           "PYTHONPATH": str(ROOT), "HVDSPAR_TEST_OUT": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), "--compressor", "none", "--epochs", str(epochs), "--steps", str(steps),
         "--checkpoint-dir", str(tmp_path / "ckpt"), "--hold-dir", str(hold), "--sleep", "0.02"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def delivered(key, n):
            runs = server.runs("outage") if (tmp_path / "ckpt" / "mlflow_run_id").exists() else []
            return runs and len(server.history(runs[0]["info"]["run_id"], key)) >= n

        wait_for(lambda: (hold / "at1").exists() or worker.poll() is not None, 300, "epoch 1")
        wait_for(lambda: delivered("loss", 1), 60, "epoch 1 in MLflow")
        server.kill()
        (hold / "go1").touch()
        wait_for(lambda: (hold / "at2").exists() or worker.poll() is not None, 120, "epoch 2 (server down)")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        server.start()
        (hold / "go2").touch()
        wait_for(lambda: (hold / "at3").exists() or worker.poll() is not None, 120, "epoch 3")
        (hold / "go3").touch()
        assert worker.wait(timeout=300) == 0
        out = (tmp_path / "worker.log").read_text()
        assert "cannot reach the MLflow tracking store" in out and "is back" in out, out[-3000:]
        assert "stayed unreachable" not in out

        (run,) = server.runs("outage")
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        expected = list(range(every, steps * epochs + 1, every))
        for key in ("step/loss", "step/bytes_sent", "step/compression_ratio", "step/density"):
            assert [s for s, _ in server.history(run_id, key)] == expected, key
        assert [s for s, _ in server.history(run_id, "loss")] == [1, 2, 3]
        assert [s for s, _ in server.history(run_id, "test_accuracy")] == [1, 2, 3]
        assert {"config.json", "plots"} <= server.artifacts(run_id)
    finally:
        if worker.poll() is None:
            worker.kill()


def test_many_clients_and_a_training_run_at_once_land_exactly_once_on_postgresql_and_sqlite(horovodrun, tmp_path):
    """docker/compose.yaml's setup for a team: 16 Trackers (200 steps each) and a 2-rank training run log
    at once to an MLflow server (4 workers) on a real PostgreSQL; every metric is stored exactly once. The
    same load against a SQLite-backed server, reported beside it (benchmarks/tracking_load.py)."""
    import threading

    from benchmarks import tracking_load
    from tests.workers.postgres_server import why_absent

    if why_absent():
        pytest.skip(why_absent())
    servers, stop = tracking_load.start_servers(["postgresql", "sqlite"], tmp_path / "servers")
    try:
        rows, steps, epochs = [], 10, 2
        for backend, server in servers.items():
            training = {}

            def train():
                training["results"], _ = horovodrun(
                    "tracking_train_worker", "--compressor", "gspar:rho=0.1", "--epochs", epochs, "--steps", steps,
                    env=tracking_env(server, "load-training", HVDSPAR_LOG_EVERY="1"))

            thread = threading.Thread(target=train)
            thread.start()
            rows.append(tracking_load.measure(server, backend, 16, 200, 0.02, tmp_path / backend))
            thread.join(timeout=600)
            assert "results" in training, f"the 2-rank training run against {backend} failed"

            (run,) = server.runs("load-training")
            assert run["info"]["run_id"] == training["results"][0]["run_id"] and run["info"]["status"] == "FINISHED"
            for key in ("step/loss", "step/bytes_sent"):
                assert [s for s, _ in server.history(run["info"]["run_id"], key)] == list(range(1, steps * epochs + 1))
            assert [s for s, _ in server.history(run["info"]["run_id"], "loss")] == [1, 2]
            assert metrics(run)["bytes_sent"] == sum(r["traffic"]["bytes_sent"] for r in training["results"])
        print("\n" + tracking_load.table(rows))
        for row in rows:
            assert len({r["run_id"] for r in row["results"]}) == 16 and not any(r["fallback"] for r in row["results"])
            assert row["duplicated"] == 0 and row["missing"] == 0, tracking_load.table(rows)
    finally:
        stop()
