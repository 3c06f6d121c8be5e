"""The time-to-accuracy worker on 2 real ranks (unshaped loopback, no root needed),
and the driver's table logic."""

import json

import pytest

from benchmarks import time_to_accuracy as tta


@pytest.mark.slow
@pytest.mark.parametrize("task", ["softmax", "logreg-a9a"])
def test_worker_reaches_the_target_and_reports_every_field(horovodrun, tmp_path, task):
    out = tmp_path / "result.json"
    args = ["-m", "benchmarks.workers.tta_worker", "--task", task, "--compressors", "none",
            "gspar:rho=0.05,fallback=auto", "gspar:rho=0.05", "--max-seconds", "20", "--out", str(out)]
    if task == "softmax":
        args += ["--features", "1024", "--classes", "8", "--rows", "256", "--test-rows", "256", "--target-loss", "1.9",
                 "--lr", "0.3"]
    else:
        args += ["--target-loss", "0.45", "--lr", "0.5", "--test-rows", "2000"]
    _, output = horovodrun(args, np=2)
    rows = json.loads(out.read_text())["results"]
    assert [r["spec"] for r in rows] == ["none", "gspar:rho=0.05,fallback=auto", "gspar:rho=0.05"], output[-3000:]
    for r in rows:
        assert r["ranks"] == 2 and r["task"] == task
        assert r["time_to_target_s"] is not None and r["time_to_target_s"] > 0, r
        assert r["final_loss"] <= r["curve"][0][2]
        assert 0 <= r["dense_tensors"] <= r["tensors"]
    none, auto, plain = rows
    assert none["bytes_per_step"] == sum(4 * n for n in ([1024 * 8, 8] if task == "softmax" else [123]))
    assert plain["dense_tensors"] < plain["tensors"] and plain["bytes_per_step"] < none["bytes_per_step"] / 4
    # the timed fallback="auto" on an unshaped loopback: at least the tiny tensors go dense
    assert auto["dense_tensors"] >= 1


def test_relative_speedups_and_merge():
    rows = [
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "none", "time_to_target_s": 100.0},
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "fp16", "time_to_target_s": 50.0},
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "gspar", "time_to_target_s": 10.0},
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "unisp", "time_to_target_s": None},
    ]
    tta.add_relative(rows)
    assert rows[2]["speedup_vs_none"] == 10.0 and rows[2]["speedup_vs_fp16"] == 5.0
    assert rows[3]["speedup_vs_none"] is None
    newer = [{**rows[2], "time_to_target_s": 5.0}]
    merged = tta.merge(rows, newer)
    assert len(merged) == 4 and merged[-1]["time_to_target_s"] == 5.0


