"""Error feedback (memory=True) on every compressor, as training state.

Horovod skips compression with one rank, so these single-process tests call
``compress``/``decompress`` themselves inside a ``tf.function`` (as Horovod
does) in a fake world of one rank: the allgather is the identity, and the
"average" a rank gets back is exactly what it sent.
"""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar

pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")

SHAPES = [(12, 5), (5,)]  # a Dense kernel (2-D: ATOMO uses SVD atoms) and its bias

MAKERS = {
    "gspar": lambda: hvdspar.GSpar(rho=0.2, memory=True, seed=11),
    "unisp": lambda: hvdspar.UniSp(rho=0.2, memory=True, seed=11),
    "topk": lambda: hvdspar.TopK(ratio=0.1, seed=11),
    "randomk": lambda: hvdspar.RandomK(ratio=0.1, seed=11),
    "randomk_rescaled": lambda: hvdspar.RandomK(ratio=0.1, rescale=True, seed=11),
    "atomo": lambda: hvdspar.Atomo(budget=1.5, memory=True, seed=11),
    "qsgd": lambda: hvdspar.QSGD(levels=2, memory=True, seed=11),
    "terngrad": lambda: hvdspar.TernGrad(memory=True, seed=11),
    "efsignsgd": lambda: hvdspar.EFSignSGD(seed=11),
}


def stepper(comp):
    """What Horovod does with a list of gradients, in a tf.function."""

    @tf.function
    def step(grads):
        return [comp.decompress(*comp.compress(g)) for g in grads]

    return step


def gradients(t):
    rng = np.random.default_rng(1000 + t)
    return [tf.constant(rng.standard_normal(s).astype(np.float32) * (1 + 3 * t % 5)) for s in SHAPES]


def memories(comp):
    return [s.memory.numpy().copy() for s in comp.slots]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_memory_plus_sent_equals_memory_before_plus_gradient_every_step(name):
    comp = MAKERS[name]()
    step = stepper(comp)
    before = [np.zeros(np.prod(s), np.float32) for s in SHAPES]
    for t in range(6):
        g = gradients(t)
        sent = step(g)
        after = memories(comp)
        for m0, gi, si, m1 in zip(before, g, sent, after):
            accumulated = m0.astype(np.float64) + gi.numpy().reshape(-1)
            np.testing.assert_allclose(
                m1 + si.numpy().reshape(-1), accumulated, rtol=1e-5, atol=1e-5 * np.abs(accumulated).max()
            )
            assert si.shape == gi.shape
        before = after
    assert any(np.abs(m).max() > 0 for m in before)  # the memory is really used
    t = comp.traffic()
    assert t["steps"] == 6 and t["tensors"] == 2 and t["dense_tensors"] == 0
    assert 0 < t["bytes_sent"] < t["dense_bytes"], t


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda m: hvdspar.Atomo(budget=1.5, memory=m, seed=3), (12, 5)),
        (lambda m: hvdspar.Atomo(budget=3, memory=m, seed=3), (60,)),
        (lambda m: hvdspar.QSGD(levels=1, memory=m, seed=3), (60,)),
        (lambda m: hvdspar.TernGrad(memory=m, seed=3), (60,)),
        (lambda m: hvdspar.RandomK(ratio=0.1, rescale=True, memory=m, seed=3), (60,)),
    ],
)
def test_with_memory_unbiased_compressors_send_a_contraction(make, shape):
    """E||C(x) - x||^2 < ||x||^2 with memory (C = gamma Q), and > ||x||^2 for the plain unbiased Q.

    Without the contraction the error-feedback memory m = x - C(x) grows geometrically.
    """
    x = tf.constant(np.random.default_rng(9).standard_t(3, size=int(np.prod(shape))).astype(np.float32))
    sq = float(np.sum(x.numpy().astype(np.float64) ** 2))
    errors = {}
    for memory in (True, False):
        comp = make(memory)
        kwargs = {"shape": shape} if isinstance(comp, hvdspar.Atomo) else {}

        @tf.function
        def draw(seed, comp=comp, kwargs=kwargs):
            enc = comp.feedback.encode(x, seed, tf.float32, **kwargs)
            return comp.codec.decode_sum(enc.message, 1, x.shape[0], tf.float32, **kwargs)[0]

        err = [np.sum((draw(tf.constant([4, r], tf.int64)).numpy() - x.numpy()) ** 2) / sq for r in range(300)]
        errors[memory] = (np.mean(err), np.std(err) / np.sqrt(len(err)))
    assert errors[True][0] + 5 * errors[True][1] < 1.0, errors
    assert errors[False][0] - 5 * errors[False][1] > 1.0, errors


