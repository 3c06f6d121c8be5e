"""The base Compressor's trip in one process (before hvd.init(): a world of one rank).

compress() encodes and gathers (one message here), decompress() decodes and multiplies by
the reduced placeholder: Horovod's factor. The 2-rank versions are in tests/test_dropin.py.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import hvdspar

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")


def exact():
    return hvdspar.GSpar(rho=1.0, method="exact", fallback=False, seed=1)


@pytest.mark.parametrize("factor", [1.0, 0.5, 3.0, 0.0])
def test_decompress_multiplies_the_decoded_sum_by_the_reduced_placeholder(factor):
    comp = exact()
    g = tf.random.stateless_normal([6, 7], seed=[1, 2])
    placeholder, ctx = comp.compress(g)
    assert placeholder.shape == [1] and float(placeholder[0]) == 1.0  # rank 0: the root
    out = comp.decompress(placeholder * factor, ctx)
    np.testing.assert_allclose(out.numpy(), factor * g.numpy(), rtol=1e-6)


def test_float64_gradients_get_a_float64_placeholder():
    comp = exact()
    placeholder, ctx = comp.compress(tf.ones([5], tf.float64))
    assert placeholder.dtype == tf.float64
    assert comp.decompress(placeholder, ctx).dtype == tf.float64


def test_a_nonfinite_gradient_gives_nan_everywhere_and_leaves_memory_and_stream():
    comp = hvdspar.GSpar(rho=0.5, memory=True, fallback=False, seed=1)
    g = tf.random.stateless_normal([100], seed=[1, 2])
    comp.decompress(*comp.compress(g))
    memory, calls = comp.slots[0].memory.numpy().copy(), int(comp.slots[0].calls.numpy())
    norms = comp.traffic()["sq_norm"]
    bad = tf.tensor_scatter_nd_update(g, [[5]], [np.inf])
    out = comp.decompress(*comp.compress(bad))
    assert np.isnan(out.numpy()).all()
    assert (comp.slots[0].memory.numpy() == memory).all()
    assert int(comp.slots[0].calls.numpy()) == calls
    assert comp.traffic()["sq_norm"] == norms


def test_nonfinite_raise_stops_with_a_clear_error():
    comp = hvdspar.GSpar(rho=0.5, fallback=False, nonfinite="raise", seed=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        comp.decompress(*comp.compress(tf.constant([1.0, np.nan, 2.0])))


def test_nonfinite_argument_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        hvdspar.TopK(ratio=0.1, nonfinite="skip")
    comp = hvdspar.from_spec("topk:ratio=0.1,nonfinite=raise")
    assert comp.nonfinite == "raise" and hvdspar.from_spec(comp.spec()).nonfinite == "raise"
    assert "nonfinite" not in hvdspar.from_spec("topk:ratio=0.1").spec()  # the default is not spelled out


def test_eager_calls_share_one_state_per_shape():
    comp = hvdspar.TopK(ratio=0.1, memory=True, seed=1)
    for t in range(5):
        comp.decompress(*comp.compress(tf.fill([50], float(t))))
        comp.decompress(*comp.compress(tf.fill([3, 4], float(t))))
    assert len(comp.slots) == 2
    assert [int(s.calls.numpy()) for s in comp.slots] == [5, 5]


@pytest.mark.parametrize("spec", ["gspar:rho=0.1,memory=true", "topk:ratio=0.05,memory=true", "qsgd:levels=4,memory=true"])
def test_elastic_run_time_plan_gives_the_trace_time_result(spec, monkeypatch):
    """Under HOROVOD_ELASTIC=1 the byte rule runs in the graph (a tf.cond on the run-time size);
    in one process it takes the compressed branch, with the same result, memory and traffic as
    the plan taken at trace time."""
    g = tf.constant(np.random.default_rng(0).normal(size=(40, 25)).astype(np.float32))
    runs = {}
    for elastic in ("0", "1"):
        monkeypatch.setenv("HOROVOD_ELASTIC", elastic)
        comp = hvdspar.from_spec(spec + ",seed=5")

        @tf.function
        def step(g):
            t, ctx = comp.compress(g)
            return comp.decompress(t * 0.5, ctx)  # as if Horovod averaged over 2 ranks

        outs = [step(g).numpy() for _ in range(3)]
        memory = comp.slots[0].memory.numpy() if comp.memory else None
        runs[elastic] = (outs, memory, comp.traffic(), comp.plan_summary())
    (a, mem_a, tr_a, _), (b, mem_b, tr_b, summary) = runs["0"], runs["1"]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    if mem_a is not None:
        np.testing.assert_array_equal(mem_a, mem_b)
    for key in ("bytes_sent", "dense_bytes", "kept", "steps", "dense_tensors", "sq_norm", "sq_norm_sent"):
        assert tr_a[key] == tr_b[key], key
    assert "planned at every step" in summary


def test_elastic_refuses_the_timed_fallback(monkeypatch):
    monkeypatch.setenv("HOROVOD_ELASTIC", "1")
    comp = hvdspar.GSpar(rho=0.1, fallback="auto")
    with pytest.raises(ValueError, match="fallback='auto'.*elastic"):
        tf.function(lambda g: comp.compress(g)[0])(tf.ones([100]))


def test_a_compressor_built_inside_the_step_shares_one_state_across_the_traces():
    """``compression=hvdspar.GSpar(...)`` built inside a tf.function step, as Horovod's custom-loop
    benchmark builds its compressor: TensorFlow traces the step again (variables at the first call,
    and first_batch=False), building a new instance each time. Every instance of that line shares
    the first one's state, so the step runs and its stream and memory go on as with one compressor
    built outside (the same messages, bit for bit)."""
    from hvdspar.compressor import in_step_compressors

    before = len(in_step_compressors())

    @tf.function
    def step(g, first):
        comp = hvdspar.GSpar(rho=0.5, fallback=False, seed=1, memory=True)
        return comp.decompress(*comp.compress(g))

    outside = hvdspar.GSpar(rho=0.5, fallback=False, seed=1, memory=True)

    @tf.function
    def step_outside(g, first):
        return outside.decompress(*outside.compress(g))

    g = tf.random.stateless_normal([100], seed=[1, 2])
    for first in (True, False, False):
        np.testing.assert_array_equal(step(g, first).numpy(), step_outside(g, first).numpy())
    made = in_step_compressors()[before:]
    assert len(made) == 1  # one state for the line, however many traces
    assert len(made[0].slots) == 1 and int(made[0].slots[0].calls.numpy()) == 3
    np.testing.assert_array_equal(made[0].slots[0].memory.numpy(), outside.slots[0].memory.numpy())
    assert made[0].traffic()["steps"] == 3


def test_two_compressors_built_outside_the_step_keep_apart():
    a = hvdspar.GSpar(rho=0.5, fallback=False, seed=1)
    b = hvdspar.GSpar(rho=0.5, fallback=False, seed=1)
    g = tf.random.stateless_normal([100], seed=[1, 2])
    tf.function(lambda: a.decompress(*a.compress(g)))()
    assert len(a.slots) == 1 and len(b.slots) == 0


def test_a_compressor_built_once_serves_every_trace_of_the_step():
    comp = hvdspar.GSpar(rho=0.5, fallback=False, seed=1)

    @tf.function
    def step(g, first):
        return comp.decompress(*comp.compress(g))

    g = tf.random.stateless_normal([100], seed=[1, 2])
    step(g, True)
    step(g, False)
    step(g, False)
    assert len(comp.slots) == 1 and int(comp.slots[0].calls.numpy()) == 3


def test_tf1_graph_mode_is_refused_with_an_error_that_names_it():
    """Horovod's own tests run each case in a TF1 graph too; hvdspar's state is created on first use,
    which a TF1 graph would need a session to initialise: a clear error, not an uninitialised variable."""
    comp = hvdspar.GSpar(rho=0.5, seed=1)
    with tf.Graph().as_default():
        with pytest.raises(RuntimeError, match="not in a TF1 graph.*Compression.none"):
            comp.compress(tf.ones([4]))


def test_a_tf_function_called_inside_a_tf1_graph_is_refused_with_the_same_error():
    """Horovod's test_model_parallel_model calls a tf.function from its TF1-graph half: the state
    would be made in that graph (outside the function) and captured as an EagerTensor; the same
    clear error as in the graph itself instead of TensorFlow's 'Attempting to capture an EagerTensor'."""
    comp = hvdspar.GSpar(rho=0.5, seed=1)

    @tf.function
    def step(x):
        tensor, ctx = comp.compress(x)
        return comp.decompress(tensor, ctx)

    with tf.Graph().as_default():
        with pytest.raises(RuntimeError, match="not in a TF1 graph.*Compression.none"):
            step(tf.ones([4]))
    # and in TensorFlow 2 such a function traces and runs
    again = tf.function(step.python_function)
    assert again(tf.ones([4])).shape == [4]


