"""PowerSGD and EF-signSGD in one process (the 2-rank checks are in tests/test_powersgd_hvd.py).

The compressors run through compress/decompress as Horovod calls them, in an
in-process world (``exchange.InProcess``): with one rank the allreduce is the
identity; with R ranks whose gradients are equal it multiplies by R.
"""

import numpy as np
import pytest
import tensorflow as tf

import hvdspar
from hvdspar import exchange, sign, wire
from hvdspar.powersgd import compression_rate, orthogonalise

pytestmark = pytest.mark.quick


def stepper(comp):
    @tf.function
    def step(grads):
        return [comp.decompress(*comp.compress(g)) for g in grads]

    return step


def in_world(comp, size=1):
    comp.exchange = exchange.InProcess(size)
    return comp


def gram_schmidt(p):
    """Orthonormal columns, column by column (QR with a positive diagonal)."""
    q, r = np.linalg.qr(p)
    return q * np.sign(np.diag(r))


def numpy_powersgd(q, steps_grads):
    """The reference iteration (float64) on R ranks' matrices, from Q = q, with error feedback:
    yields (the average's approximation, the ranks' memories, the next Q) per step."""
    mem = None
    for grads in steps_grads:
        mem = mem or [np.zeros_like(g) for g in grads]
        mats = [g + m for g, m in zip(grads, mem)]
        p = gram_schmidt(sum(m @ q for m in mats))
        s = sum(m.T @ p for m in mats)
        avg = p @ s.T / len(mats)
        mem = [m - avg for m in mats]
        q = s / len(mats)
        yield avg, mem, q


# --- the pieces ---------------------------------------------------------------------------------


def test_orthogonalise_gives_orthonormal_columns_and_keeps_a_zero_column_zero():
    p = tf.constant(np.random.default_rng(0).standard_normal((50, 4)))
    o = orthogonalise(p).numpy()
    np.testing.assert_allclose(o.T @ o, np.eye(4), atol=1e-12)
    q, r = np.linalg.qr(p.numpy())
    np.testing.assert_allclose(o, q * np.sign(np.diag(r)), atol=1e-10)  # the same span, column by column
    z = orthogonalise(tf.concat([p[:, :1], tf.zeros([50, 1], tf.float64)], 1)).numpy()
    assert np.all(np.isfinite(z)) and np.all(z[:, 1] == 0)


def test_plan_vectors_and_low_rates_go_dense_and_conv_kernels_are_matrices():
    comp = hvdspar.PowerSGD(rank=4)
    plan = comp.codec.plan
    assert plan(10, [10]) == "a vector"
    assert compression_rate(8, 8, 4) == 1.0 and plan(64, [8, 8]) == "below min_compression_rate"
    assert plan(3 * 3 * 16 * 32, [3, 3, 16, 32]) is None  # (144 x 32) at rank 4: rate 4.3
    assert comp.codec.layout([3, 3, 16, 32]) == (144, 32, 4)
    assert comp.codec.expected_nbytes(144 * 32, tf.float32, [3, 3, 16, 32]) == (144 + 32) * 4 * 4


# --- through compress / decompress ------------------------------------------------------------


def test_low_rank_gradient_reaches_the_exact_average_after_a_few_warm_started_steps():
    rng = np.random.default_rng(1)
    g = (rng.standard_normal((40, 1)) @ rng.standard_normal((1, 30)) + rng.standard_normal((40, 1))
         @ rng.standard_normal((1, 30))).astype(np.float32)  # rank 2
    comp = in_world(hvdspar.PowerSGD(rank=2, start_iter=0, memory=False, seed=3))
    step = stepper(comp)
    errors = [float(np.linalg.norm(step([tf.constant(g)])[0].numpy() - g) / np.linalg.norm(g)) for _ in range(4)]
    assert errors[-1] < 1e-5, errors
    cold = in_world(hvdspar.PowerSGD(rank=2, start_iter=0, memory=False, warm_start=False, seed=3))
    cold_step = stepper(cold)
    cold_errors = [float(np.linalg.norm(cold_step([tf.constant(g)])[0].numpy() - g) / np.linalg.norm(g))
                   for _ in range(4)]
    assert cold_errors[0] < 1e-4  # rank 2 exactly: one power step already spans it
    rng2 = np.random.default_rng(2)
    full = rng2.standard_normal((40, 30)).astype(np.float32)  # full rank: warm start keeps improving
    warm = in_world(hvdspar.PowerSGD(rank=2, start_iter=0, memory=False, seed=3))
    warm_step = stepper(warm)
    best = np.linalg.svd(full, compute_uv=False)
    optimum = np.sqrt(np.sum(best[2:] ** 2)) / np.linalg.norm(full)
    errs = [float(np.linalg.norm(warm_step([tf.constant(full)])[0].numpy() - full) / np.linalg.norm(full))
            for _ in range(30)]
    assert errs[-1] < errs[0] and errs[-1] < optimum * 1.02, (errs[0], errs[-1], optimum)


