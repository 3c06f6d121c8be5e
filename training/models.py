"""Models of the paper's experiments, as Keras 2 (tf.keras) models.

Convex models (labels b in {-1, +1}, weights w, no bias as in the paper's f(w)):

  logreg  f(w) = 1/N sum_n log(1 + exp(-b_n a_n^T w)) + lambda2 ||w||^2
          (natural log; the paper writes log2, which only rescales the data
          term by 1/ln 2, i.e. is the same problem with lambda2 * ln 2)
  svm     f(w) = 1/N sum_n max(0, 1 - b_n a_n^T w) + lambda2 ||w||^2   (sec. 4.2)

Both are one Dense(1) unit whose kernel carries ``L2(lambda2)``; Keras adds
lambda2 * sum(w^2) to the compiled loss, so the training loss of a batch is
exactly f restricted to that batch. Weights start at zero.

cnn: the CIFAR-10 network of sec. 4.1: three 3x3 convolutions (``channels``
each, default 64), each followed by batch normalisation and ReLU; 2x2 max
pooling after the first two; a 256-unit dense layer; 10 logits.
"""

import tensorflow as tf

keras = tf.keras

CONVEX = ("logreg", "svm")
MODELS = ("logreg", "svm", "cnn")


def logistic_loss(y_true, margin):
    """mean log(1 + exp(-b z)) with b in {-1, +1}, z the model's margin (natural log)."""
    y = tf.reshape(tf.cast(y_true, margin.dtype), [-1])
    return tf.reduce_mean(tf.math.softplus(-y * tf.reshape(margin, [-1])))


def hinge_loss(y_true, margin):
    """mean max(0, 1 - b z) with b in {-1, +1}."""
    y = tf.reshape(tf.cast(y_true, margin.dtype), [-1])
    return tf.reduce_mean(tf.nn.relu(1.0 - y * tf.reshape(margin, [-1])))


def sign_accuracy(y_true, margin):
    """Fraction with sign(z) == b (z >= 0 counts as +1)."""
    y = tf.reshape(tf.cast(y_true, margin.dtype), [-1])
    pred = tf.where(tf.reshape(margin, [-1]) >= 0, 1.0, -1.0)
    return tf.reduce_mean(tf.cast(tf.equal(pred, y), tf.float32))


sign_accuracy.__name__ = "accuracy"


def linear_model(d, lambda2, name="linear"):
    """a -> a^T w (no bias), with lambda2 * ||w||^2 as the kernel's regulariser."""
    inputs = keras.Input(shape=(d,), name="a")
    dense = keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer="zeros",
        kernel_regularizer=keras.regularizers.L2(lambda2) if lambda2 else None,
        name="w",
    )
    margin = keras.layers.Reshape((), name="margin")(dense(inputs))
    return keras.Model(inputs, margin, name=name)


def cnn(input_shape=(32, 32, 3), channels=64, num_classes=10, mean=None, std=None):
    """The paper's CNN; uint8 images in, logits out (scaling and per-channel
    normalisation happen inside the model, so the data pipeline stays uint8)."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)  # casts uint8 -> float32
    if mean is not None and std is not None:
        x = keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(x)
    for i in range(3):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(256, activation="relu", name="fc")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="cnn")


def build(name, input_shape, lambda2=0.0, channels=64, num_classes=10, mean=None, std=None):
    """(model, loss, metrics) for ``name`` in MODELS."""
    if name == "logreg":
        return linear_model(input_shape[0], lambda2, "logreg"), logistic_loss, [sign_accuracy]
    if name == "svm":
        return linear_model(input_shape[0], lambda2, "svm"), hinge_loss, [sign_accuracy]
    if name == "cnn":
        model = cnn(input_shape, channels, num_classes, mean, std)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return model, loss, [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def linear_weights(model):
    """The weight vector w of a linear model (float64 NumPy, shape [d])."""
    import numpy as np

    return np.asarray(model.get_layer("w").kernel.numpy(), dtype=np.float64).reshape(-1)