def test_memory_off_keeps_no_state_and_sends_compressed_gradient():
    comp = hvdspar.TopK(ratio=0.1, memory=False)
    sent = stepper(comp)(gradients(0))
    assert all(s.memory is None for s in comp.slots)
    assert np.count_nonzero(sent[0].numpy()) == 6  # k = round(0.1 * 60)


@pytest.mark.parametrize(
    "name, how",
    [("topk", "deferred"), ("atomo", "deferred"), ("qsgd", "deferred"), ("gspar", "deferred"), ("topk", "build"),
     ("efsignsgd", "deferred")],
)
def test_checkpoint_round_trip_restores_memory_and_random_streams(tmp_path, name, how):
    """Restore into a fresh compressor before its first step: the next step is bit-identical."""
    comp = MAKERS[name]()
    step = stepper(comp)
    for t in range(3):
        step(gradients(t))
    path = tf.train.Checkpoint(compressor=comp).save(str(tmp_path / "ckpt"))

    fresh = MAKERS[name]()
    if how == "build":  # slots created eagerly: restoration is immediate, and checkable before any step
        fresh.bucket_mb = 0  # as the stepper sends them: each tensor alone
        hvdspar.build(fresh, [tf.zeros(s) for s in SHAPES])
    status = tf.train.Checkpoint(compressor=fresh).restore(path)
    if how == "build":
        status.assert_existing_objects_matched()
        for a, b in zip(memories(fresh), memories(comp)):
            np.testing.assert_array_equal(a, b)
    else:
        assert fresh.slots == []  # nothing to restore into yet: deferred

    ours, theirs = step(gradients(3)), stepper(fresh)(gradients(3))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(memories(comp), memories(fresh)):
        np.testing.assert_array_equal(a, b)
    assert [int(s.calls.numpy()) for s in fresh.slots] == [4, 4]
    status.assert_existing_objects_matched()


def keras_model():
    model = tf.keras.Sequential([tf.keras.layers.Dense(5, input_shape=(12,))])
    model.build((None, 12))
    return model


def test_track_puts_memory_in_model_save_weights_and_model_checkpoint(tmp_path):
    model, comp = keras_model(), MAKERS["topk"]()
    assert hvdspar.track(model, comp) is comp
    step = stepper(comp)
    for t in range(3):
        step(gradients(t))
    # The compressor's variables are not model weights (Horovod's broadcast and get_weights ignore them).
    assert len(model.weights) == 2 and len(model.variables) == 2
    model.save_weights(str(tmp_path / "weights"))  # TF checkpoint format
    ckpt_path = tf.train.Checkpoint(model=model).save(str(tmp_path / "model_ckpt"))
    reference = step(gradients(3))
    expected_memory = memories(comp)

    for restore in (
        lambda m: m.load_weights(str(tmp_path / "weights")),
        lambda m: tf.train.Checkpoint(model=m).restore(ckpt_path),
    ):
        model2, comp2 = keras_model(), MAKERS["topk"]()
        hvdspar.track(model2, comp2)
        restore(model2)  # before the first step: the slots do not exist yet
        out = stepper(comp2)(gradients(3))
        for a, b in zip(out, reference):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(memories(comp2), expected_memory):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(model2.get_weights()[0], model.get_weights()[0])


