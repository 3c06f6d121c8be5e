"""MLflow tracking without a server: params, byte accounting, the spool, fallback, resume, sweeps.

The 2-rank checks against a real tracking server are in test_tracking_server.py, the UI in
test_mlflow_ui.py.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class FakeCompressor:
    """An hvdspar-like compressor with fixed per-step traffic (no TensorFlow needed)."""

    spec_name = "fake"

    def __init__(self, per_step=100, dense=1000):
        self.per_step, self.dense, self.steps = per_step, dense, 0

    def spec(self):
        return "fake:rho=0.1"

    def config(self):
        return {"rho": 0.1, "seed": 7}

    def traffic(self):
        s = self.steps
        return {"bytes_sent": self.per_step * s, "dense_bytes": self.dense * s, "last_step_bytes_sent": self.per_step,
                "last_step_dense_bytes": self.dense, "density": 0.1, "variance_ratio": 3.0, "steps": s,
                "tensors": 3, "dense_tensors": 2}


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    """A clean working directory and no tracking settings from the outside."""
    for var in ("MLFLOW_TRACKING_URI", "HVDSPAR_EXPERIMENT", "MLFLOW_EXPERIMENT_NAME", "HVDSPAR_PARENT_RUN_ID",
                "HVDSPAR_RUN_NAME", "HVDSPAR_LOG_EVERY", "HVDSPAR_TRACKING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("HVDSPAR_TRACKING_FLUSH_SECS", "0.2")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def history(c, run_id, key):
    return [(m.step, m.value) for m in c.get_metric_history(run_id, key)]


def train(tracker, compressor, epochs=2, steps=20, first_epoch=0):
    for epoch in range(first_epoch, epochs):
        tracker.epoch_begin()
        for s in range(1, steps + 1):
            compressor.steps += 1
            tracker.log_step(epoch * steps + s, {"loss": 1.0 / (epoch * steps + s)})
        tracker.log_epoch(epoch + 1, {"loss": 1.0 / (epoch + 1), "test_accuracy": 0.5 + 0.1 * epoch},
                          step=(epoch + 1) * steps)


def test_params_name_everything(local_env):
    import hvdspar
    from hvdspar.tracking.params import flatten, git_commit, run_config

    config = run_config({"model": "logreg", "lr": 0.5, "nested": {"a": 1}}, hvdspar.GSpar(rho=0.01, seed=3), 2)
    flat = flatten(config)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert flat["compressor"].startswith("gspar:rho=0.01") and flat["compressor.rho"] == "0.01"
    assert flat["seed"] == "3" and flat["num_ranks"] == "2" and flat["nested.a"] == "1" and flat["lr"] == "0.5"
    assert flat["git_commit"] == head
    for lib in ("hvdspar", "tensorflow", "horovod", "mlflow"):
        assert flat[f"version.{lib}"] not in ("", "unknown", "not installed")
    assert git_commit(path=local_env) == "unknown"  # neither the path nor the cwd is a repository
    assert len(flatten({"long": "x" * 10000})["long"]) == 6000


def test_dense_accounting_for_horovod_none_and_fp16():
    import tensorflow as tf
    from horovod.tensorflow.compression import Compression

    from hvdspar.tracking.meter import TrafficMeter, summarize

    variables = [tf.Variable(tf.zeros([10, 3])), tf.Variable(tf.zeros([3], tf.float64)), tf.Variable([1, 2], dtype=tf.int32)]
    dense = 30 * 4 + 3 * 8 + 2 * 4
    none = summarize(TrafficMeter(Compression.none, num_ranks=2, variables=variables).local(5))
    assert none["bytes_sent"] == none["dense_bytes"] == 5 * dense and none["compression_ratio"] == 1.0
    assert none["last_step_bytes_sent"] == dense and none["density"] == 1.0 and none["bits_communicated"] == 40 * dense
    fp16 = summarize(TrafficMeter(Compression.fp16, num_ranks=2, variables=variables).local(5))
    assert fp16["bytes_sent"] == 5 * (30 * 2 + 3 * 2 + 2 * 4) and fp16["dense_bytes"] == 5 * dense
    one_rank = summarize(TrafficMeter(Compression.none, num_ranks=1, variables=variables).local(5))
    assert one_rank["bytes_sent"] == one_rank["dense_bytes"] == 0  # Horovod sends nothing with one rank


def test_one_count_of_horovods_none_and_fp16_bytes():
    """hvdspar.state.horovod_step_bytes agrees with what Horovod's own compressors hand the
    allreduce, dtype by dtype (fp16 casts the floating tensors only)."""
    import tensorflow as tf
    from horovod.tensorflow.compression import Compression

    from hvdspar.state import horovod_step_bytes

    variables = [tf.Variable(tf.zeros([10, 3])), tf.Variable(tf.zeros([3], tf.float64)),
                 tf.Variable(tf.zeros([4], tf.bfloat16)), tf.Variable(tf.zeros([5], tf.float16)),
                 tf.Variable([1, 2], dtype=tf.int32)]
    dense = sum(int(v.shape.num_elements()) * v.dtype.size for v in variables)
    for compression, name in ((Compression.none, "none"), (Compression.fp16, "fp16"), (None, "none")):
        wire = sum(int(v.shape.num_elements()) * (compression or Compression.none).compress(tf.identity(v))[0].dtype.size
                   for v in variables)
        assert horovod_step_bytes(variables, compression) == horovod_step_bytes(variables, name) == (wire, dense)
    assert horovod_step_bytes(variables, Compression.fp16)[0] == 30 * 2 + 3 * 2 + 4 * 2 + 5 * 2 + 2 * 4


def test_horovods_none_bytes_count_an_embeddings_rows_as_horovod_allgathers_them():
    """Without sparse_as_dense Horovod allgathers an IndexedSlices gradient's values and indices
    (no compression touches them): given one step's gradients, horovod_step_bytes counts those, not
    the embedding's dense size (which it counted before for every gradient)."""
    import tensorflow as tf
    from horovod.tensorflow.compression import Compression

    from hvdspar.state import horovod_step_bytes

    table, dense_w = tf.Variable(tf.ones([1000, 32])), tf.Variable(tf.ones([32, 2]))
    ids = tf.constant([[1, 5, 7, 5]] * 3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.matmul(tf.reduce_mean(tf.gather(table, ids), 1), dense_w))
    grads = tape.gradient(loss, [table, dense_w])
    assert isinstance(grads[0], tf.IndexedSlices)
    rows = 12  # every looked-up row, repeats included, as the gradient holds them
    expected = rows * 32 * 4 + rows * grads[0].indices.dtype.size + 32 * 2 * 4
    for compression in (Compression.none, Compression.fp16):
        sent, dense = horovod_step_bytes([table, dense_w], compression, gradients=grads)
        assert dense == (1000 * 32 + 64) * 4
        assert sent == (expected if compression is Compression.none else expected - 32 * 2 * 2), compression
    assert horovod_step_bytes([table, dense_w])[0] == dense  # without gradients: every tensor dense
    with pytest.raises(ValueError, match="1 gradients for 2 variables"):
        horovod_step_bytes([table, dense_w], gradients=grads[:1])


