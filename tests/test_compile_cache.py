"""The persistent compilation cache of the mpt-jax command: off, on, and really used."""

import os

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache as jax_cache

from mpt_jax import cli, compile_cache


@pytest.fixture
def restore_jax_cache_config():
    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    jax_cache.reset_cache()


def test_empty_or_none_leaves_the_cache_off(restore_jax_cache_config):
    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable("") is None
    assert compile_cache.enable(None) is None
    assert jax.config.jax_compilation_cache_dir == before


def test_default_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_VAR, "/some/where")
    assert compile_cache.default_dir() == "/some/where"
    monkeypatch.delenv(compile_cache.ENV_VAR)
    assert compile_cache.default_dir() == compile_cache.DEFAULT_DIR


def test_enabled_cache_stores_a_compiled_program(tmp_path, restore_jax_cache_config):
    path = compile_cache.enable(str(tmp_path / "xla"), min_compile_time_s=0.0)
    assert path == str(tmp_path / "xla") and os.path.isdir(path)
    jax_cache.reset_cache()
    fn = jax.jit(lambda x: jnp.tanh(x) @ x.T + 17.0)
    fn(jnp.ones((3, 5))).block_until_ready()
    assert os.listdir(path), "the compiled program was not written to the cache"


def test_negative_min_compile_time_is_refused():
    with pytest.raises(ValueError, match="-1"):
        compile_cache.enable("/tmp/x", min_compile_time_s=-1)


def test_command_line_flag_is_parsed():
    args, _ = cli.parse_args(["demo", "--compilation_cache_dir=/c"])
    assert args.compilation_cache_dir == "/c"
    args, _ = cli.parse_args(["demo"])
    assert args.compilation_cache_dir is None
