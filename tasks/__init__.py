"""seqio tasks and mixtures for the MPT benchmarks (installed as ``mpt_jax.tasks``)."""