def test_two_equal_ranks_match_the_numpy_iteration_with_error_feedback():
    """R ranks with equal gradients (the in-process world's peers): sum = R x, average = x's approximation."""
    rng = np.random.default_rng(4)
    grads = [[rng.standard_normal((20, 12)).astype(np.float32)] for _ in range(5)]
    comp = in_world(hvdspar.PowerSGD(rank=2, start_iter=0, seed=5), size=2)
    step = stepper(comp)
    outs, mems = [], []
    for (g,) in grads:
        out = step([tf.constant(g)])[0].numpy()
        outs.append(out / 2)  # unreduced, the placeholder is 1 on rank 0: factor 1, so out is the sum of 2 ranks
        mems.append(comp.slots[0].memory.numpy().reshape(20, 12).copy())
    q_init = comp.codec.initial_state([20, 12], tf.float32, comp.stream_seed(0, 0))["q"]
    ref = list(numpy_powersgd(q_init.numpy().astype(np.float64), [[g.astype(np.float64)] * 2 for (g,) in grads]))
    for t, ((avg, mem, _), out, m) in enumerate(zip(ref, outs, mems)):
        np.testing.assert_allclose(out, avg, rtol=1e-4, atol=1e-4 * np.abs(avg).max(), err_msg=f"step {t}")
        np.testing.assert_allclose(m, mem[0], rtol=1e-4, atol=1e-4 * np.abs(avg).max(), err_msg=f"step {t}")


def test_warm_up_steps_are_dense_and_exact_then_bytes_are_rows_plus_cols_times_rank():
    comp = in_world(hvdspar.PowerSGD(rank=2, start_iter=3, seed=1))
    step = stepper(comp)
    rng = np.random.default_rng(6)
    for t in range(5):
        g = rng.standard_normal((30, 20)).astype(np.float32)
        out = step([tf.constant(g), tf.constant(g[0])])
        t_ = comp.traffic()
        if t < 3:
            np.testing.assert_array_equal(out[0].numpy(), g)
            assert t_["last_step_bytes_sent"] == 600 * 4 + exchange.PLACEHOLDER_NBYTES + 20 * 4, t_
        else:
            assert not np.allclose(out[0].numpy(), g)
            assert t_["last_step_bytes_sent"] == (30 + 20) * 2 * 4 + exchange.PLACEHOLDER_NBYTES + 20 * 4, t_
        assert t_["dense_tensors"] == (2 if t < 3 else 1), t_  # the bias always; the kernel in the warm-up
    assert int(comp.slots[0].codec_state["step"].numpy()) == 5


def test_memory_identity_every_step_and_checkpoint_round_trip(tmp_path):
    comp = in_world(hvdspar.PowerSGD(rank=1, start_iter=1, seed=2))
    step = stepper(comp)
    rng = np.random.default_rng(7)
    before = np.zeros(48, np.float64)
    for t in range(4):
        g = rng.standard_normal((8, 6)).astype(np.float32)
        sent = step([tf.constant(g)])[0].numpy().reshape(-1)
        after = comp.slots[0].memory.numpy()
        np.testing.assert_allclose(after + sent, before + g.reshape(-1), rtol=1e-5, atol=1e-5)
        before = after.astype(np.float64)
    assert np.abs(before).max() > 0
    path = tf.train.Checkpoint(compressor=comp).save(str(tmp_path / "ckpt"))
    fresh = in_world(hvdspar.PowerSGD(rank=1, start_iter=1, seed=2))
    tf.train.Checkpoint(compressor=fresh).restore(path)
    g = tf.constant(rng.standard_normal((8, 6)).astype(np.float32))
    np.testing.assert_array_equal(step([g])[0].numpy(), stepper(fresh)([g])[0].numpy())
    for name in ("q", "step"):
        np.testing.assert_array_equal(comp.slots[0].codec_state[name].numpy(), fresh.slots[0].codec_state[name].numpy())


def test_a_nonfinite_gradient_gives_nan_and_leaves_the_state_alone():
    comp = in_world(hvdspar.PowerSGD(rank=1, start_iter=0, seed=2))
    step = stepper(comp)
    g = np.ones((8, 6), np.float32)
    step([tf.constant(g)])
    state = {k: v.numpy().copy() for k, v in comp.slots[0].codec_state.items()}
    memory = comp.slots[0].memory.numpy().copy()
    g[2, 3] = np.nan
    out = step([tf.constant(g)])[0].numpy()
    assert np.all(np.isnan(out))
    for k, v in comp.slots[0].codec_state.items():
        np.testing.assert_array_equal(v.numpy(), state[k])
    np.testing.assert_array_equal(comp.slots[0].memory.numpy(), memory)


