"""One process of an elastic Horovod training run (launched by tests/test_elastic.py).

horovodrun's elastic driver starts this script on the hosts that
tests/workers/elastic_discovery.sh lists (``localhost`` and ``127.0.0.1``, both
this machine, one slot each). Rank 0 changes that list while training by
writing marker files into $HVDSPAR_ELASTIC_DIR (``--drop-at``/``--add-at``), and
``--kill-at`` makes rank 1 die once, so the world shrinks and grows mid-run.

Training: logistic regression on 16 features (``--model mlp``: 16 -> 8 tanh
-> 1) on a fixed data set, ``model.train_on_batch`` (Keras' own traced train
step) with ``horovod.tensorflow.keras.DistributedOptimizer(SGD,
compression=C)``, state in ``hvd.elastic.KerasState``, committed after every
step. Step s uses the
global batch rows (32 s + [0, 32)) mod N and rank r of M takes rows r::M of
it, so the averaged gradient is the global batch's gradient for any world
size: with Compression.none every schedule follows one trajectory.

The compressor is wrapped in ``CountingCompression``, which counts the
Python-side calls of ``compress()``: they happen only while TensorFlow traces
the train step, so the count per epoch shows whether an elastic reset
retraces it.

Writes into $HVDSPAR_TEST_OUT:
  final-rank<r>.json   by every rank alive at the end (r: rank in the final world)
  events-<host>-<pid>.jsonl   this process' events as they happen (starts, epochs,
                       sync/restore/reset with snapshots of the weights and the
                       compressor's memory, markers, kills)
"""

import time

T_LAUNCH = time.time()  # before the imports (TensorFlow takes seconds on a loaded 2-core machine)

import faulthandler  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack (hang diagnosis)

if os.environ.get("HVDSPAR_ELASTIC_DUMP_S"):  # debugging: dump the stacks every N seconds
    faulthandler.dump_traceback_later(float(os.environ["HVDSPAR_ELASTIC_DUMP_S"]), repeat=True)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np
import tensorflow as tf

import horovod.tensorflow.keras as hvd
import hvdspar
from tests.workers.common import same_on_all_ranks

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--compression", default="none", help="hvdspar.from_spec string; 'none' = Compression.none")
parser.add_argument("--model", choices=["logreg", "mlp"], default="logreg",
                    help="logreg: Dense(1) (2 gradients); mlp: 16 -> 8 tanh -> 1 (4 gradients)")
parser.add_argument("--steps", type=int, default=24)
parser.add_argument("--steps-per-epoch", type=int, default=4)
parser.add_argument("--lr", type=float, default=0.5)
parser.add_argument("--drop-at", type=int, help="after this many steps rank 0 drops 127.0.0.1 (marker 'drop')")
parser.add_argument("--add-at", type=int, help="after this many steps rank 0 adds 127.0.0.1 back (marker 'add')")
parser.add_argument("--kill-at", type=int, help="rank 1 dies once, before step KILL_AT")
parser.add_argument("--kill-mode", choices=["exit", "sigkill"], default="exit")
parser.add_argument("--build-slots", action="store_true",
                    help="create the hvdspar compressor's per-tensor state before the first step (hvdspar.build); "
                         "else it is created while the first step is traced, which makes TensorFlow trace it twice")
parser.add_argument("--host-change-wait", type=float, default=20.0, help="seconds to wait for the driver's notice")
args = parser.parse_args()

OUT = Path(os.environ["HVDSPAR_TEST_OUT"])
MARKERS = Path(os.environ["HVDSPAR_ELASTIC_DIR"])
PID = os.getpid()
HOST = os.environ.get("HOROVOD_HOSTNAME", "unknown")
T0 = time.time()
EVENTS = OUT / f"events-{HOST}-{PID}.jsonl"


def event(kind, **fields):
    now = time.time()
    rec = {"event": kind, "t": round(now - T0, 3), "wall": now, "pid": PID, "host": HOST, **fields}
    with open(EVENTS, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"[elastic {HOST}:{PID}] {kind} {json.dumps(fields)}", flush=True)


