"""hvdspar: gradient sparsification (GSpar) and its baselines as Horovod compressors.

    import horovod.tensorflow.keras as hvd
    import hvdspar
    hvd.init()
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1), compression=hvdspar.GSpar(rho=0.01))

The module map and a gradient's trip through ``compress``/``decompress``: docs/design.md.
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
from hvdspar.hierarchy import node_process_sets  # noqa: E402
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
    "node_process_sets",
    "from_spec",
    "register",
    "__version__",
]
