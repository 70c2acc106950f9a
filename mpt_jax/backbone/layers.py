"""Building blocks of the T5 backbone: matmuls, norms, embeddings, attention, MLP.

Conventions:
  * Parameters are float32 and carry logical axis names (T5X's vocabulary:
    `vocab`, `embed`, `joined_kv`, `mlp`, `heads`, `relpos_buckets`).
  * Matmul operands are cast to the config's compute dtype and always
    accumulate and return float32 (`preferred_element_type`), so a bfloat16
    config runs the fast bfloat16 x bfloat16 -> float32 kernels while norms,
    softmax and the residual stream stay float32.
  * Attention runs head-major: `[batch, heads, length, head_dim]`.
  * Masks enter attention as one additive float32 bias
    `[batch|1, heads|1, q_length, kv_length]` (0 keep, -1e10 drop), built once
    per stack and shared by its layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

#: Additive bias that removes an attention connection (T5X's value).
MASK_BIAS = -1e10


def matmul(equation: str, x: Array, kernel: Array, dtype: jnp.dtype) -> Array:
    """`einsum(equation, x, kernel)` with `dtype` operands and a float32 result."""
    return jnp.einsum(
        equation,
        x.astype(dtype),
        kernel.astype(dtype),
        preferred_element_type=jnp.float32,
    )


def project(x: Array, kernel: Array, dtype: jnp.dtype) -> Array:
    """`matmul("...i,io->...o", x, kernel, dtype)` with a hand-written backward pass.

    `x` `[..., in]`, `kernel` `[in, out]` -> `[..., out]` float32. The backward pass
    forms `dx = g kernelᵀ` and `dkernel = xᵀ g` as two plain einsums over the
    `[..., out]` cotangent (float32, as autodiff pairs it with `dtype` operands).
    Attention's query/key/value (as 2-D matmuls, the heads split off after) and the
    MLP's `wi*` use it. Against the code before it (head-major einsums, autodiff's
    backward), side by side on 2 CPU cores (Zen 4, float32, one process, alternating
    rounds, `mini` and `small`): the full fine-tuning step 0.86x the time (its weight
    gradients), the forward pass 0.93-0.95x; the prompt-only train step 0.95-1.00x
    (bfloat16, dropout 0: 1.01x), no change beyond the noise. The same backward on the
    MLP's `wo` and the vocabulary projection gained nothing.
    """
    return _project(x, kernel, jnp.dtype(dtype).name, x.dtype.name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _project(x: Array, kernel: Array, dtype: str, x_dtype: str) -> Array:
    return matmul("...i,io->...o", x, kernel, dtype)


def _project_fwd(x, kernel, dtype, x_dtype):
    # `symbolic_zeros=True`: the primals arrive wrapped, with `perturbed` telling whether
    # they are differentiated. A frozen kernel (prompt tuning) needs no gradient, so
    # `x` is not saved and no `dkernel` is formed (not even as dead code in the jaxpr).
    out = _project(x.value, kernel.value, dtype, x_dtype)
    return out, (kernel.value, x.value if kernel.perturbed else None)


def _project_bwd(dtype, x_dtype, residuals, g):
    kernel, x = residuals
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None
    f32 = jnp.float32
    dx = jnp.einsum("...o,io->...i", g, kernel.astype(dtype), preferred_element_type=f32)
    if x is None:
        return dx.astype(x_dtype), None
    dkernel = jnp.einsum("...i,...o->io", x.astype(dtype), g, preferred_element_type=f32)
    return dx.astype(x_dtype), dkernel.astype(kernel.dtype)


_project.defvjp(_project_fwd, _project_bwd, symbolic_zeros=True)


def _softmax(x: Array) -> Array:
    """Softmax over the last axis (the max subtracted first; fully masked rows stay finite)."""
    unnormalised = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return unnormalised * (1.0 / jnp.sum(unnormalised, axis=-1, keepdims=True))


def attention_core(
    q: Array, k: Array, v: Array, bias: Array | None, dtype: jnp.dtype = jnp.float32
) -> Array:
    """`softmax(q kᵀ + bias) v`, head-major, with a hand-written backward pass.

    Args:
      q: `[batch, heads, q_len, head_dim]` queries.
      k, v: `[batch, heads, kv_len, head_dim]` keys and values.
      bias: additive bias broadcastable to `[batch, heads, q_len, kv_len]`, or None.
      dtype: dtype of the matmul operands (results are float32).

    Returns:
      `[batch, heads, q_len, head_dim]` float32.

    The backward pass saves the attention weights `w` alone and forms the gradients as
    plain head-major einsums (`dv = wᵀg`, `dw = g vᵀ`, `ds = w (dw - Σ dw·w)` — the
    softmax's own backward —, `dq = ds k`, `dk = dsᵀ q`). Left to autodiff, XLA
    materialised broadcasts of the softmax normaliser at `[batch, heads, q, kv]` in
    training's forward pass and ran the transposed products partly outside its fast
    CPU matmul path. Measured side by side on 2 CPU cores, mini's train step: 387 ->
    352 ms (the softmax backward), 350 -> 337 ms (the einsums), 341 -> 328 ms (the
    transposes below); small's train step went from 2.22 to 2.12 forward passes.
    """
    if bias is None:
        bias = jnp.zeros((1, 1, 1, 1), jnp.float32)
    return _attention_core(q, k, v, bias, jnp.dtype(dtype).name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_core(q: Array, k: Array, v: Array, bias: Array, dtype: str) -> Array:
    return _attention_core_fwd(q, k, v, bias, dtype)[0]


def _attention_core_fwd(q, k, v, bias, dtype):
    logits = matmul("bhqd,bhkd->bhqk", q, k, dtype) + bias
    w = _softmax(logits)
    return matmul("bhqk,bhkd->bhqd", w, v, dtype), (q, k, v, bias, w)


def _attention_core_bwd(dtype, residuals, g):
    q, k, v, bias, w = residuals
    # `dv` and `dk` contract over queries; with the [q, kv] matrix transposed first the
    # contraction is over its last axis, the layout XLA's fast CPU matmuls take (the
    # transposed form fell back to a slower generic dot: 3-4% of mini's step).
    dv = matmul("bhkq,bhqd->bhkd", jnp.swapaxes(w, -1, -2), g, dtype)
    dw = matmul("bhqd,bhkd->bhqk", g, v, dtype)
    ds = w * (dw - jnp.sum(dw * w, axis=-1, keepdims=True))
    dq = matmul("bhqk,bhkd->bhqd", ds, k, dtype)
    dk = matmul("bhkq,bhqd->bhkd", jnp.swapaxes(ds, -1, -2), q, dtype)
    return dq, dk, dv, _sum_to_shape(ds, bias.shape).astype(bias.dtype)


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
    """`x` summed over the axes along which an array of `shape` was broadcast to it."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1
    )
    return jnp.sum(x, axis=axes, keepdims=True).reshape(shape) if axes else x


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def attention_mask(query_mask: Array, key_mask: Array) -> Array:
    """Pairwise mask `[batch, 1, q_len, kv_len]` from `[batch, len]` validity masks.

    Like T5X, a padded query row is masked as well as padded keys.
    """
    return jnp.logical_and(query_mask[:, None, :, None] > 0, key_mask[:, None, None, :] > 0)


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
    """Block-diagonal mask `[batch, 1, q_len, kv_len]` of packed segments."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def causal_mask(length: int) -> Array:
    """Lower-triangular mask `[1, 1, length, length]`."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def mask_to_bias(mask: Array) -> Array:
    """Boolean mask -> additive float32 bias (0 where True, -1e10 where False)."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


class RmsNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias; float32 inside.

    `[..., embed] -> [..., embed]` (float32).
    """

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
            (x.shape[-1],),
            jnp.float32,
        )
        x = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(variance + self.epsilon) * scale


