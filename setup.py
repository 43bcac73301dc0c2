"""alignax: a JAX research framework for aligning language models."""

from setuptools import find_packages, setup

# Ranges, not pins: the CPU machines resolve jax 0.10.x on Python 3.11, the GPU image has
# jax 0.11.2 / flax 0.12.10 / optax 0.2.8 / orbax-checkpoint 0.12.4 on Python 3.12.
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.13",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11.0,<0.13",
    "chex>=0.1.89",
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "tensorboardX>=2.6",
    "tqdm>=4.64",
]

EXTRAS = {
    # Local Hugging Face checkpoints and tokenizers (no hub access at run time).
    "hf": ["safetensors>=0.4", "tokenizers>=0.20"],
    # Training-curve plots (`alignax demo`).
    "plot": ["matplotlib>=3.7"],
    # Parquet preference / SFT files.
    "parquet": ["pyarrow>=14"],
    # Preference data stored as TFDS array_record, read with grain (no TensorFlow).
    # (tfds resolves dataset code paths through importlib_resources without declaring it.)
    "tfds": ["tensorflow-datasets>=4.9.8", "array-record>=0.7", "grain>=0.2.10",
             "importlib-resources>=6"],
    # Test-only oracles (torch CPU is installed first by the Makefile) and tools.
    "test": [
        "pytest>=8.0",
        "pytest-xdist>=3.5",
        "ruff>=0.6",
        "torch>=2.4,<=2.14.1",
        "transformers>=4.56",
        "trl==1.16.0",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "pyarrow>=14",
        "matplotlib>=3.7",
    ],
}

setup(
    name="alignax",
    version="0.1.0",
    description="Pure, jitted, sharded alignment algorithms (RLHF, DPO family, GRPO, GRAO, "
    "MAH-DPO, ADPA) for language models in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["alignax", "alignax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["alignax=alignax.cli:main"]},
    license="Apache-2.0",
)
