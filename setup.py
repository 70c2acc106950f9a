"""Installs mpt_jax, its seqio tasks (``tasks/`` as ``mpt_jax.tasks``) and its gin files
(``configs/`` as ``mpt_jax.configs``), so an installed package has everything a checkout has."""

import pathlib

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "mpt_jax" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("mpt_jax/version.py has no __version__")


def _subpackages(directory: str, prefix: str) -> list[str]:
    """Packages under a top-level folder that installs as ``prefix``."""
    found = [prefix]
    for sub in find_packages(where=directory):
        found.append(f"{prefix}.{sub}")
    return found


packages = [p for p in find_packages(include=["mpt_jax", "mpt_jax.*"])]
packages += _subpackages("tasks", "mpt_jax.tasks")
packages += _subpackages("configs", "mpt_jax.configs")

setup(
    name="mpt_jax",
    version=_version(),
    description="Multitask Prompt Tuning (MPT) and its relatives for T5 in JAX/Flax, T5X-ready.",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=packages,
    package_dir={"mpt_jax.tasks": "tasks", "mpt_jax.configs": "configs"},
    package_data={
        "mpt_jax.configs": ["*.gin", "**/*.gin"],
        "mpt_jax.tasks": ["registered_names.txt"],
        "mpt_jax": ["assets/*", "assets/**/*"],
    },
    include_package_data=True,
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "seqio>=0.0.19",
        "gin-config>=0.5",
        "numpy>=1.26",
        "safetensors>=0.4",
        "scikit-learn>=1.4",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": [
            # < 9.2: pytest 9.2's structured node ids make pytest-xdist 3.8's --dist
            # loadgroup silently stop grouping (pytest-dev/pytest-xdist#1386), so each
            # worker rebuilds the module fixtures (the demo, trained runs): minutes more.
            "pytest>=8,<9.2",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "psutil>=5.9",  # benchmarks (peak memory), run by the smoke test
            "ruff==0.17.6",  # pinned: formatting (markdown included) changes between releases
            # Reference implementations for parity tests (CPU build, from the local wheel).
            "torch==2.13.0",
            "transformers>=4.46",
            "peft>=0.13",
        ],
    },
    entry_points={"console_scripts": ["mpt-jax=mpt_jax.cli:console_main"]},
)
