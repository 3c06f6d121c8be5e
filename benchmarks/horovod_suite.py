"""Horovod's own TensorFlow tests, under 2 Gloo ranks, with a lossless hvdspar compressor passed
wherever a call takes ``compression=`` (benchmarks/horovod_suite_plugin.py), beside Horovod's none.

    python -m benchmarks.horovod_suite --horovod-tests ~/src/horovod/test

``--horovod-tests`` is the ``test/`` folder of a Horovod source checkout (Horovod's sdist and wheel
do not ship it); ``parameterized`` must be importable. The selection is the one the project checks:
``test_tensorflow.py -k "(allreduce and not gpu) or local_gradient_aggregation or
partial_distributed_gradient_tape or model_parallel_model"`` and all of ``test_tensorflow2_keras.py``.
Each run is (compressor, what the TF1-graph half of each test gets); the counts and the failing
tests of rank 0 go to ``<out>/horovod_suite.json`` as each run ends (a later call skips those there).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from hvdspar.tracking.progress import bar

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ("(allreduce and not gpu) or local_gradient_aggregation or partial_distributed_gradient_tape"
             " or model_parallel_model or Tf2KerasTests")
RUNS = (("none", "none"), ("gspar", "none"), ("gspar", "hvdspar"), ("topk", "none"), ("topk", "hvdspar"))


def run(tests, choice, graph, timeout):
    env = dict(os.environ, HVDSPAR_SUITE=choice, HVDSPAR_SUITE_GRAPH=graph,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [str(Path(sys.executable).with_name("horovodrun")), "-np", "2", "-H", "localhost:2", "--gloo",
           sys.executable, "-m", "pytest", "-p", "benchmarks.horovod_suite_plugin", "-p", "no:cacheprovider",
           "-q", "-rfE", "--timeout", "300", str(tests / "parallel" / "test_tensorflow.py"),
           str(tests / "parallel" / "test_tensorflow2_keras.py"), "-k", SELECTION]
    start = time.time()
    try:
        done = subprocess.run(cmd, env=env, cwd=tests.parent, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() + "\nTIMEOUT"
    rank0 = [line.split(":", 1)[1] for line in output.splitlines() if line.startswith("[0]<stdout>")]
    summary = next((line for line in reversed(rank0) if re.search(r"\d+ (passed|failed)", line)), "no summary")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped)", summary)}
    failing = sorted({f"{m[3]} {m[2] or ''}".strip()  # the test, and which half ([graph_mode]) failed
                      for m in map(re.compile(r"(SUB)?FAILED(\[\w+\])? (\S+)").match, rank0) if m})
    return {"compressor": choice, "tf1_graph_half": graph, "counts": counts, "summary": summary.strip(),
            "failing": failing, "seconds": round(time.time() - start, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--horovod-tests", type=Path, required=True, help="a Horovod checkout's test/ folder")
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--force", action="store_true", help="run again what the JSON already holds")
    args = parser.parse_args(argv)
    if not (args.horovod_tests / "parallel" / "test_tensorflow.py").exists():
        parser.error(f"{args.horovod_tests} has no parallel/test_tensorflow.py: give a Horovod checkout's test/")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "horovod_suite.json"
    results = json.loads(path.read_text()) if path.exists() and not args.force else {}
    progress = bar(len(RUNS), "horovod_suite", done=sum(f"{c}/{g}" in results for c, g in RUNS))
    for choice, graph in RUNS:
        key = f"{choice}/{graph}"
        if key in results:
            print(f"{key}: already in {path}")
            continue
        results[key] = run(args.horovod_tests, choice, graph, args.timeout)
        path.write_text(json.dumps(results, indent=1))
        print(f"{key}: {results[key]['summary']} ({results[key]['seconds']} s)", flush=True)
        progress.update()
    progress.close()
    for key, r in results.items():
        print(f"{key:16s} {r['counts']}  failing: {', '.join(r['failing']) or '-'}")


if __name__ == "__main__":
    main()