def test_build_makes_one_state_per_message_as_training_keys_it():
    variables = [tf.Variable(tf.zeros(s)) for s in SHAPES]
    comp = MAKERS["topk"]()
    hvdspar.build(comp, variables)
    hvdspar.build(comp, variables)  # idempotent
    assert [s.shape.as_list() for s in comp.slots] == [[65]]  # one bucket: the kernel and the bias
    per_tensor = hvdspar.TopK(ratio=0.1, seed=11, bucket_mb=0)
    hvdspar.build(per_tensor, variables)
    assert [s.shape.as_list() for s in per_tensor.slots] == [[12, 5], [5]]
    with pytest.raises(TypeError):
        hvdspar.track(keras_model(), object())


def test_a_checkpoint_of_another_bucket_layout_fails_naming_the_layout(tmp_path):
    """A per-tensor checkpoint (bucket_mb=0, or hvdspar before buckets became the default) restored
    into a bucketed compressor: an hvdspar error that says what differs and what to do, not
    TensorFlow's raw shape error."""
    variables = [tf.Variable(tf.zeros(s)) for s in SHAPES]
    old = hvdspar.GSpar(rho=0.2, memory=True, seed=11, bucket_mb=0)
    hvdspar.build(old, variables)
    path = tf.train.Checkpoint(compressor=old).save(str(tmp_path / "ckpt"))
    new = hvdspar.GSpar(rho=0.2, memory=True, seed=11)
    tf.train.Checkpoint(compressor=new).restore(path)
    with pytest.raises(ValueError, match="another bucket layout.*bucket_mb=0"):
        hvdspar.build(new, variables)
    again = hvdspar.GSpar(rho=0.2, memory=True, seed=11, bucket_mb=0)  # the layout it was written with
    tf.train.Checkpoint(compressor=again).restore(path).assert_existing_objects_matched()
    hvdspar.build(again, variables)


def mean_estimation_with_topk(memory, steps=2000, d=20, noise=3.0, lr=0.01):
    """SGD with top-1 on f(w) = E_s 0.5 ||w - (w* + noise s e_0)||^2, s = +-1 uniformly.

    A least-squares problem whose per-sample gradients w - w* - noise s e_0 are
    dominated by zero-mean noise on one coordinate. Top-k without memory always
    picks that coordinate and never moves the others: it stalls at
    f - f* = ||w*_{1:}||^2 / 2. With memory the other coordinates' gradients
    accumulate until they are sent, and the iterate minus lr * memory follows
    plain SGD exactly (Stich et al.), so it converges.
    Returns the suboptimality f(w) - f* = ||w - w*||^2 / 2 after ``steps`` steps.
    """
    rng = np.random.default_rng(0)
    w_star = tf.constant(rng.choice([-1, 1], d) * rng.uniform(0.5, 1.5, d), tf.float32)
    w_star = tf.tensor_scatter_nd_update(w_star, [[0]], [0.0])
    w = tf.Variable(tf.zeros([d]))
    comp = hvdspar.TopK(ratio=1 / d, memory=memory)
    e0 = tf.one_hot(0, d)

    @tf.function
    def run():
        for t in tf.range(steps):
            s = tf.sign(tf.random.stateless_uniform([], seed=tf.stack([7, t])) - 0.5)
            grad = w - w_star - noise * s * e0
            w.assign_sub(lr * comp.decompress(*comp.compress(grad)))
        return 0.5 * tf.reduce_sum(tf.square(w - w_star))

    start = 0.5 * float(tf.reduce_sum(tf.square(w_star)))
    return float(run()), start


def test_topk_with_memory_converges_where_topk_without_memory_stalls():
    with_memory, start = mean_estimation_with_topk(memory=True)
    without, _ = mean_estimation_with_topk(memory=False)
    assert without > 0.95 * start  # stalled
    assert with_memory < without / 100, (with_memory, without)
    assert with_memory < 0.01 * start