class Embed(nn.Module):
    """Token embedding `[vocab, embed]` with an `attend` method for tied logits."""

    num_embeddings: int
    features: int
    one_hot: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, ids: Array) -> Array:
        """`[batch, length]` int -> `[batch, length, embed]` float32."""
        ids = ids.astype(jnp.int32)
        if self.one_hot:
            one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype)
            return matmul("...v,ve->...e", one_hot, self.embedding, self.dtype)
        # float32 even when the frozen table is stored in bfloat16, so the
        # residual stream (and a prompt concatenated to it) stays float32.
        return jnp.take(self.embedding, ids, axis=0).astype(jnp.float32)

    def attend(self, x: Array) -> Array:
        """`[..., embed]` -> logits `[..., vocab]` against the embedding matrix."""
        return matmul("...e,ve->...v", x, self.embedding, self.dtype)


def relative_position_buckets(
    relative_position: Array | np.ndarray,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
):
    """T5's bucketing of `key_position - query_position` (numpy or jnp input).

    Half the buckets (of each direction, when bidirectional) count exact small
    distances; the rest grow logarithmically up to `max_distance`, beyond which
    everything shares the last bucket. A causal (unidirectional) stack folds
    all future positions into bucket 0.
    """
    xp = np if isinstance(relative_position, np.ndarray) else jnp
    distance = -relative_position  # > 0 when the key lies before the query
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets = (distance < 0).astype(np.int32) * num_buckets
        distance = xp.abs(distance)
    else:
        distance = xp.maximum(distance, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Clamp to 1 inside the log: small distances take the other branch anyway.
    log_ratio = xp.log(xp.maximum(distance, 1).astype(np.float32) / max_exact) / np.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int32)
    large = xp.minimum(large, num_buckets - 1)
    return buckets + xp.where(is_small, distance, large).astype(np.int32)


