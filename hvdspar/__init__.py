"""hvdspar: gradient sparsification (GSpar) and its baselines as Horovod compressors.

    import horovod.tensorflow.keras as hvd
    import hvdspar
    hvd.init()
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1), compression=hvdspar.GSpar(rho=0.01))

Modules, one idea each:
  probabilities  p_i = min(lambda |g_i|, 1): Algorithm 2, exact water-filling, Algorithm 3
  scan           the first pass over x: finite?, ||x||^2, ||x||_1 (one read, XLA chunks when large)
  sparsify       Q(g)_i = Z_i g_i / p_i as a hybrid sparse message
  rng            the counter-based uniforms u_i = hash(i, seed) of the sampling
  native         the first pass, the sampling pass and the decode's sum as compiled CPU kernels
  wire           the one message header of every method, and the fold over a gathered buffer
  coding         GSpar's message body (Elias-Fano / 2-bit symbols), exact sizes, entropy bound
  codec          a method's message: encode / decode_sum / expected_nbytes, pure TensorFlow
  error_feedback e = m + g, send gamma Q(e) (one contraction rule), m <- e - C(e)
  exchange       the collectives of compress() (Horovod's, or in-process), the cost model (bytes)
  fallback       the dense fallback: per message, compressed or dense (by bytes, or by time)
  link           the time model of fallback="auto": measured network and compute
  state          per-message state in tf.Variables: error-feedback memory, random stream, byte counters
  compressor     the Horovod Compressor around a codec: a gradient's whole trip
  gspar          GSpar and UniSp (topk, quantize, atomo, powersgd, sign: the other methods)
  spec           from_spec("gspar:rho=0.01")
"""

__version__ = "0.1.0"

from hvdspar.probabilities import probabilities, water_level  # noqa: E402
from hvdspar.compressor import Compressor, in_step_compressors  # noqa: E402
from hvdspar.gspar import GSpar, UniSp  # noqa: E402
from hvdspar.topk import TopK, RandomK  # noqa: E402
from hvdspar.atomo import Atomo  # noqa: E402
from hvdspar.quantize import QSGD, TernGrad  # noqa: E402
from hvdspar.powersgd import PowerSGD  # noqa: E402
from hvdspar.sign import EFSignSGD  # noqa: E402
from hvdspar.checkpoint import track, build  # noqa: E402
from hvdspar.spec import from_spec, register  # noqa: E402

__all__ = [
    "probabilities",
    "water_level",
    "Compressor",
    "in_step_compressors",
    "GSpar",
    "UniSp",
    "TopK",
    "RandomK",
    "Atomo",
    "QSGD",
    "TernGrad",
    "PowerSGD",
    "EFSignSGD",
    "track",
    "build",
    "from_spec",
    "register",
    "__version__",
]
