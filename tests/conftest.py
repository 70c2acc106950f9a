"""Test-wide settings."""

import importlib.util
import os
import shutil
import tempfile
import warnings

import jax
import pytest
from jax._src import compilation_cache as jax_cache

# The mpt-jax command turns JAX's persistent compilation cache on by default; the tests
# that call it must not write into the user's ~/.cache (tests/test_compile_cache.py
# checks the cache itself in a temporary folder).
os.environ.setdefault("MPT_JAX_COMPILATION_CACHE_DIR", "")


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's worker hook, which reads the marks
def pytest_collection_modifyitems(config, items):
    """Keeps a module's tests on one pytest-xdist worker when they share a module fixture.

    Under ``pytest -n 2 --dist loadgroup`` (pyproject's ``addopts``) xdist otherwise sends
    consecutive chunks of tests to each worker, and a module whose tests straddle two
    chunks builds its module-scoped fixture (a trained run, the demo: 1-2 CPU-minutes) on
    both workers. Tests without such a fixture stay spread test by test.

    Afterwards, warns when xdist did not take the groups: it tells its scheduler a test's
    group by appending ``@group`` to the node id, which on pytest 9.2 no longer changes
    the id (pytest-dev/pytest-xdist#1386; setup.py pins ``pytest<9.2``), and every worker
    then builds the module fixtures again (about 5 minutes more on 2 cores).
    """
    for item in items:
        module = getattr(item, "module", None)
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        shared = any(
            d.scope in ("module", "class") and d.baseid == item.nodeid.split("::")[0]
            for ds in defs.values()
            for d in ds
        )
        if module is not None and shared:
            item.add_marker(pytest.mark.xdist_group(module.__name__))
    result = yield
    if getattr(config.option, "loadgroup", False):
        lost = [
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        ]
        if lost:
            warnings.warn(
                f"pytest-xdist --dist loadgroup is not grouping ({len(lost)} tests, e.g. "
                f"{lost[0]}): pytest {pytest.__version__} with this pytest-xdist drops the "
                "group from the node id (pytest-dev/pytest-xdist#1386); install the test "
                "extras' pytest<9.2, or each worker builds the module fixtures again.",
                stacklevel=1,
            )
    return result


# One persistent compilation cache for the whole run, shared by the pytest-xdist workers:
# many tests compile the same programs (the tiny backbone's train, eval and decode steps
# through mpt-jax, the benchmarks' steps), and a test building its own jit function
# recompiles identical HLO that the cache hands back (hits are the same executables, so
# no result changes). The controller makes the folder and the workers inherit its path;
# MPT_JAX_TEST_XLA_CACHE=0 turns it off.
_CACHE_ENV = "MPT_JAX_TEST_XLA_CACHE"
_OWN_CACHE = None
if os.environ.get(_CACHE_ENV) is None:
    _OWN_CACHE = os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="mpt_jax_test_xla_")
CACHE_DIR = os.environ[_CACHE_ENV] if os.environ[_CACHE_ENV] not in ("", "0") else None


def _use_session_cache():
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
    # Only programs that take a while to compile: writing and locking an entry for each
    # small program (every eager op compiles one) cost more than it saved (measured: 74
    # small tests took 86 s with every program cached, 63 s with no cache).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    # A size limit makes JAX lock the folder (filelock, a dependency of torch) around
    # reads and writes: two workers never see a half-written entry.
    if importlib.util.find_spec("filelock"):
        jax.config.update("jax_compilation_cache_max_size", 8 << 30)
    jax_cache.reset_cache()


if CACHE_DIR:
    _use_session_cache()


@pytest.fixture(autouse=True)
def _session_compilation_cache():
    """Puts the session cache back after a test that switched caches (bench_compile)."""
    yield
    if CACHE_DIR and jax.config.jax_compilation_cache_dir != CACHE_DIR:
        _use_session_cache()


@pytest.fixture(autouse=True, scope="module")
def _fresh_gin_config_per_module():
    """Starts each test module with no gin bindings.

    ``mpt-jax`` jobs run in-process (``cli.main``) leave their bindings behind, as
    ``t5x.train`` does; a later module calling a configurable directly would otherwise get
    them (``stages.target``'s ``source`` bound to ``@source/stages.load_source()`` read a
    ``runs/source`` that does not exist). Autouse fixtures of a conftest run before a
    module's own, so a module's fixture that binds parameters keeps them.
    """
    import gin

    gin.clear_config()
    yield


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
