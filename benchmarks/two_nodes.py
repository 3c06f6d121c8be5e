"""Two simulated nodes of two ranks, only the link between them shaped: time to the target loss.

    python -m benchmarks.two_nodes                          # softmax and CNN, 1 Gbit/s and 100 Mbit/s (root)
    python -m benchmarks.two_nodes --tasks softmax --networks 100mbit --append

Each node is a network namespace (benchmarks/netns.py ``two_nodes``) joined to the other by a veth
pair whose two ends are shaped to the network's rate; the two ranks of a node talk over their own
loopback, unshaped, as GPUs of one node over NVLink. The job is launched as on a cluster, from
nodeA: ``horovodrun -np 4 -H nodeA:2,nodeB:2 --network-interfaces hv0 --gloo ...``, where
horovodrun reaches nodeB through ``ssh`` (benchmarks/bin/ssh: this machine has no sshd, so the
``ssh`` horovodrun calls runs the command in nodeB's namespace instead).

Modes, per task and network (benchmarks/workers/tta_worker.py trains each in turn):

    none, fp16     Horovod's own compressors (a ring allreduce over the four ranks)
    flat           GSpar (--rho), every rank's message allgathered by all four ranks
    hierarchical   the same GSpar with hvd.init(process_sets=hvdspar.node_process_sets()):
                   a dense sum inside the node, one message per node and share across

flat runs in a launch of its own (without the node sets); the other three share one. Rows go to
out/two_nodes.json after every launch (``--append`` keeps the rows not re-measured), the table to
out/two_nodes.md, and the figures to MLflow (experiment "hvdspar-benchmarks").
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import netns
from benchmarks.common import log_to_mlflow, markdown, stamp
from benchmarks.time_to_accuracy import TASKS, run_worker

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = {"1gbit": "1gbit", "100mbit": "100mbit", "unshaped": None}
HOSTS = ("nodeA", "nodeB")


def launch(nodes, specs, node_sets, worker_args, out_dir, timeout):
    """One horovodrun over the two nodes, started from nodeA -> the worker's result rows."""
    out = Path(out_dir) / f"two-nodes-{time.time_ns()}.json"
    launch_args = ["-np", "4", "-H", ",".join(f"{h}:2" for h in HOSTS), "--network-interfaces", "hv0", "--gloo"]
    path = {"PATH": f"{ROOT / 'benchmarks' / 'bin'}{os.pathsep}{os.environ['PATH']}"}  # the ssh of the nodes
    return run_worker(nodes[HOSTS[0]], launch_args, "benchmarks.workers.tta_worker", specs,
                      worker_args + (["--node-sets"] if node_sets else []), out, timeout, "two nodes", env=path)


def run_network(task, network, args, tmp):
    """The four modes of one task on one network -> rows."""
    cfg = {**TASKS[task], **{k: v for k, v in (("lr", args.lr), ("target_loss", args.target_loss)) if v}}
    worker_args = ["--task", task, "--target-loss", str(cfg["target_loss"]), "--target-acc", str(cfg["target_acc"]),
                   "--lr", str(cfg["lr"]), "--max-seconds", str(args.max_seconds)]
    gspar = f"gspar:rho={args.rho}"
    rows = []
    with netns.two_nodes(NETWORKS[network], HOSTS) as nodes:
        shared = [m for m in ("none", "fp16", "hierarchical") if m in args.modes]
        if shared:
            specs = [gspar if m == "hierarchical" else m for m in shared]
            rows += [{**r, "mode": m} for m, r in zip(shared, launch(nodes, specs, True, worker_args, tmp, args.timeout))]
        if "flat" in args.modes:
            rows += [{**r, "mode": "flat"} for r in launch(nodes, [gspar], False, worker_args, tmp, args.timeout)]
    for r in rows:
        r.update(network=network, target_loss=cfg["target_loss"], stamp=stamp())
    return rows


COLUMNS = ("task", "network", "mode", "spec", "time_to_target_s", "steps_to_target", "ms_per_step",
           "cross_node_kb_per_step", "within_node_kb_per_step", "final_acc", "x_vs_none")


def finish(rows):
    """Derived columns: ms per step, KB per step, speed-up against none of the same task and network."""
    none = {(r["task"], r["network"]): r["time_to_target_s"] for r in rows if r["mode"] == "none"}
    for r in rows:
        r["ms_per_step"] = round(1000 * r["seconds_per_step"], 1)
        # what this rank sent: across the nodes (none/fp16: Horovod's whole allreduce), and inside its node
        r["cross_node_kb_per_step"] = round(r["bytes_per_step"] / 1e3, 1)
        r["within_node_kb_per_step"] = round(r.get("within_node_bytes_per_step", 0) / 1e3, 1)
        base, mine = none.get((r["task"], r["network"])), r["time_to_target_s"]
        r["x_vs_none"] = round(base / mine, 2) if base and mine else None
        r["time_to_target_s"] = None if mine is None else round(mine, 2)
        r["final_acc"] = round(r["final_acc"], 3)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=["softmax", "cnn-cifar10"], default=["softmax", "cnn-cifar10"])
    p.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["1gbit", "100mbit"])
    p.add_argument("--modes", nargs="+", choices=["none", "fp16", "flat", "hierarchical"],
                   default=["none", "fp16", "flat", "hierarchical"])
    p.add_argument("--rho", type=float, default=0.01, help="GSpar's density")
    p.add_argument("--target-loss", type=float, default=None, help="override the task's target loss")
    p.add_argument("--lr", type=float, default=None, help="override the task's learning rate")
    p.add_argument("--max-seconds", type=float, default=150.0, help="training seconds per mode before giving up")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per horovodrun")
    p.add_argument("--out", default="out")
    p.add_argument("--append", action="store_true", help="keep the rows of out/two_nodes.json not re-measured")
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("two_nodes: the simulated nodes need root (ip netns, veth, tc)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "two_nodes.json"
    key = lambda r: (r["task"], r["network"], r["mode"], r["spec"])  # noqa: E731
    rows = json.loads(path.read_text()) if args.append and path.exists() else []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            for network in args.networks:
                print(f"{task} at {network} between the nodes:", flush=True)
                new = run_network(task, network, args, tmp)
                seen = {key(r) for r in new}
                rows = [r for r in rows if key(r) not in seen] + new
                path.write_text(json.dumps(rows, indent=1))  # resumable: every launch's rows are kept
    rows = finish(rows)
    text = markdown([{c: "n/a" if r.get(c) is None else r[c] for c in COLUMNS} for r in rows],
                    [(c, "{}") for c in COLUMNS])
    note = (f"\n2 nodes x 2 ranks (network namespaces), only the link between the nodes shaped; time = mean "
            f"training seconds to the target loss ({ {t: TASKS[t]['target_loss'] for t in args.tasks} }). "
            f"This sweep took {time.time() - start:.0f} s.\n")
    print("\n" + text + note)
    (out / "two_nodes.md").write_text(text + "\n" + note)
    if not args.no_mlflow:
        log_to_mlflow("two_nodes", {k: str(v)[:500] for k, v in vars(args).items()}, rows,
                      ["task", "network", "mode"], ["time_to_target_s", "ms_per_step", "cross_node_kb_per_step",
                                                    "within_node_kb_per_step", "final_acc", "x_vs_none"],
                      table=text + note, artifacts={"two_nodes.json": json.dumps(rows, indent=1)})
    return rows


if __name__ == "__main__":
    main()