def test_final_accuracy_pairs_the_seeds_and_gives_a_t_interval():
    from benchmarks import final_accuracy as fa

    # a known case: diffs 1, 2, 3 -> mean 2, sd 1, se 1/sqrt(3), 95% half-width 4.303/sqrt(3)
    mean, se, half = fa.paired([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and se == pytest.approx(3 ** -0.5) and half == pytest.approx(4.303 * 3 ** -0.5, rel=1e-4)

    def res(acc, reached=True):
        return {"final_acc": acc, "steps_to_target": 10 if reached else None}

    # the pairing removes the seed-to-seed spread: "a" is 0.1 points below none on every seed
    per_seed = {s: {"none": res(0.60 + 0.05 * s), "a": res(0.599 + 0.05 * s), "b": res(0.55, reached=s != 1)}
                for s in range(4)}
    rows = {r["spec"]: r for r in fa.summarize(per_seed, ["none", "a", "b"])}
    assert rows["none"]["diff"] == 0 and rows["none"]["within_half_point"]
    assert rows["a"]["diff"] == pytest.approx(-0.1) and rows["a"]["se"] == pytest.approx(0, abs=1e-9)
    assert rows["a"]["within_half_point"]
    assert rows["b"]["reached"] == 3 and not rows["b"]["within_half_point"]
    assert rows["b"]["ci_low"] < rows["b"]["diff"] < rows["b"]["ci_high"]

    # "target" scores the model where the loss first reached the target, "final" the last one;
    # a run that never reached the target is scored on its last model either way
    def res2(at_target, final):
        return {"acc_at_target": at_target, "final_acc": final, "steps_to_target": None if at_target is None else 10}

    per_seed = {0: {"none": res2(0.60, 0.70), "c": res2(0.58, 0.70)},
                1: {"none": res2(0.62, 0.72), "c": res2(None, 0.61)}}
    target = {r["spec"]: r for r in fa.summarize(per_seed, ["none", "c"], "target")}
    final = {r["spec"]: r for r in fa.summarize(per_seed, ["none", "c"], "final")}
    assert target["c"]["diff"] == pytest.approx((-2.0 - 1.0) / 2) and target["c"]["reached"] == 1
    assert final["c"]["diff"] == pytest.approx((0.0 - 11.0) / 2) and final["c"]["at"] == "final"


@pytest.mark.slow
def test_step_time_worker_interleaves_blocks_and_reports_ratios(horovodrun, tmp_path):
    out = tmp_path / "steps.json"
    args = ["-m", "benchmarks.workers.step_time_worker", "--compressors", "none", "gspar:rho=0.05,fallback=true",
            "--features", "1024", "--classes", "8", "--rows", "256", "--test-rows", "256",
            "--blocks", "3", "--block-steps", "4", "--out", str(out)]
    _, output = horovodrun(args, np=2)
    rows = json.loads(out.read_text())["results"]
    assert [r["spec"] for r in rows] == ["none", "gspar:rho=0.05,fallback=true"], output[-3000:]
    none, gspar = rows
    assert none["ratio"] == none["ratio_min"] == none["ratio_max"] == 1.0
    for r in rows:
        assert len(r["block_ms"]) == 3 and all(ms > 0 for ms in r["block_ms"]) and r["ranks"] == 2
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    assert gspar["dense_tensors"] < gspar["tensors"] == 2
    assert gspar["ratio"] == pytest.approx(sorted(g / n for g, n in zip(gspar["block_ms"], none["block_ms"]))[1])


def test_time_to_accuracy_logs_one_mlflow_run_and_leaves_unreached_targets_out(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("HVDSPAR_NO_MLFLOW", raising=False)
    monkeypatch.chdir(tmp_path)
    rows = [
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "none", "time_to_target_s": 110.0,
         "final_acc": 0.64},
        {"task": "softmax", "network": "100mbit", "ranks": 4, "spec": "gspar:rho=0.01,fallback=true",
         "time_to_target_s": None, "final_acc": 0.61},
    ]
    try:
        tta.log_mlflow(rows, {"tasks": ["softmax"]}, "| table |")
    finally:
        mlflow.set_tracking_uri(None)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hvdspar-benchmarks").experiment_id])
    m = run.data.metrics
    assert m["softmax.100mbit.np4.none.time_to_target_s"] == 110.0
    assert m["softmax.100mbit.np4.gspar_rho_0.01_fallback_true.final_acc"] == 0.61
    assert "softmax.100mbit.np4.gspar_rho_0.01_fallback_true.time_to_target_s" not in m  # not reached: no number
    assert run.data.params["tasks"] == "['softmax']"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"time_to_accuracy.md", "time_to_accuracy.json"}


def test_figures_are_drawn_from_the_rows_of_the_time_to_accuracy_benchmark(tmp_path):
    """benchmarks.figures: one of each figure per (task, ranks), readable PNGs; an unreached target
    is drawn as a stub, not left out or plotted as a number."""
    from matplotlib import image

    from benchmarks.figures import main, tta_figures

    def row(network, spec, t, acc, nbytes):
        curve = [(0, 0.0, 2.5, 0.1), (10, (t or 20.0) / 2, 1.9, acc / 2), (20, t or 20.0, 1.45, acc)]
        return {"task": "softmax", "ranks": 4, "network": network, "spec": spec, "time_to_target_s": t,
                "final_acc": acc, "bytes_per_step": nbytes, "curve": curve, "train_seconds": t or 20.0,
                "target_loss": 1.5}

    rows = [row(n, "none", 10.0 * k, 0.64, 2097280) for k, n in enumerate(("loopback", "1gbit", "100mbit"), 1)]
    rows += [row(n, "gspar:rho=0.02", 5.0, 0.63, 12619) for n in ("loopback", "1gbit")]
    rows.append(row("100mbit", "gspar:rho=0.02", None, 0.55, 12619))  # not reached
    paths = tta_figures(rows, tmp_path, " (test)")
    assert sorted(p.name for p in paths) == ["bytes_vs_accuracy_softmax_np4.png", "loss_vs_seconds_softmax_np4.png",
                                             "time_to_target_softmax_np4.png"]
    for p in paths:
        assert image.imread(p).shape[0] > 200
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    main(["--tta", str(tmp_path / "rows.json"), "--out", str(tmp_path / "again")])
    assert len(list((tmp_path / "again").glob("*.png"))) == 3


def test_ab_trip_loads_another_checkout_beside_this_one(tmp_path):
    """benchmarks.ab_trip imports a second checkout's hvdspar as hvdspar_before and times both
    interleaved; here the 'other' checkout is this one, in one process with Horovod at one rank."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run([sys.executable, "-m", "benchmarks.ab_trip", "--before", str(root), "--sizes", "70000",
                          "--repeat", "2", "--ranks", "2"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for call in ("encode before", "encode after", "trip before", "trip after", "decode 2 before", "decode 2 after",
                 "pass"):
        assert f"| {call} |" in run.stdout, run.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.ab_trip", "--before", str(tmp_path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600)
    assert bad.returncode != 0 and "has no hvdspar/ package" in bad.stderr


def test_round_trip_reports_none_beside_the_trip_and_the_decode_at_m_ranks(tmp_path):
    """benchmarks.round_trip times Horovod's own uncompressed allreduce of the same g beside GSpar's
    trip, and the decode of M ranks' messages (one row per M); one process, Horovod at one rank."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="3", HVDSPAR_NO_MLFLOW="1")
    run = subprocess.run([sys.executable, "-m", "benchmarks.round_trip", "--sizes", "70000", "--repeat", "2",
                          "--ranks", "1", "3", "--tensors", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads((tmp_path / "round_trip.json").read_text())
    (row,) = out["rows"]
    assert row["none_ms"] > 0 and row["trip_over_none"] == pytest.approx(row["round_trip_ms"] / row["none_ms"])
    assert [r["ranks"] for r in out["decode_at_ranks"]] == [1, 3]
    assert all(r["elements"] == 70000 and r["decode_ms"] > 0 for r in out["decode_at_ranks"])
    assert "| trip_over_none |" in run.stdout and "decode at M ranks" in run.stdout


def test_horovod_suite_plugin_fills_in_compression_only_where_the_call_left_it_out(monkeypatch):
    """benchmarks/horovod_suite_plugin.py gives a compressor to every call that took Horovod's
    default, and leaves a compression= the call names (by keyword or by position) alone: Horovod's
    PartialDistributedGradientTape passes its own positionally to DistributedGradientTape."""
    import types

    from benchmarks import horovod_suite_plugin as plugin

    module = types.SimpleNamespace(tape=lambda tape, device="", compression="default", op=None: compression)
    monkeypatch.setattr(plugin, "_fresh", lambda: "filled")
    plugin._with_default_compression(module, "tape")
    assert module.tape("t") == "filled"
    assert module.tape("t", compression="mine") == "mine"
    assert module.tape("t", "", "positional") == "positional"
    assert module.tape("t", op=1) == "filled"


def test_horovod_suite_names_what_it_needs(tmp_path, capsys):
    from benchmarks import horovod_suite

    with pytest.raises(SystemExit):
        horovod_suite.main(["--horovod-tests", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "has no parallel/test_tensorflow.py" in capsys.readouterr().err


def test_two_nodes_table_derives_speedups_against_none_of_the_same_task_and_network():
    from benchmarks import two_nodes

    def row(task, network, mode, t, sent, within=0):
        return {"task": task, "network": network, "mode": mode, "spec": mode, "time_to_target_s": t,
                "seconds_per_step": 0.05, "bytes_per_step": sent, "within_node_bytes_per_step": within,
                "final_acc": 0.61234}
    rows = two_nodes.finish([row("softmax", "100mbit", "none", 30.0, 2e6), row("softmax", "100mbit", "flat", 5.0, 6800),
                             row("softmax", "100mbit", "hierarchical", 6.0, 3300, 3.1e6),
                             row("softmax", "1gbit", "flat", None, 6800), row("cnn-cifar10", "100mbit", "flat", 5.0, 1)])
    assert [r["x_vs_none"] for r in rows] == [1.0, 6.0, 5.0, None, None]  # no none row: no speed-up
    assert rows[2]["cross_node_kb_per_step"] == 3.3 and rows[2]["within_node_kb_per_step"] == 3100.0
    assert rows[0]["ms_per_step"] == 50.0 and rows[0]["final_acc"] == 0.612


def test_trace_cost_counts_the_traced_encoders_and_decoders():
    from benchmarks import trace_cost

    shapes = [[3], [5], [2, 4], [70000]]
    seconds, ops, traced, tensors = trace_cost.trace("gspar:rho=0.01,bucket_mb=0", shapes)
    assert tensors == 4 and traced == 4 and seconds > 0 and ops > 0  # the small sizes share one pair
    assert trace_cost.trace("none", shapes)[2] == 0
