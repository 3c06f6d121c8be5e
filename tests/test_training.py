"""The training CLI under real horovodrun (2 ranks), plus its argument checks.

Launches are few and runs are small: ``tests/workers/training_runs.py`` calls
``hvdspar.training.train.main`` several times inside one horovodrun launch.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hvdspar.training import data

ROOT = Path(__file__).resolve().parent.parent
SHARED = data.shared_data_root()
have_shared = (SHARED / "libsvm" / "a9a").exists() and (SHARED / "cifar10" / "cifar10_exact_subset.npz").exists()

# Every model x data kind, each small: (name, argv)
PAIRS = [
    ("logreg-synthetic", ["--model", "logreg", "--data", "synthetic", "--synthetic-n", "256", "--synthetic-d", "512",
                          "--epochs", "2", "--steps-per-epoch", "8", "--lr", "0.01"]),
    ("svm-a9a", ["--model", "svm", "--data", "a9a", "--limit", "2000", "--epochs", "1", "--steps-per-epoch", "20"]),
    ("cnn-cifar10-subset", ["--model", "cnn", "--data", "cifar10-subset", "--limit", "256", "--channels", "8",
                            "--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "4"]),
    ("logreg-w8a", ["--model", "logreg", "--data", "w8a", "--limit", "2000", "--epochs", "1", "--steps-per-epoch", "20"]),
]
LOG_KEYS = ("suboptimality", "test_accuracy", "train_accuracy", "data_passes", "bytes_sent", "dense_bytes")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hvdspar-cache")


def launch(horovodrun, runs, env=None):
    results, output = horovodrun(["-m", "tests.workers.training_runs", json.dumps(runs)], env=env)
    for r, res in enumerate(results):
        assert res is not None, f"rank {r} reported nothing\n{output[-4000:]}"
        for name, run in res.items():
            assert run["rc"] == 0, f"{name} failed on rank {r}\n{output[-4000:]}"
    return results, output


def weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def metrics(out, name):
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.skipif(not have_shared, reason="shared data (a9a, CIFAR-10 subset) not present")
@pytest.mark.parametrize("compressor", ["gspar:rho=0.01", "none", "powersgd:rank=1,start_iter=0", "efsignsgd"])
def test_every_model_and_data_pair_trains_on_two_ranks(horovodrun, tmp_path, cache_dir, compressor):
    common = ["--compressor", compressor, "--seed", "3", "--verbose", "0", "--cache-dir", str(cache_dir)]
    runs = [{"name": name, "argv": argv + common + ["--metrics-out", f"{{out}}/{name}.json",
                                                     "--save-weights", f"{{out}}/{name}-rank{{rank}}.npz"]}
            for name, argv in PAIRS]
    results, output = launch(horovodrun, runs, env={"HVDSPAR_FAKE_TRACKING": "1"})
    out = tmp_path / "hvd-out"
    assert output.count("epoch 1/") == len(PAIRS)  # rank 0's compact line, once per run
    for name, argv in PAIRS:
        m = metrics(out, name)
        epochs = int(argv[argv.index("--epochs") + 1])
        assert [e["epoch"] for e in m["epochs"]] == list(range(epochs))
        last = m["epochs"][-1]
        assert 0.0 <= last["train_accuracy"] <= 1.0 and 0.0 <= last["test_accuracy"] <= 1.0
        steps = m["settings"]["steps_per_epoch"]
        assert last["data_passes"] == pytest.approx(epochs * steps * m["settings"]["batch_size"] * 2 / m["settings"]["n_train"])
        # Traffic: this rank's bytes; GSpar sends a fraction of the dense gradient, none all of it.
        assert last["dense_bytes"] > 0
        if compressor == "none" or (compressor.startswith("powersgd") and not name.startswith("cnn")):
            # (a linear model's kernel (d, 1) is no matrix to PowerSGD, its bias a vector: both dense)
            assert last["bytes_sent"] == last["dense_bytes"]
        else:
            assert 0 < last["bytes_sent"] < 0.5 * last["dense_bytes"]
        if not name.startswith("cnn"):
            # f* is below every objective value the training reaches.
            assert m["settings"]["fstar"] is not None
            assert all(e["suboptimality"] >= 0 and np.isfinite(e["suboptimality"]) for e in m["epochs"])
        # Both ranks end with the same model (BN statistics included).
        w0, w1 = weights(out / f"{name}-rank0.npz"), weights(out / f"{name}-rank1.npz")
        assert w0.keys() == w1.keys()
        for k in w0:
            np.testing.assert_array_equal(w0[k], w1[k], err_msg=f"{name}: {k} differs between ranks")
        # The tracking contract: params with the compressor's spec, Keras logs with our keys.
        for rank_result in results:
            rec = rank_result[name]["tracking"]
            assert rec["params"]["compressor"].split(":")[0] == compressor.split(":")[0]
            assert rec["params"]["model"] == argv[1] and rec["steps_per_epoch"] == steps
            keys = LOG_KEYS if not name.startswith("cnn") else tuple(k for k in LOG_KEYS if k != "suboptimality")
            assert all(k in rec["epochs"][-1] for k in keys), rec["epochs"][-1].keys()
    if compressor == "none":
        # Plain SGD moves logistic regression below its starting value log 2.
        assert metrics(out, "logreg-synthetic")["epochs"][-1]["objective"] < np.log(2.0)


def test_interrupted_and_resumed_run_ends_at_the_same_weights(horovodrun, tmp_path, cache_dir):
    """4 epochs straight == 2 epochs, then a fresh launch resuming to 4 (Adam state,
    GSpar's error-feedback memory and random streams all come from the checkpoint)."""
    base = ["--model", "logreg", "--data", "synthetic", "--synthetic-n", "256", "--synthetic-d", "128",
            "--optimizer", "adam", "--lr", "0.01", "--compressor", "gspar:rho=0.1,memory=true",
            "--steps-per-epoch", "6", "--seed", "11", "--verbose", "0", "--no-tracking", "--cache-dir", str(cache_dir)]
    launch(horovodrun, [
        {"name": "straight", "argv": base + ["--epochs", "4", "--save-weights", "{out}/straight.npz"]},
        {"name": "first", "argv": base + ["--epochs", "2", "--checkpoint-dir", "{out}/ckpt", "--save-weights", "{out}/half.npz",
                                          "--metrics-out", "{out}/resumed.json"]},
    ])
    out = tmp_path / "hvd-out"
    assert (out / "ckpt" / "rank0").is_dir() and (out / "ckpt" / "rank1").is_dir()
    _, output = launch(horovodrun, [
        {"name": "resumed", "argv": base + ["--epochs", "4", "--checkpoint-dir", "{out}/ckpt", "--save-weights", "{out}/resumed.npz",
                                            "--metrics-out", "{out}/resumed.json"]},
    ])
    assert "resumed from" in output and "at epoch 2" in output
    straight, resumed, half = weights(out / "straight.npz"), weights(out / "resumed.npz"), weights(out / "half.npz")
    for k in straight:
        assert not np.array_equal(straight[k], half[k])
        np.testing.assert_allclose(resumed[k], straight[k], rtol=0, atol=1e-6)
    m = json.loads((out / "resumed.json").read_text())
    assert [e["epoch"] for e in m["epochs"]] == [0, 1, 2, 3]
    # Bytes continue from the checkpointed counters, they do not restart at zero.
    assert m["epochs"][3]["bytes_sent"] > m["epochs"][1]["bytes_sent"] > 0


def test_svrg_converges_linearly_with_and_without_gspar(horovodrun, tmp_path, cache_dir):
    """SVRG (the paper's Figure 2) on l2-logistic regression: log suboptimality falls
    linearly in data passes, also when the variance-reduced gradient is GSpar-compressed."""
    base = ["--model", "logreg", "--data", "synthetic", "--synthetic-n", "512", "--synthetic-d", "64", "--c2", "0.25",
            "--lambda2", "0.05", "--optimizer", "svrg", "--epochs", "7", "--seed", "5", "--verbose", "0",
            "--cache-dir", str(cache_dir)]
    results, _ = launch(horovodrun, [
        {"name": "none", "argv": base + ["--compressor", "none", "--lr", "0.3", "--metrics-out", "{out}/svrg-none.json"]},
        {"name": "gspar", "argv": base + ["--compressor", "gspar:rho=0.25", "--lr", "0.1", "--metrics-out", "{out}/svrg-gspar.json"]},
    ], env={"HVDSPAR_FAKE_TRACKING": "1"})
    out = tmp_path / "hvd-out"
    for name in ("none", "gspar"):
        for rank_result in results:  # the custom loop talks to tracking through make_tracker
            rec = rank_result[name]["tracking"]
            assert rec["closed"] and len(rec["epochs"]) == 7 and all(k in rec["epochs"][-1] for k in LOG_KEYS)
        m = json.loads((out / f"svrg-{name}.json").read_text())
        passes = np.array([e["data_passes"] for e in m["epochs"]])
        sub = np.array([e["suboptimality"] for e in m["epochs"]])
        assert np.all(sub > 0), f"{name}: f* must lie below every objective value: {sub}"
        # SVRG epoch = 1 pass for the full gradient + 1 pass of inner steps.
        np.testing.assert_allclose(np.diff(passes), 2.0)
        keep = sub > 1e-11  # below that, float32 weights leave only rounding noise
        slope, intercept = np.polyfit(passes[keep], np.log(sub[keep]), 1)
        resid = np.log(sub[keep]) - (slope * passes[keep] + intercept)
        ratios = sub[1:][keep[1:]] / sub[:-1][keep[1:]]
        print(name, "subopt", sub, "slope", slope, "ratios", ratios)
        assert slope < -0.3, f"{name}: not converging linearly, slope {slope}: {sub}"
        assert np.max(np.abs(resid)) < 1.5, f"{name}: log-suboptimality not close to a line: {resid}"
        assert np.all(ratios < 0.7), f"{name}: suboptimality ratio per epoch {ratios}"
        if name == "gspar":
            assert 0 < m["epochs"][-1]["bytes_sent"] < 0.6 * m["epochs"][-1]["dense_bytes"]


# ---------------------------------------------------------------------------------------------
# command line checks (no horovodrun needed: they stop before Horovod starts)
# ---------------------------------------------------------------------------------------------


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hvdspar.training.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_flag():
    proc = cli("--help")
    assert proc.returncode == 0
    from hvdspar.training.train import build_parser

    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in proc.stdout, flag
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.dest} has no help text"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "a9a", "--data-dir", "/nonexistent/libsvm"], "/nonexistent/libsvm"),
        (["--model", "cnn", "--data", "a9a"], "does not fit"),
        (["--model", "cnn", "--optimizer", "svrg"], "svrg is for the convex"),
        (["--compressor", "gspar:rho=2"], "rho must be"),
        (["--compressor", "nosuch"], "unknown compressor"),
        (["--lambda2", "abc"], "--lambda2"),
        (["--batch-size", "0"], "--batch-size"),
        (["--groups", "-1"], "--groups must be"),
        (["--optimizer", "svrg", "--groups", "1"], "--groups applies"),
        (["--model", "cnn", "--data", "fashion-mnist", "--data-dir", "/nonexistent/fm"], "/nonexistent/fm"),
        (["--lr", "nan"], "--lr must be a finite number"),  # trained to NaN with exit 0 before
        (["--lr", "inf"], "--lr must be a finite number"),
        (["--momentum", "nan"], "--momentum must be a finite number"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (["--compressor", "gspar:rho=0.1,rho=0.2"], "given twice"),
        (["--compressor", "gspar:rho=0.1,,"], "empty argument"),
    ],
)
def test_bad_flags_fail_before_training(args, message):
    proc = cli(*args, "--no-tracking")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Epoch" not in proc.stdout and "epoch 1/" not in proc.stdout