def test_custom_loop_logs_to_the_local_default_store(local_env, monkeypatch):
    from hvdspar import link
    from hvdspar.tracking import make_tracker

    monkeypatch.setattr(link, "_network", link.Network(latency_s=2e-4, bandwidth_Bps=12.5e6))  # as if measured
    comp = FakeCompressor()
    comp.fallback = "auto"
    tracker = make_tracker({"model": "logreg", "data": "synthetic", "log_every": 5}, comp)
    train(tracker, comp)
    tracker.close()

    uri = f"sqlite:///{local_env / 'mlflow.db'}"  # MLflow 3's default, in the working directory
    assert (local_env / "mlflow.db").exists() and not (local_env / "mlruns-spool").exists()
    c = client(uri)
    run = c.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "logreg-synthetic-fake(rho=0.1)-np1"
    assert c.get_experiment(run.info.experiment_id).name == "hvdspar"
    p = run.data.params
    assert p["compressor"] == "fake:rho=0.1" and p["compressor.rho"] == "0.1" and p["num_ranks"] == "1"
    assert p["seed"] == "7" and p["log_every"] == "5" and p["model"] == "logreg"
    assert history(c, tracker.run_id, "step/bytes_sent") == [(s, 100.0 * s) for s in range(5, 41, 5)]
    assert [s for s, _ in history(c, tracker.run_id, "step/loss")] == list(range(5, 41, 5))
    m = run.data.metrics
    assert m["bytes_sent"] == 4000 and m["dense_bytes"] == 40000 and m["compression_ratio"] == 0.1
    assert m["bits_communicated"] == 32000 and m["bits_saved"] == 8 * 36000 and m["density"] == 0.1
    assert m["variance_ratio"] == 3.0 and m["test_accuracy"] == pytest.approx(0.6) and m["global_step"] == 40
    # the fallback's decisions, and the link fallback="auto" decided on
    assert m["dense_tensors"] == 2 and m["tensors"] == 3
    assert m["link_latency_s"] == pytest.approx(2e-4) and m["link_bandwidth_MBps"] == pytest.approx(12.5)
    assert history(c, tracker.run_id, "loss") == [(1, 1.0), (2, 0.5)]
    files = {a.path for a in c.list_artifacts(tracker.run_id)} | {a.path for a in c.list_artifacts(tracker.run_id, "plots")}
    assert {"config.json", "config.yaml", "plots/loss_vs_epochs.png", "plots/loss_vs_bits.png"} <= files
    config = json.loads(Path(c.download_artifacts(tracker.run_id, "config.json", str(local_env))).read_text())
    assert config["compressor"] == "fake:rho=0.1" and config["version"]["mlflow"]


