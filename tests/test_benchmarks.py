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
    # fallback=auto on an unshaped loopback: at least the tiny tensors go dense
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
