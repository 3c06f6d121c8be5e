"""2 ranks: Horovod's contract for compression= with a lossless hvdspar compressor beside Horovod's none
(run by tests/test_contract.py). Each case runs the same call with Compression.none and with hvdspar."""

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd

import hvdspar
from tests.workers.common import report, same_on_all_ranks

hvd.init()
rank, size = hvd.rank(), hvd.size()
tf.random.set_seed(1)


def lossless():
    return hvdspar.GSpar(rho=1.0, fallback=False, seed=3)


# --- 1. every dtype and op: integers and Min/Max/Product travel as none sends them ---------------
passed = {}
for dtype in (tf.uint8, tf.int8, tf.int32, tf.int64, tf.float16, tf.float32, tf.float64):
    x = tf.cast(tf.reshape(tf.range(24) % 7 + rank, [2, 3, 4]), dtype)
    for op_name in ("Sum", "Average", "Min", "Max", "Product"):
        if op_name == "Average" and not dtype.is_floating:
            continue
        op = getattr(hvd, op_name)
        comp = lossless()
        for mode in ("eager", "function"):
            def call(c, x=x, op=op, mode=mode):
                label = "none" if c is hvd.Compression.none else "hvdspar"
                return hvd.allreduce(x, op=op, compression=c, name=f"dt_{dtype.name}_{op_name}_{mode}_{label}")
            none = call(hvd.Compression.none) if mode == "eager" else tf.function(lambda: call(hvd.Compression.none))()
            ours = call(comp) if mode == "eager" else tf.function(lambda: call(comp))()
            passed[f"{dtype.name}/{op_name}/{mode}"] = bool(
                ours.dtype == none.dtype and ours.shape == none.shape
                and np.allclose(ours.numpy().astype(np.float64), none.numpy().astype(np.float64),
                                rtol=1e-3 if dtype == tf.float16 else 1e-6))

try:
    hvd.allreduce(tf.ones([4]), op=hvd.Adasum, compression=lossless())
    adasum = "no error"
except NotImplementedError as e:
    adasum = str(e)

# --- 2. the gradient through a compressed allreduce is Horovod's ---------------------------------
grads = {}
for op_name in ("Sum", "Average"):
    op = getattr(hvd, op_name)
    x = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32) * (rank + 1), [3, 4]))
    for label, comp in (("none", hvd.Compression.none), ("hvdspar", lossless())):
        with tf.GradientTape() as tape:
            y = hvd.allreduce(x * 2.0, op=op, compression=comp, prescale_factor=0.5, postscale_factor=3.0)
            loss = tf.reduce_sum(y * tf.cast(rank + 1, tf.float32))
        g = tape.gradient(loss, x)
        grads[f"{op_name}/{label}"] = None if g is None else g.numpy().tolist()
    with tf.GradientTape() as tape:
        ys = hvd.grouped_allreduce([x, x * 3.0], op=op, compression=lossless())
        loss = tf.add_n([tf.reduce_sum(v) for v in ys]) * tf.cast(rank + 1, tf.float32)
    g = tape.gradient(loss, x)
    grads[f"{op_name}/grouped"] = None if g is None else g.numpy().tolist()
    with tf.GradientTape() as tape:
        ys = hvd.grouped_allreduce([x, x * 3.0], op=op)
        loss = tf.add_n([tf.reduce_sum(v) for v in ys]) * tf.cast(rank + 1, tf.float32)
    grads[f"{op_name}/grouped_none"] = tape.gradient(loss, x).numpy().tolist()

# --- 3. ranks that disagree get an error on every rank --------------------------------------------
disagree = {}
cases = {
    "dimension": lambda: tf.ones([17 + rank] * 3),
    "rank": lambda: tf.ones([17, 23 * 57] if rank == 0 else [17, 23, 57]),
    "dtype": lambda: tf.ones([17] * 3, dtype=tf.int32 if rank == 0 else tf.float32),
}
for case, make in cases.items():
    for label, comp in (("none", hvd.Compression.none), ("gspar", lossless()),
                        ("gspar_half", hvdspar.GSpar(rho=0.5, seed=2))):
        try:
            hvd.allreduce(make(), compression=comp)
            disagree[f"{case}/{label}"] = "no error"
        except tf.errors.FailedPreconditionError:
            disagree[f"{case}/{label}"] = "FailedPrecondition"
        except Exception as e:  # noqa: BLE001 - the test reports which error it was
            disagree[f"{case}/{label}"] = f"{type(e).__name__}: {e}"[:300]