def test_tracking_off_logs_nothing(local_env, monkeypatch):
    from hvdspar.tracking import make_callbacks, make_tracker

    monkeypatch.setenv("HVDSPAR_TRACKING", "off")
    assert make_callbacks({}, FakeCompressor(), 10, None) == []
    tracker = make_tracker({}, FakeCompressor())
    tracker.log_step(10, {"loss": 1.0})
    tracker.close()
    assert tracker.run_id is None and not (local_env / "mlflow.db").exists()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_keeps_everything_and_replays(local_env, monkeypatch, capfd):
    """Unreachable server: training is not held up, the run lands in a local store, replay delivers it."""
    from hvdspar.tracking import make_tracker
    from hvdspar.tracking.replay import main as replay_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("HVDSPAR_TRACKING_CLOSE_WAIT", "1")
    comp = FakeCompressor()
    ckpt = local_env / "ckpt"
    t0 = time.monotonic()
    tracker = make_tracker({"model": "logreg", "log_every": 2}, comp, str(ckpt))
    train(tracker, comp, epochs=2, steps=10)
    assert time.monotonic() - t0 < 5  # the dead server cost the training loop nothing
    tracker.close()
    err = capfd.readouterr().err
    spool = ckpt / "mlflow-spool"
    assert "cannot reach the MLflow tracking store" in err and "stayed unreachable" in err
    assert f"python -m hvdspar.tracking.replay {spool}" in err and str(spool / "mlflow.db") in err
    assert not (ckpt / "mlflow_run_id").exists()  # no run on the server yet

    # the local copy is complete
    local = client(f"sqlite:///{spool / 'mlflow.db'}")
    (run,) = local.search_runs([local.get_experiment_by_name("hvdspar").experiment_id])
    assert len(history(local, run.info.run_id, "step/bytes_sent")) == 10 and run.info.status == "FINISHED"
    assert {a.path for a in local.list_artifacts(run.info.run_id)} >= {"config.json", "plots"}

    # "the server is back": deliver the spool there; a second replay sends nothing twice
    server = f"sqlite:///{local_env / 'server.db'}"
    assert replay_main([str(spool), "--tracking-uri", server]) == 0
    assert replay_main([str(spool), "--tracking-uri", server]) == 0
    c = client(server)
    (run,) = c.search_runs([c.get_experiment_by_name("hvdspar").experiment_id])
    assert history(c, run.info.run_id, "step/bytes_sent") == [(s, 100.0 * s) for s in range(2, 21, 2)]
    assert history(c, run.info.run_id, "loss") == [(1, 1.0), (2, 0.5)] and run.info.status == "FINISHED"
    assert run.data.params["model"] == "logreg"


def test_resume_continues_the_same_run(local_env):
    from hvdspar.tracking import make_tracker

    ckpt = local_env / "ckpt"
    comp = FakeCompressor()
    first = make_tracker({"model": "logreg", "epochs": 1, "log_every": 5}, comp, str(ckpt))
    train(first, comp, epochs=1, steps=10)
    first.close()
    run_id = (ckpt / "mlflow_run_id").read_text().strip()
    assert run_id == first.run_id

    second = make_tracker({"model": "logreg", "epochs": 2, "log_every": 5}, comp, str(ckpt))  # resumed, more epochs
    train(second, comp, epochs=2, steps=10, first_epoch=1)
    second.close()
    assert second.run_id == run_id
    c = client(f"sqlite:///{local_env / 'mlflow.db'}")
    run = c.get_run(run_id)
    assert history(c, run_id, "loss") == [(1, 1.0), (2, 0.5)]
    assert [s for s, _ in history(c, run_id, "step/bytes_sent")] == [5, 10, 15, 20]
    assert run.data.params["epochs"] == "1" and run.data.tags["hvdspar.resumed_param.epochs"] == "2"
    assert run.info.status == "FINISHED" and len(c.search_runs([run.info.experiment_id])) == 1