def test_powersgd_spec_round_trips_and_bad_arguments_are_clear():
    comp = hvdspar.from_spec("powersgd:rank=2")
    assert isinstance(comp, hvdspar.PowerSGD) and comp.rank == 2 and comp.memory
    again = hvdspar.from_spec(comp.spec())
    assert again.config() == comp.config()
    for bad, match in [(dict(rank=0), "rank"), (dict(start_iter=-1), "start_iter"),
                       (dict(min_compression_rate=0), "min_compression_rate"), (dict(fallback="auto"), "auto")]:
        with pytest.raises(ValueError, match=match):
            hvdspar.PowerSGD(**bad)


# --- EF-signSGD -----------------------------------------------------------------------------------


def test_efsignsgd_message_is_d_over_8_bytes_plus_the_header_and_decodes_to_scaled_signs():
    for d, dtype in [(1000, tf.float32), (13, tf.float32), (64, tf.float64), (100, tf.float16)]:
        x = tf.cast(tf.random.stateless_normal([d], seed=[1, d]), dtype)
        codec = hvdspar.EFSignSGD().codec
        enc = codec.encode(x, tf.constant([0, 0], tf.int64), dtype)
        assert enc.message.shape[0] == wire.header_nbytes(d, dtype) + -(-d // 8) == codec.expected_nbytes(d, dtype)
        total, finite = codec.decode_sum(tf.concat([enc.message, enc.message], 0), 2, d, dtype)
        x64 = tf.cast(x, tf.float64).numpy()
        scale = np.abs(x64).sum() / d
        expect = 2 * scale * np.where(x64 < 0, -1.0, 1.0)
        np.testing.assert_allclose(total.numpy(), expect, rtol=1e-3 if dtype == tf.float16 else 1e-6)
        assert bool(finite)


def test_efsignsgd_memory_identity_and_contraction():
    comp = hvdspar.EFSignSGD(seed=1)
    step = stepper(comp)
    rng = np.random.default_rng(8)
    before = np.zeros(300)
    for t in range(5):
        g = rng.standard_t(3, size=300).astype(np.float32)
        sent = step([tf.constant(g)])[0].numpy()
        after = comp.slots[0].memory.numpy()
        e = before + g
        np.testing.assert_allclose(after + sent, e, rtol=1e-5, atol=1e-5)
        assert np.sum(after.astype(np.float64) ** 2) < np.sum(e ** 2)  # ||C(e) - e|| < ||e||
        assert len(np.unique(np.abs(sent))) == 1  # one scale: ||e||_1 / d
        before = after.astype(np.float64)
    assert comp.traffic()["last_step_bytes_sent"] == 13 + 300 // 8 + 1 + exchange.PLACEHOLDER_NBYTES
    assert hvdspar.from_spec("efsignsgd").spec().startswith("efsignsgd:memory=true")
    assert sign.SCHEME_SIGN not in (0, 1, 2, 3, 16, wire.SCHEME_NONFINITE)


def test_the_simulated_workers_refuse_powersgd_with_a_clear_error():
    from hvdspar.training.reproduce_sim import SimExchange

    with pytest.raises(ValueError, match="allreduce"):
        SimExchange("powersgd:rank=1", 4, [(8, 6)])
    assert SimExchange("efsignsgd", 4, [(8, 6)]).comp.memory  # an allgather codec runs there


def test_plan_summary_names_powersgds_own_rule():
    comp = in_world(hvdspar.PowerSGD(rank=1, seed=1))
    stepper(comp)([tf.zeros([30, 20]), tf.zeros([20]), tf.zeros([2, 2])])
    line = comp.plan_summary()
    assert "2 of 3 tensors sent dense (1 a vector, 1 below min_compression_rate; fallback=PowerSGD's own rule)" in line


def test_build_creates_powersgds_state_and_a_checkpoint_restores_it_before_the_first_step(tmp_path):
    """``hvdspar.build`` (slots made eagerly, for an immediate restore) gives PowerSGD its Q and step."""
    comp = in_world(hvdspar.PowerSGD(rank=1, start_iter=0, seed=4))
    step = stepper(comp)
    g = [tf.random.stateless_normal([12, 8], seed=[1, t]) for t in range(3)]
    for t in range(2):
        step([g[t]])
    path = tf.train.Checkpoint(compressor=comp).save(str(tmp_path / "ckpt"))
    fresh = in_world(hvdspar.PowerSGD(rank=1, start_iter=0, seed=4))
    hvdspar.build(fresh, [tf.zeros([12, 8])])
    tf.train.Checkpoint(compressor=fresh).restore(path).assert_existing_objects_matched()
    assert int(fresh.slots[0].codec_state["step"].numpy()) == 2
    np.testing.assert_array_equal(step([g[2]])[0].numpy(), stepper(fresh)([g[2]])[0].numpy())