class RelativePositionBias(nn.Module):
    """One stack's relative position bias table `rel_embedding` `[heads, buckets]`."""

    num_heads: int
    num_buckets: int
    max_distance: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_length: int, k_length: int) -> Array:
        """Bias `[1, heads, q_length, k_length]` (float32) for static lengths."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
            jnp.float32,
        )
        relative = np.arange(k_length)[None, :] - np.arange(q_length)[:, None]
        buckets = relative_position_buckets(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        # Gather [heads, q, k] from the table with the static bucket ids.
        return jnp.take(table, jnp.asarray(buckets), axis=1)[None]


class Kernel(nn.Module):
    """A module holding one float32 `kernel` parameter (T5X's `<name>/kernel` nesting).

    The caller contracts it itself, so attention can use head-major einsums.
    """

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: Initializer

    @nn.compact
    def __call__(self) -> Array:
        init = nn.with_logical_partitioning(self.init, self.axes)
        return self.param("kernel", init, self.shape, jnp.float32)


def _kernel(name: str, shape: tuple[int, ...], axes: tuple[str, ...], init: Initializer) -> Array:
    """The `<name>/kernel` parameter of the module under construction."""
    return Kernel(tuple(shape), tuple(axes), init, name=name)()


class MultiHeadAttention(nn.Module):
    """T5 multi-head attention (no biases, no 1/sqrt(d) at run time).

    Like T5X, the `1/sqrt(head_dim)` factor of scaled dot-product attention is
    folded into the initialiser of `query` instead of being applied in the
    forward pass (Hugging Face T5 also applies none), so checkpoints from both
    load unchanged.

    Kernels are stored 2-D as T5X stores them: `query/key/value` `[embed,
    heads * head_dim]` (`embed`, `joined_kv`), `out` `[heads * head_dim,
    embed]` (`joined_kv`, `embed`).

    With `decode=True` self-attention keeps a key/value cache
    `cached_key/cached_value` `[batch, heads, max_length, head_dim]` and a
    scalar `cache_index`; the first call (with full-length inputs) creates it,
    later calls feed one position `[batch, 1, embed]` at a time.
    Cross-attention (`cross_attention=True`) with `decode=True` caches the
    projected encoder keys/values `cached_cross_key/cached_cross_value`
    `[batch, heads, enc_length, head_dim]`, computed at the first step (flag
    `cross_cache_filled`) instead of at every step.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        bias: Array | None,
        *,
        decode: bool = False,
        deterministic: bool = True,
    ) -> Array:
        """Attend from `inputs_q` `[batch, q_len, embed]` to `inputs_kv` `[batch, kv_len, embed]`.

        Args:
          inputs_q: queries' inputs.
          inputs_kv: keys' and values' inputs.
          bias: additive bias broadcastable to `[batch, heads, q_len, kv_len]`
            (masks plus relative positions), or None. In a cached decoding step
            it spans the full `[.., max_length, max_length]` and the row of the
            current position is taken here.
          decode: use/create the autoregressive cache (self-attention only).
          deterministic: disable dropout.

        Returns:
          `[batch, q_len, embed]` float32.
        """
        embed = inputs_q.shape[-1]
        joined = self.num_heads * self.head_dim
        fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        query_init = lambda *a: fan_in(*a) / np.sqrt(self.head_dim).astype(np.float32)
        in_axes = ("embed", "joined_kv")
        shape_in = (inputs_kv.shape[-1], joined)
        wq = _kernel("query", (embed, joined), in_axes, query_init)
        wk = _kernel("key", shape_in, in_axes, fan_in)
        wv = _kernel("value", shape_in, in_axes, fan_in)
        wo = _kernel("out", (joined, embed), ("joined_kv", "embed"), fan_in)

        def project_heads(x: Array, kernel: Array) -> Array:
            # [batch, length, embed] x [embed, heads * head_dim] -> [batch, length, joined]
            # -> [batch, heads, length, head_dim]: one 2-D matmul, then the heads split off
            # (faster than the head-major einsum `bse,ehd->bhsd`; see `project`).
            y = project(x, kernel, self.dtype)
            y = y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))
            return jnp.swapaxes(y, 1, 2)

        q = project_heads(inputs_q, wq)

        def project_kv():
            return project_heads(inputs_kv, wk), project_heads(inputs_kv, wv)

        if decode and self.cross_attention:
            k, v = self._cached_cross_kv(project_kv)
        else:
            k, v = project_kv()
            if decode:
                q, k, v, bias = self._use_cache(q, k, v, bias)

        if not deterministic and self.dropout_rate > 0.0:
            # T5 drops whole key columns, the same for every query: `[batch, heads, 1,
            # kv_len]`. Dropping column k of the weights equals dropping row k of the
            # values, so the mask scales `v` `[batch, heads, kv_len, head_dim]` instead:
            # the same result, without a masked copy of the `[.., q_len, kv_len]` weights
            # (which the backward pass would also have to read).
            keep = jax.random.bernoulli(
                self.make_rng("dropout"),
                1.0 - self.dropout_rate,
                jnp.broadcast_shapes(q.shape[:2], k.shape[:2]) + (1, k.shape[2]),
            )
            keep = jnp.swapaxes(keep, -1, -2)  # [batch, heads, kv_len, 1]
            v = jnp.where(keep, v / (1.0 - self.dropout_rate), 0.0)
        out = attention_core(q, k, v, bias, self.dtype)
        # [batch, heads, q_len, head_dim] x [heads, head_dim, embed] -> [batch, q_len, embed]
        return matmul("bhqd,hde->bqe", out, wo.reshape(self.num_heads, self.head_dim, embed),
                      self.dtype)  # fmt: skip

    def _cached_cross_kv(self, project_kv: Callable[[], tuple[Array, Array]]):
        """Encoder keys/values: projected once per decode, then read from the cache."""
        if not self.has_variable("cache", "cached_cross_key"):
            k, v = project_kv()
            self.variable("cache", "cached_cross_key", lambda: k)
            self.variable("cache", "cached_cross_value", lambda: v)
            self.variable("cache", "cross_cache_filled", lambda: jnp.array(False))
            return k, v
        cached_key = self.variable("cache", "cached_cross_key")
        cached_value = self.variable("cache", "cached_cross_value")
        filled = self.variable("cache", "cross_cache_filled")
        k, v = jax.lax.cond(
            filled.value, lambda: (cached_key.value, cached_value.value), project_kv
        )
        cached_key.value, cached_value.value, filled.value = k, v, jnp.array(True)
        return k, v

    def _use_cache(self, q: Array, k: Array, v: Array, bias: Array | None):
        """Create the cache (first call) or write one step into it and read it all."""
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            return q, k, v, bias
        batch, heads, max_length, head_dim = cached_key.value.shape
        if q.shape != (batch, heads, 1, head_dim):
            raise ValueError(
                "A cached decoding step takes one position per call: expected queries "
                f"{(batch, heads, 1, head_dim)} ([batch, heads, 1, head_dim]), got {q.shape}."
            )
        index = cache_index.value
        k = jax.lax.dynamic_update_slice(cached_key.value, k, (0, 0, index, 0))
        v = jax.lax.dynamic_update_slice(cached_value.value, v, (0, 0, index, 0))
        cached_key.value, cached_value.value = k, v
        cache_index.value = index + 1
        # The current query sees the cached positions 0..index only.
        step_bias = mask_to_bias(jnp.arange(max_length) <= index)[None, None, None, :]
        if bias is not None:
            if bias.shape[-2] != max_length:
                raise ValueError(
                    "In a cached decoding step the bias must span all max_length="
                    f"{max_length} query rows, got shape {bias.shape}."
                )
            step_bias = step_bias + jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
        return q, k, v, step_bias