def test_sweep_grid_maps_budgets_to_each_compressor():
    from hvdspar.tracking.sweep import grid, main

    specs = [(spec, seed) for _, spec, _, _, seed in grid(["gspar", "topk", "none"], [0.1, 0.01], [0, 1])]
    assert specs[:4] == [("gspar:rho=0.1", 0), ("gspar:rho=0.1", 1), ("gspar:rho=0.01", 0), ("gspar:rho=0.01", 1)]
    assert ("topk:ratio=0.01", 1) in specs and specs[-2:] == [("none", 0), ("none", 1)] and len(specs) == 10
    # PowerSGD and EF-signSGD take no budget: once per seed
    assert [spec for _, spec, *_ in grid(["powersgd", "efsignsgd"], [0.1, 0.01], [0])] == ["powersgd", "efsignsgd"]
    with pytest.raises(SystemExit, match="unknown compressor 'nope'"):
        grid(["nope"], [0.1], [0])
    assert main(["--dry-run", "--compressors", "unisp", "--rho", "0.5", "--", "--epochs", "1"]) == 0


@pytest.mark.slow
def test_sweep_runs_children_under_one_parent(local_env):
    """A grid of two 2-rank trainings (Horovod's none and fp16, the cheap ones to trace) as child runs
    of one parent with summary and comparison artifacts; fp16's bytes are counted as half of dense."""
    worker = ROOT / "tests" / "workers" / "tracking_train_worker.py"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "HVDSPAR_TEST_OUT": str(local_env)}
    proc = subprocess.run(
        [sys.executable, "-m", "hvdspar.tracking.sweep", "--np", "2", "--compressors", "none,fp16", "--rho", "0.5",
         "--seeds", "3", "--script", str(worker), "--", "--epochs", "1", "--steps", "10"],
        cwd=local_env, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| none seed=3 |" in proc.stdout  # the summary table is printed too
    c = client(f"sqlite:///{local_env / 'mlflow.db'}")
    exp = c.get_experiment_by_name("hvdspar").experiment_id
    (parent,) = c.search_runs([exp], filter_string="tags.`hvdspar.sweep` = 'true'")
    children = c.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["fp16 seed=3", "none seed=3"]
    n_params = json.loads((local_env / "rank0.json").read_text())["n_params"]
    for r in children:
        assert r.info.status == "FINISHED" and r.data.params["parent_run_id"] == parent.info.run_id
        assert r.data.params["seed"] == "3" and r.data.params["num_ranks"] == "2"
        assert r.data.metrics["dense_bytes"] == 2 * 10 * n_params * 4  # 2 ranks, 10 steps, float32
    by_name = {r.info.run_name: r.data.metrics for r in children}
    assert by_name["none seed=3"]["compression_ratio"] == 1.0
    assert by_name["fp16 seed=3"]["compression_ratio"] == 0.5
    assert by_name["fp16 seed=3"]["bytes_sent"] == 2 * 10 * n_params * 2
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.compressors"] == "none,fp16"
    assert parent.data.metrics["children"] == 2 and parent.data.metrics["children_failed"] == 0
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"summary.md", "summary.csv", "comparison.png", "logs"} <= arts
    table = Path(c.download_artifacts(parent.info.run_id, "summary.md", str(local_env))).read_text()
    assert "fp16 seed=3" in table and "bits_communicated" in table and "compression_ratio" in table


def test_plots_draw_both_axes(tmp_path):
    from hvdspar.tracking.plots import comparison, run_plots

    def hist(scale):
        h = {"loss": [(e, 1.0 / e) for e in (1, 2, 3)], "bits_communicated": [(e, scale * e) for e in (1, 2, 3)],
             "global_step": [(e, 10 * e) for e in (1, 2, 3)], "suboptimality": [(e, 0.1 ** e) for e in (1, 2, 3)]}
        h["step/loss"] = [(s, 1.0 / s) for s in range(5, 31, 5)]
        h["step/bits_communicated"] = [(s, scale * s / 10) for s in range(5, 31, 5)]
        return h

    paths = run_plots(hist(800.0), str(tmp_path), title="t") + [
        comparison([("a", hist(800.0)), ("b", hist(8000.0))], str(tmp_path / "comparison.png"))]
    for path in paths:
        assert Path(path).read_bytes()[:4] == b"\x89PNG" and Path(path).stat().st_size > 10_000


