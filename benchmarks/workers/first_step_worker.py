"""Where a first step's time goes: tracing apart from the first run, under horovodrun.

    horovodrun -np 2 -H localhost:2 --gloo python -m benchmarks.workers.first_step_worker \
        --spec "gspar:rho=0.01,bucket_mb=0" --model MobileNetV2 --image-size 32

A ``tf.function`` step of a Keras application model (``weights=None``) with
``hvd.DistributedGradientTape(tape, compression=C)`` and SGD, C Horovod's none
(``--spec none``) or ``hvdspar.from_spec(spec)``. Rank 0 prints the seconds of
``get_concrete_function`` (tracing only: TensorFlow traces the step twice, since
its first call creates the optimizer's variables), of the first call (Grappler,
XLA compilations, the run) and of the second call. Run none beside the spec, one
after the other on the same machine: the differences are the compressor's.
"""

import argparse
import time

import tensorflow as tf

import horovod.tensorflow as hvd
import hvdspar


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="none", help="none, or an hvdspar spec (hvdspar.from_spec)")
    p.add_argument("--model", default="MobileNetV2", help="a tf.keras.applications model")
    p.add_argument("--image-size", type=int, default=32, help="pixels a side (the model is built for it)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--groups", type=int, default=None, help="Horovod's groups= (default: none given)")
    args = p.parse_args(argv)
    hvd.init()
    comp = hvd.Compression.none if args.spec == "none" else hvdspar.from_spec(args.spec, seed=1)
    size = args.image_size
    model = getattr(tf.keras.applications, args.model)(weights=None, input_shape=(size, size, 3))
    opt = tf.keras.optimizers.SGD(0.01)
    data = tf.random.uniform([args.batch, size, size, 3])
    target = tf.zeros([args.batch], tf.int64)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            probs = model(data, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(target, probs))
        tape = hvd.DistributedGradientTape(tape, compression=comp, groups=args.groups)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    t0 = time.perf_counter()
    step.get_concrete_function()
    t1 = time.perf_counter()
    step()
    t2 = time.perf_counter()
    step()
    t3 = time.perf_counter()
    if hvd.rank() == 0:
        print(f"[first_step] {args.model} {args.image_size}px {args.spec} groups={args.groups}: trace {t1 - t0:.1f} s, "
              f"first run {t2 - t1:.1f} s, second run {t3 - t2:.2f} s", flush=True)


if __name__ == "__main__":
    main()