class Dense(nn.Module):
    """Bias-free linear map of the last axis, `kernel` `[in, features]`."""

    features: int
    kernel_axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """`[..., in] -> [..., features]` float32."""
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        return matmul("...i,io->...o", x, kernel, self.dtype)


_ACTIVATION_FNS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    # T5 1.1's "gelu" is the tanh approximation (Hugging Face "gelu_new").
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
    """T5 feed-forward block: `wi` (or gated `wi_0 * wi_1 ...`), dropout, `wo`.

    `[batch, length, embed] -> [batch, length, embed]`; kernels `wi*`
    `[embed, mlp]` (`embed`, `mlp`) and `wo` `[mlp, embed]` (`mlp`, `embed`).
    """

    intermediate_dim: int
    activations: tuple[str, ...]
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        embed = x.shape[-1]
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        hidden = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            kernel = _kernel(name, (embed, self.intermediate_dim), ("embed", "mlp"),
                                  init)  # fmt: skip
            h = _ACTIVATION_FNS[act](project(x, kernel, self.dtype))
            hidden = h if hidden is None else hidden * h
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic
        )
        wo = _kernel("wo", (self.intermediate_dim, embed), ("mlp", "embed"), init)
        return matmul("...m,me->...e", hidden, wo, self.dtype)