@pytest.mark.slow
def test_mlflow_callback_in_a_users_horovod_keras_script(local_env, horovodrun):
    """Horovod's Keras MNIST example with hvdspar's two lines (compression=, MLflowCallback) under 2
    ranks: one run in the local default store, named and parametrised as the CLI's runs, with loss and
    accuracy per epoch and the bytes of both ranks summed."""
    import numpy as np

    from hvdspar.training.data import read_idx, shared_data_root

    mnist = shared_data_root() / "mnist"
    if not (mnist / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found under {mnist}")
    npz = local_env / "mnist.npz"
    np.savez(npz, x_train=read_idx(mnist / "t10k-images-idx3-ubyte.gz")[:2048],
             y_train=read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[:2048])
    epochs, steps = 2, 8
    ranks, _ = horovodrun("user_keras_mnist", npz, "gspar:rho=0.1,seed=0", epochs, steps, env={"PYTHONPATH": str(ROOT)})

    c = client(f"sqlite:///{local_env / 'mlflow.db'}")
    (run,) = c.search_runs([c.get_experiment_by_name("hvdspar").experiment_id])
    assert run.info.run_id == ranks[0]["run_id"] and ranks[1]["run_id"] is None  # rank 0 logs
    assert run.info.status == "FINISHED" and run.info.run_name == "mnist-cnn-mnist-gspar(rho=0.1)-np2"
    p = run.data.params
    assert p["compressor"].startswith("gspar:rho=0.1") and p["compressor.rho"] == "0.1" and p["num_ranks"] == "2"
    assert p["model"] == "mnist-cnn" and p["batch_size"] == "64" and p["epochs"] == "2"
    assert p["steps_per_epoch"] == "8" and p["optimizer"] == "Adam" and p["log_every"] == "4"
    assert int(p["trainable_parameters"]) * 4 == ranks[0]["dense_bytes_per_step"]
    m = run.data.metrics
    sent = sum(r["traffic"]["bytes_sent"] for r in ranks)
    dense = sum(r["traffic"]["dense_bytes"] for r in ranks)
    assert m["bytes_sent"] == sent and m["dense_bytes"] == dense == 2 * epochs * steps * ranks[0]["dense_bytes_per_step"]
    assert 0 < m["compression_ratio"] == sent / dense < 0.5 and m["global_step"] == epochs * steps
    for key in ("loss", "accuracy"):
        values = history(c, run.info.run_id, key)
        assert [s for s, _ in values] == [1, 2] and all(np.isfinite(v) for _, v in values)
    assert 0 < m["accuracy"] <= 1 and "epoch_time_s" in m and "variance_ratio" in m
    assert [s for s, _ in history(c, run.info.run_id, "step/bytes_sent")] == [4, 8, 12, 16]
    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss_vs_epochs.png", "plots/loss_vs_bits.png"} <= plots


def test_progress_is_quiet_off_a_terminal_and_says_what_a_resumed_command_has_done(capsys, monkeypatch):
    """Long commands (reproduce, sweeps, benchmarks) show a bar with the time left on a terminal and
    nothing in a log; a resumed one says once how much is done, and its bar starts there."""
    import io

    from hvdspar.tracking.progress import bar

    progress = bar(4, "reproduce fig1", done=1)
    for _ in range(3):
        progress.update()
    progress.close()
    err = capsys.readouterr().err
    assert err == "reproduce fig1: 1 of 4 runs already done, resuming\n"  # and no bar: stderr is captured

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = bar(3, "tracking.sweep", done=1)
    progress.update()
    progress.close()
    shown = terminal.getvalue()
    assert shown.startswith("tracking.sweep: 1 of 3 runs already done, resuming\n"), shown
    assert "1/3" in shown and "2/3" in shown and "<" in shown, shown  # from the resumed count; elapsed<left


def test_a_programs_own_sigterm_handler_is_kept(tmp_path, monkeypatch):
    """The tracker turns SIGTERM into SystemExit (so the run is closed, KILLED) only where the program
    left the default; a handler of the program's own stays."""
    import signal

    from hvdspar.tracking import make_tracker

    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
        monkeypatch.chdir(tmp_path)
        tracker = make_tracker({"log_every": 0})
        tracker.close()
        assert signal.getsignal(signal.SIGTERM) is mine
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        make_tracker({"log_every": 0}).close()
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, mine)  # the default was replaced
    finally:
        signal.signal(signal.SIGTERM, old)
