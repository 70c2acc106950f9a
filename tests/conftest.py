"""Test-wide settings."""

import os

# The mpt-jax command turns JAX's persistent compilation cache on by default; the tests
# that call it must not write into the user's ~/.cache (tests/test_compile_cache.py
# checks the cache itself in a temporary folder).
os.environ.setdefault("MPT_JAX_COMPILATION_CACHE_DIR", "")