def claim(name):
    """Create marker ``name`` atomically; True for the one caller that created it."""
    try:
        os.close(os.open(MARKERS / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


hvd.init()
event("start", import_s=round(T0 - T_LAUNCH, 2), rank=hvd.rank(), size=hvd.size(),
      start_rank=int(os.environ.get("HOROVOD_RANK", -1)), compression=args.compression)

# --- data and model --------------------------------------------------------------------------
D_IN, HIDDEN, N, BATCH = 16, 8, 512, 32
_rng = np.random.default_rng(0)
X = _rng.normal(size=(N, D_IN)).astype("float32")
_w_true = _rng.normal(size=(D_IN, 1))
Y = ((X @ _w_true + 0.5 * _rng.normal(size=(N, 1))) > 0).astype("float32")


def global_rows(step):
    return (step * BATCH + np.arange(BATCH)) % N


def shard(step, rank, size):
    mine = global_rows(step)[rank::size]
    return X[mine], Y[mine]


def global_batch_loss(step):
    """The loss of the whole global batch of ``step`` (the same on every rank, whatever the world)."""
    rows = global_rows(step)
    return float(tf.reduce_mean(tf.keras.losses.binary_crossentropy(Y[rows], model(X[rows], training=False))))


class CountingCompression:
    """Delegates to a Horovod compressor and counts the Python calls of compress()."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def compress(self, tensor):
        self.calls += 1
        out = self.inner.compress(tensor)
        event("compress_traced", size=hvd.size(), rank=hvd.rank(), shape=tensor.shape.as_list(), calls=self.calls,
              plan=plan())
        return out

    def decompress(self, tensor, ctx):
        return self.inner.decompress(tensor, ctx)


tf.keras.utils.set_random_seed(1)
if args.model == "mlp":
    layers = [tf.keras.layers.Dense(HIDDEN, activation="tanh", input_shape=(D_IN,)),
              tf.keras.layers.Dense(1, activation="sigmoid")]
else:  # logistic regression: two gradients (kernel, bias), the quickest to trace
    layers = [tf.keras.layers.Dense(1, activation="sigmoid", input_shape=(D_IN,))]
model = tf.keras.Sequential(layers)
compressor = hvdspar.from_spec(args.compression)
counting = CountingCompression(compressor)
optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(args.lr), compression=counting)
model.compile(optimizer, "binary_crossentropy")
# Keras >= 2.11 optimizers create their slot variables at the first step. A worker that
# joins a running job would then broadcast fewer optimizer variables in KerasState.sync()
# than the ranks that have trained ([iteration] vs [iteration, m/...]) and both sides
# wait forever in hvd.broadcast_variables. Build the optimizer before any sync.
optimizer.build(model.trainable_variables)
if args.build_slots and isinstance(compressor, hvdspar.Compressor):
    hvdspar.build(compressor, model.trainable_variables)


def tracing_count():
    fn = getattr(model, "train_function", None)
    return fn.experimental_get_tracing_count() if hasattr(fn, "experimental_get_tracing_count") else 0


def snapshot():
    """Fingerprints of the model, the optimizer and the compressor's per-tensor state."""
    w = np.concatenate([v.numpy().ravel().astype(np.float64) for v in model.variables])
    snap = {
        "weights_sum": float(w.sum()),
        "weights_sq": float((w * w).sum()),
        "opt_iterations": int(optimizer.iterations.numpy()),
    }
    slots = getattr(compressor, "slots", None)
    if slots is not None:
        snap["slots"] = len(slots)
        snap["slot_ids"] = [id(s) for s in slots]
        snap["memory_ids"] = [id(s.memory) if s.memory is not None else None for s in slots]
        snap["memory_norm"] = [
            float(np.linalg.norm(s.memory.numpy())) if s.memory is not None else None for s in slots
        ]
        snap["stream_calls"] = [int(s.calls.numpy()) for s in slots]
    return snap


def plan():
    """hvdspar's plan per tensor at trace time: (dense?, reason, ranks); under elastic the reason says
    the byte rule runs at every step (None for Horovod's own compressors)."""
    if not isinstance(compressor, hvdspar.Compressor):
        return None
    return {str(k): list(v) for k, v in compressor.plans().items()}


def last_dense_tensors():
    """How many tensors the latest step sent dense (None for Horovod's own compressors)."""
    return compressor.traffic()["dense_tensors"] if isinstance(compressor, hvdspar.Compressor) else None


def compressor_variables():
    return list(compressor.variables) if isinstance(compressor, hvdspar.Compressor) else []


# --- elastic state -----------------------------------------------------------------------------
class TracedState(hvd.elastic.KerasState):
    """KerasState that logs what its sync (broadcast from rank 0) and restore (roll back
    to the last commit) do to the model and to the compressor's variables."""

    def sync(self):
        before = snapshot()
        super().sync()
        event("sync", rank=hvd.rank(), size=hvd.size(), before=before, after=snapshot())

    def restore(self):
        before = snapshot()
        super().restore()
        event("restore", before=before, after=snapshot())


# Lists are replaced, never mutated in place: ObjectState.save() keeps references, and
# restore() must give back the committed lists.
state = TracedState(model, step=0, sizes=[], losses=[], shard_losses=[], dropped=False, added=False)
resets = []


def on_reset():
    info = {"size": hvd.size(), "rank": hvd.rank(), "step": state.step, "compress_calls": counting.calls,
            "traces": tracing_count(), "snapshot": snapshot()}
    resets.append(info)
    event("reset_callback", **info)


state.register_reset_callbacks([on_reset])
epochs = []  # this process' view, per completed epoch


def change_hosts(state, marker):
    """Rank 0 writes ``marker``; every rank then commits until the driver's notice arrives.

    State.commit() broadcasts rank 0's view of the host updates, so every rank raises
    HostsUpdatedInterrupt at the same iteration (and the loop count is the same on all).
    """
    if hvd.rank() == 0:
        (MARKERS / marker).touch()
        event("marker", name=marker, step=state.step)
    for _ in range(int(args.host_change_wait / 0.2)):
        time.sleep(0.2)
        state.commit()
    raise RuntimeError(f"no host update from the driver {args.host_change_wait}s after marker {marker!r}")


@hvd.elastic.run
def train(state):
    event("enter", rank=hvd.rank(), size=hvd.size(), step=state.step, compress_calls=counting.calls,
          traces=tracing_count(), plan=plan())
    while state.step < args.steps:
        if args.kill_at is not None and state.step == args.kill_at and hvd.rank() == 1 and claim("killed"):
            event("kill", rank=hvd.rank(), step=state.step, mode=args.kill_mode)
            if args.kill_mode == "sigkill":
                os.kill(PID, signal.SIGKILL)
            os._exit(1)
        x, y = shard(state.step, hvd.rank(), hvd.size())
        loss = global_batch_loss(state.step)  # before the step, as Keras reports it
        shard_loss = float(model.train_on_batch(x, y))
        state.sizes = state.sizes + [hvd.size()]
        state.losses = state.losses + [loss]
        state.shard_losses = state.shard_losses + [shard_loss]
        state.step += 1
        if state.step % args.steps_per_epoch == 0:
            info = {"epoch": state.step // args.steps_per_epoch - 1, "step": state.step, "size": hvd.size(),
                    "rank": hvd.rank(), "compress_calls": counting.calls, "traces": tracing_count(),
                    "plan": plan(), "dense_tensors": last_dense_tensors()}
            epochs.append(info)
            event("epoch", **info)
        state.commit()
        if state.step == args.drop_at and not state.dropped:
            state.dropped = True
            change_hosts(state, "drop")
        if state.step == args.add_at and not state.added:
            state.added = True
            change_hosts(state, "add")


event("begin", rank=hvd.rank(), size=hvd.size())
train(state)

weights = model.get_weights()
full_loss = float(tf.reduce_mean(tf.keras.losses.binary_crossentropy(Y, model(X, training=False))))
record = {
    "rank": hvd.rank(),
    "size": hvd.size(),
    "host": HOST,
    "pid": PID,
    "start_rank": int(os.environ.get("HOROVOD_RANK", -1)),
    "compression": args.compression,
    "steps": state.step,
    "sizes": state.sizes,
    "losses": state.losses,  # global batch, before each step
    "shard_losses": state.shard_losses,  # this process' own shard (the rank it had then)
    "full_loss": full_loss,
    "weights": [w.tolist() for w in weights],
    "finite": bool(all(np.all(np.isfinite(w)) for w in weights)),
    "identical": same_on_all_ranks(weights),
    "compress_calls": counting.calls,
    "traces": tracing_count(),
    "epochs": epochs,
    "resets": resets,
    "snapshot": snapshot(),
    "compressor_variables": len(compressor_variables()),
    "state_holds_compressor_variables": bool(
        {id(v) for v in compressor_variables()} & {id(v) for v in [*model.variables, *optimizer.variables()]}
    ),
    "traffic": compressor.traffic() if hasattr(compressor, "traffic") else None,
}
(OUT / f"final-rank{hvd.rank()}.json").write_text(json.dumps(record))
event("done", rank=hvd.rank(), size=hvd.size(), steps=state.step)
sys.stdout.flush()
