"""gin files (installed as ``mpt_jax.configs``); ``CONFIG_DIR`` is their folder."""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