def test_fallback_flag_fills_specs_that_set_none():
    """The scripts default to the byte rule (reproducible runs that exercise the method on one
    machine, the library's default too); --fallback auto opts in to the timed rule; a spec's own fallback wins."""
    from hvdspar.training.train import make_compressor, parse_args

    assert parse_args([]).fallback == "true"
    assert make_compressor("gspar:rho=0.01", 1).fallback is True
    assert make_compressor("gspar:rho=0.01", 1, parse_args(["--fallback", "auto"]).fallback).fallback == "auto"
    assert make_compressor("topk:ratio=0.01", 1, "false").fallback is False
    assert make_compressor("gspar:rho=0.01,fallback=auto", 1, "true").fallback == "auto"
    assert make_compressor("none", 1, "auto") is not None  # Horovod's own ignore it


def test_checkpoint_of_another_run_is_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"model": "svm", "data": "synthetic", "seed": 1, "size": 2}))
    proc = cli("--model", "logreg", "--checkpoint-dir", str(tmp_path), "--no-tracking")
    assert proc.returncode == 2 and "holds a different run" in proc.stderr and "model" in proc.stderr


def test_one_rank_without_horovodrun(tmp_path):
    proc = cli("--model", "logreg", "--data", "synthetic", "--synthetic-n", "64", "--synthetic-d", "16", "--epochs", "2",
               "--seed", "1", "--no-tracking", "--verbose", "0", "--cache-dir", str(tmp_path), "--metrics-out",
               str(tmp_path / "m.json"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert len(m["epochs"]) == 2 and m["epochs"][-1]["bytes_sent"] == 0  # one rank sends nothing
    assert m["epochs"][-1]["objective"] < m["epochs"][0]["objective"] < np.log(2)
    assert "epoch 2/2" in proc.stdout