# --- 4. one message per bucket with only compression= set ----------------------------------------
def model_and_data(seed):
    tf.random.set_seed(seed)
    model = tf.keras.Sequential([tf.keras.layers.Dense(16, activation="relu", input_shape=(8,)),
                                 tf.keras.layers.Dense(16, activation="relu"),
                                 tf.keras.layers.Dense(3)])
    data = tf.random.stateless_normal([32, 8], seed=[rank, 7])
    labels = tf.random.stateless_uniform([32], seed=[rank, 8], maxval=3, dtype=tf.int32)
    model(data)
    init = np.random.RandomState(seed)  # the same weights for every run of a seed, on every rank
    model.set_weights([init.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    return model, data, labels


def tape_steps(compression, steps=3, seed=0, **kw):
    model, data, labels = model_and_data(seed)
    opt = tf.keras.optimizers.SGD(0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, model(data),
                                                                                 from_logits=True))
        tape = hvd.DistributedGradientTape(tape, compression=compression, **kw)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return grads

    model(data)
    hvd.broadcast_variables(model.variables, root_rank=0)
    grads = [step() for _ in range(steps)]
    return model, grads


none_model, none_grads = tape_steps(hvd.Compression.none)
comp = lossless()
ours_model, ours_grads = tape_steps(comp)
bucketed = {
    "slots": len(comp.slots),
    "slot_shape": comp.slots[0].shape.as_list(),
    "max_err": max(float(np.max(np.abs(a.numpy() - b.numpy())))
                   for ga, gb in zip(none_grads, ours_grads) for a, b in zip(ga, gb)),
    "identical": same_on_all_ranks(ours_model.trainable_variables),
    "steps": comp.traffic()["steps"],
}
comp0 = hvdspar.GSpar(rho=1.0, fallback=False, seed=3, bucket_mb=0)
tape_steps(comp0)
bucketed["per_tensor_slots"] = len(comp0.slots)

# Keras fit, DistributedOptimizer without groups
import horovod.tensorflow.keras as hvdk  # noqa: E402

kcomp = hvdspar.GSpar(rho=0.3, seed=4, memory=True)
model, data, labels = model_and_data(1)
model.compile(optimizer=hvdk.DistributedOptimizer(tf.keras.optimizers.SGD(0.1), compression=kcomp),
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(data, labels, batch_size=8, epochs=1, verbose=0,
          callbacks=[hvdk.callbacks.BroadcastGlobalVariablesCallback(0)])
keras_fit = {"slots": len(kcomp.slots), "identical": same_on_all_ranks(model.trainable_variables),
             "steps": kcomp.traffic()["steps"], "density": kcomp.traffic()["density"]}

# --- 5. one compressor, two optimizers (a GAN): state keyed by the variables ----------------------
def gan(compressions, steps=3):
    (ma, data, labels), (mb, _, _) = model_and_data(5), model_and_data(6)  # same shapes, other weights
    opts = [tf.keras.optimizers.SGD(0.1), tf.keras.optimizers.SGD(0.05)]

    @tf.function
    def step():
        for model, opt, comp in zip((ma, mb), opts, compressions):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, model(data),
                                                                                     from_logits=True))
            tape = hvd.DistributedGradientTape(tape, compression=comp)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))

    for _ in range(steps):
        step()
    return [w.numpy() for w in ma.trainable_variables + mb.trainable_variables]


# top-k with error feedback is deterministic: any memory shared between the models shows
shared = hvdspar.TopK(ratio=0.2, memory=True)
one = gan([shared, shared])
two = gan([hvdspar.TopK(ratio=0.2, memory=True), hvdspar.TopK(ratio=0.2, memory=True)])
gan_result = {"slots": len(shared.slots),
              "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))}

# --- 6. local gradients: PartialDistributedGradientTape, register_local_source -------------------
def local_grads(compression, num_local):
    """Horovod's partial tape on a model whose weights differ by rank: the first ``num_local`` layers
    are local (their gradient divided by size, not reduced), the rest averaged."""
    init = tf.keras.initializers.Constant(float(rank + 1))
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, kernel_initializer=init, bias_initializer=init),
                                 tf.keras.layers.Dense(3, kernel_initializer=init, bias_initializer=init)])
    x = tf.constant(np.random.RandomState(rank).rand(2, 3), tf.float32)
    model(x)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        tape = hvd.PartialDistributedGradientTape(tape, local_layers=model.layers[:num_local],
                                                  compression=compression)
        return tape.gradient(loss, model.trainable_variables)
    return [g.numpy() for g in grads()]


def model_parallel(compression):
    """Horovod's model-parallel pattern: an embedding split over the ranks (alltoall inside the model),
    its table registered as a local source of DistributedGradientTape, one SGD step."""
    table = tf.Variable(tf.fill([7 + 2 * rank, 3], float(rank + 1)))
    dense = tf.Variable(tf.ones([6, 1]))
    ids = hvd.alltoall(tf.constant([rank + 1, rank] if rank == 0 else [rank + 2, rank + 3], tf.int64))

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            y = hvd.alltoall(tf.gather(table, ids))
            loss = tf.reduce_mean(tf.square(tf.matmul(tf.reshape(y, [1, 6]), dense) - 1.0))
        tape = hvd.DistributedGradientTape(tape, compression=compression)
        tape.register_local_source(table)
        g = tape.gradient(loss, [table, dense])
        table.assign_sub(0.1 * tf.convert_to_tensor(g[0]))
        dense.assign_sub(0.1 * g[1])
        return loss
    step(ids)
    return [table.numpy(), dense.numpy()]


local = {"max_diff": max(float(np.max(np.abs(a - b))) for n in (0, 1, 2)
                         for a, b in zip(local_grads(hvd.Compression.none, n), local_grads(lossless(), n))),
         "model_parallel_diff": max(float(np.max(np.abs(a - b))) for a, b in
                                    zip(model_parallel(hvd.Compression.none), model_parallel(lossless())))}

report(rank, passed=passed, adasum=adasum, grads=grads, disagree=disagree, bucketed=bucketed,
       keras_fit=keras_fit, gan=gan_result, local=local)
