"""Compressor state (error-feedback memory, random-stream counters) as training state.

A compressor is a ``tf.Module``; its per-tensor ``SlotState`` modules live in
the list ``compressor.slots``. Two ways to checkpoint them:

    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, compressor=comp)

or attach the compressor to the Keras model, so that everything that saves
the model's object graph saves the memory too::

    hvdspar.track(model, comp)
    model.save_weights("ckpt/weights")            # TF checkpoint format
    tf.train.Checkpoint(model=model).save(...)

The compressor's variables stay out of ``model.weights`` / ``model.variables``
(so Horovod's broadcast of the initial weights does not touch them); only the
object graph holds them.

Restoring into a fresh compressor before the first training step is deferred
by TensorFlow: the values wait in the checkpoint and are assigned when the
slots are created lazily on the first ``compress()`` call. To have the state
in place right away (e.g. to inspect it, or to be independent of deferred
restoration), call ``hvdspar.build(comp, model.trainable_variables)`` before
restoring: it creates the slots eagerly, in the order Horovod will compress
the gradients.

Memory is per rank: rank r's memory is rank r's error. A checkpoint written
by rank 0 only restores rank 0's memory on every rank, which is harmless
(memory is a bounded correction) but not exact; for an exact resume let every
rank save its own compressor state (e.g. ``tf.train.Checkpoint(compressor=comp)``
under a per-rank path).
"""

import tensorflow as tf

from hvdspar.buckets import flat_shape


ATTRIBUTE = "hvdspar_compressor"


def track(model, compressor, name=ATTRIBUTE):
    """Attach ``compressor`` to a Keras ``model`` as a tracked attribute; returns the compressor.

    ``model.save_weights`` (TF format) and ``tf.train.Checkpoint(model=model)``
    then include the compressor's memory and counters under ``name``.
    """
    if not isinstance(compressor, tf.Module):
        raise TypeError(
            f"hvdspar.track: {compressor!r} is not an hvdspar compressor (Horovod's none/fp16 have no state to track)"
        )
    setattr(model, name, compressor)
    return compressor


def build(compressor, variables):
    """Create the compressor's state eagerly for the gradients of ``variables``, as training will.

    ``variables`` are those whose gradients the compressor will see, in the order the optimizer
    hands them to Horovod (for Keras, ``model.trainable_variables``), without ``groups=``: one
    state per message (``Buckets.cut``: a bucket of them, or each alone with
    ``bucket_mb=0``), keyed by its variables as ``compress`` keys it. State that already exists
    must match. Returns the compressor.
    """
    variables = list(variables)
    shapes = [tf.TensorShape(v.shape) for v in variables]
    dtypes = [tf.as_dtype(v.dtype) for v in variables]
    for part in compressor.buckets.cut(shapes, dtypes):
        members = [variables[i] for i in part]
        shape, dtype = flat_shape(members), dtypes[part[0]]
        slot = compressor.state_of(members, shape, dtype)
        if slot.shape != shape or slot.dtype != dtype:
            raise ValueError(
                f"hvdspar.build: the state of {[v.name for v in members]} holds {slot.dtype.name}"
                f"{slot.shape.as_list()}, but these variables make {dtype.name}{shape.as_list()}"
            )
    return compressor