def test_hvdspar_imported_inside_a_tf1_graph_still_works_in_eager_mode_afterwards():
    """hvdspar made tensors at import (bit shifts, a mask) that belonged to whatever graph was the
    default then: imported in the TF1 half of Horovod's tests, every later eager compress failed with
    'is out of scope and cannot be used here'. Run in a fresh interpreter, as the import is once."""
    script = (
        "import tensorflow as tf\n"
        "with tf.Graph().as_default():\n"
        "    import hvdspar\n"
        "    try:\n"
        "        hvdspar.GSpar(rho=0.5, seed=1).compress(tf.ones([4]))\n"
        "    except RuntimeError as e:\n"
        "        assert 'TF1 graph' in str(e)\n"
        "for comp in (hvdspar.GSpar(rho=0.5, seed=1), hvdspar.QSGD(levels=4, seed=1), hvdspar.TopK(ratio=0.5)):\n"
        "    x = tf.random.stateless_normal([1000], seed=[1, 2])\n"
        "    y = comp.decompress(*comp.compress(x))\n"
        "    assert y.shape == [1000] and bool(tf.reduce_all(tf.math.is_finite(y)))\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_group_of_mixed_dtypes_is_refused_in_hvdspars_words_where_none_fails_too():
    """Horovod's grouped allreduce takes one dtype per group (none fails with a raw
    'expected to be a float tensor but is a half tensor'); hvdspar says what is wrong and what to
    do. One rank, hvd.init() in a fresh interpreter (the other tests here run before it)."""
    script = (
        "import tensorflow as tf, horovod.tensorflow as hvd, hvdspar\n"
        "hvd.init()\n"
        "group = [tf.ones([4]), tf.ones([4], tf.float16)]\n"
        "try:\n"
        "    hvd.grouped_allreduce(group, compression=hvdspar.GSpar(rho=0.5, seed=1))\n"
        "except ValueError as e:\n"
        "    print('hvdspar:', e)\n"
        "try:\n"
        "    hvd.grouped_allreduce(group, compression=hvd.Compression.none)\n"
        "except tf.errors.InvalidArgumentError:\n"
        "    print('none fails too')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "mixes float16, float32 tensors" in done.stdout and "give each dtype its own group" in done.stdout, \
        done.stdout + done.stderr[-2000:]
    assert "none fails too" in done.stdout


def test_state_made_at_the_first_trace_leaves_the_enclosing_function_traced_once():
    """Horovod wraps its gradient allreduce in a tf.function. hvdspar makes its state at the first trace;
    TensorFlow traced that function a second time for it (a whole second trace of every gradient's
    trip: Keras MobileNetV2's first step traced in 18.7 s, 11.1 s after, none 6.9 s)."""
    from hvdspar import exchange

    comp = hvdspar.GSpar(rho=0.5, seed=1, memory=True)
    comp.exchange = exchange.InProcess(2)
    traces = []

    @tf.function
    def allreduce_grads(g):
        traces.append(1)
        out, ctx = comp.compress(g)
        return comp.decompress(out, ctx)

    @tf.function
    def step(g):
        return allreduce_grads(g) * 1.0

    g = tf.random.stateless_normal([100], seed=[1, 2])
    first, second = step(g), step(g)
    assert len(traces) == 1 and len(comp.slots) == 1
    assert int(comp.slots[0].calls.numpy()) == 2  # the state is the function's: both steps used it
    assert bool(tf.reduce_all(tf.math.is_finite(first))) and bool(tf.reduce_all(tf.math.is_finite(second)))
