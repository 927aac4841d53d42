"""DeMo, Decoupled Momentum Optimization (Peng, Quesnelle & Kingma 2024, arXiv 2411.19870).

Per worker i and leaf, each step (paper Algorithm 1; bloc97/DeMo ``demo.py``; research/
compressors.md §6):

    m  <- beta m + g                       decoupled local momentum (never all-reduced)
    q  =  TopK_k(DCT(m))                   per chunk: the k DCT-II coefficients of largest |.|
    m  <- m - IDCT(q)                      the sent ("fast") components leave the momentum
    Q  =  AllGather(q);  u = IDCT(avg Q);  update direction sign(u)  (``sign=True``)

Chunks (``TransformDCT``): each axis of size n is cut into pieces of ``s = the largest divisor of n
that is <= chunk`` (``_get_smaller_split``; a prime n > chunk gives s = 1). 1-D leaves become
chunks of s, 2-D leaves tiles of s1 x s2 transformed in 2-D and flattened row-major (coefficient
``b * s2 + d``); k is clamped to [1, coefficients per chunk] (``_clamp_topk``). The DCT is the
orthonormal DCT-II, ``C[k, j] = sqrt((2 - [k = 0]) / s) cos(pi (2 j + 1) k / (2 s))``, and its
inverse is ``C^T``.

Averaging (``CompressDCT.batch_decompress``: ``scatter_reduce(reduce="mean", include_self=False)``
over the concatenated indices of every worker): a coefficient is averaged over the workers that
sent it, not over N; none sent it -> 0 (``reduce="senders"``, the reference). ``reduce="workers"``
divides the sum by N instead, which makes the aggregate the mean of the decodes. With weights,
``sum_i w_i q_i / sum_(i sent it) w_i`` (or ``/ sum_i w_i``). The outer optimizer is plain SGD
with the learning rate (``replaces_optimizer``): ``x <- x - lr sign(u)``.

Wire format (fixed size, one bit stream, see ``payload.py``): per leaf in ``jax.tree.leaves``
order, the k values of every chunk (chunk-major) in the leaf dtype, then their indices within the
chunk at ``index_width`` bits: "int64" as the reference sends them (``torch.topk`` indices, counted
by its ``data_transmit`` as ``idx.nbytes + val.nbytes``), "int32", or "chunk" = ceil(log2 of the
chunk's coefficients). ``down_bits``: 2 bits per entry for the ternary sign(u) (-1, 0, +1) when
``sign``, else the dense aggregate.

Deviations: the momentum accumulates the gradient (``m <- beta m + g``) and the learning rate is
applied after the sign; the reference accumulates ``lr * g`` (update form). With a constant lr and
``sign=True`` the two are the same (sign is scale-invariant); under an lr schedule they differ.
Decoupled weight decay (the reference's ``x <- x (1 - lr wd)``) belongs to the outer optimizer.
Leaves of ndim > 2 (the reference handles only 1-D and 2-D) are viewed as 2-D (prod(shape[:-1]),
shape[-1]); scalars as 1-D. The transform runs in float32 (the reference runs it in the parameter
dtype); values travel in the leaf dtype.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props

INDEX_WIDTHS = ("int64", "int32", "chunk")
REDUCE = ("senders", "workers")
HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "indices"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class DemoLeaf:
    """One leaf's message: ``values`` [chunks, k] (leaf dtype) at ``indices`` [chunks, k] int32 within
    each chunk's flattened coefficients. ``shape`` (the leaf's) is static metadata, never sent."""
    values: jax.Array
    indices: jax.Array
    shape: tuple


def _is_leaf(x) -> bool:
    return isinstance(x, DemoLeaf)


def smaller_split(n: int, chunk: int) -> int:
    """The largest divisor of ``n`` that is <= ``chunk`` (the reference's ``_get_smaller_split``)."""
    return max(s for s in range(1, min(n, chunk) + 1) if n % s == 0)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (float64): ``coefficients = C @ x``, ``x = C.T @ coefficients``."""
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * j + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


class Geometry:
    """Static chunking of one leaf: its 1-D or 2-D view, the chunk sides, the number of chunks."""

    def __init__(self, shape: tuple, chunk: int, topk: int):
        self.shape = tuple(shape)
        size = math.prod(self.shape)
        self.view = (size,) if len(self.shape) <= 1 else (math.prod(self.shape[:-1]), self.shape[-1])
        self.sides = tuple(smaller_split(n, chunk) for n in self.view)
        self.per_chunk = math.prod(self.sides)             # coefficients in a chunk
        self.chunks = size // self.per_chunk
        self.k = min(max(int(topk), 1), self.per_chunk)

    def forward(self, x):
        """The leaf -> its coefficients [chunks, per_chunk] (float32)."""
        x = x.astype(jnp.float32).reshape(self.view)
        if len(self.view) == 1:
            (s,) = self.sides
            c = jnp.asarray(dct_matrix(s), jnp.float32)
            return jnp.matmul(x.reshape(-1, s), c.T, precision=HIGHEST)
        (r, cols), (s1, s2) = self.view, self.sides
        c1, c2 = jnp.asarray(dct_matrix(s1), jnp.float32), jnp.asarray(dct_matrix(s2), jnp.float32)
        tiles = x.reshape(r // s1, s1, cols // s2, s2)
        coef = jnp.einsum("ijkl,bj,dl->ikbd", tiles, c1, c2, precision=HIGHEST)
        return coef.reshape(self.chunks, self.per_chunk)

    def inverse(self, coef):
        """Coefficients [chunks, per_chunk] -> the leaf's shape (float32)."""
        if len(self.view) == 1:
            (s,) = self.sides
            c = jnp.asarray(dct_matrix(s), jnp.float32)
            return jnp.matmul(coef, c, precision=HIGHEST).reshape(self.shape)
        (r, cols), (s1, s2) = self.view, self.sides
        c1, c2 = jnp.asarray(dct_matrix(s1), jnp.float32), jnp.asarray(dct_matrix(s2), jnp.float32)
        coef = coef.reshape(r // s1, cols // s2, s1, s2)
        x = jnp.einsum("ikbd,bj,dl->ijkl", coef, c1, c2, precision=HIGHEST)
        return x.reshape(self.shape)

    def scatter(self, values, indices):
        """Dense coefficients [chunks, per_chunk] holding ``values`` [chunks, k] at ``indices``."""
        rows = jnp.arange(self.chunks)[:, None]
        return jnp.zeros((self.chunks, self.per_chunk), jnp.float32).at[rows, indices].set(values.astype(jnp.float32))


def demo(decay: float = 0.999, chunk: int = 64, topk: int = 32, sign: bool = True, reduce: str = "senders",
         index_width: str = "int64") -> Compressor:
    """DeMo: chunked-DCT top-k of a decoupled momentum, the sent part removed from it, sign of the average.

    Args:
      decay: beta, the momentum decay in [0, 1) (``compression_decay`` 0.999).
      chunk: target chunk side (``compression_chunk`` 64; 64 x 64 tiles for matrices).
      topk: coefficients kept per chunk (``compression_topk`` 32).
      sign: return sign(u) (the paper's signSGD step); False returns u itself.
      reduce: "senders" (the reference: each coefficient averaged over the workers that sent it) or
        "workers" (summed and divided by N: the mean of the decodes).
      index_width: "int64" (what the reference sends), "int32", or "chunk" (ceil(log2) of a chunk's
        coefficients).

    Props: kind "biased", not summable (all-gather), replaces the optimizer.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"demo: decay must be in [0, 1), got {decay}")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"demo: chunk must be a positive integer, got {chunk}")
    if int(topk) != topk or topk < 1:
        raise ValueError(f"demo: topk must be a positive integer, got {topk}")
    if reduce not in REDUCE:
        raise ValueError(f"demo: reduce must be one of {', '.join(REDUCE)}, got {reduce!r}")
    if index_width not in INDEX_WIDTHS:
        raise ValueError(f"demo: index_width must be one of {', '.join(INDEX_WIDTHS)}, got {index_width!r}")
    chunk, topk = int(chunk), int(topk)

    @functools.lru_cache(maxsize=None)
    def geometry(shape) -> Geometry:
        return Geometry(shape, chunk, topk)

    def index_bits(g: Geometry) -> int:
        return {"int64": 64, "int32": 32}.get(index_width) or max(1, (g.per_chunk - 1).bit_length())

    def init(params):
        return jax.tree.map(jnp.zeros_like, params), ()

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        payload, new_state = [], []
        g_l, treedef = jax.tree.flatten(grads)
        for g, m in zip(g_l, jax.tree.leaves(worker_state)):
            geo = geometry(tuple(g.shape))
            m = decay * m + g
            coef = geo.forward(m)
            _, idx = jax.lax.top_k(jnp.abs(coef), geo.k)
            vals = jnp.take_along_axis(coef, idx, axis=1).astype(g.dtype)
            sent = geo.inverse(geo.scatter(vals, idx))
            new_state.append((m - sent).astype(g.dtype))
            payload.append(DemoLeaf(vals, idx.astype(jnp.int32), tuple(g.shape)))
        return jax.tree.unflatten(treedef, payload), jax.tree.unflatten(treedef, new_state)

    def decode(payload, server_state):
        del server_state

        def leaf(p):
            geo = geometry(p.shape)
            return geo.inverse(geo.scatter(p.values, p.indices)).astype(p.values.dtype)
        return jax.tree.map(leaf, payload, is_leaf=_is_leaf)

    def aggregate(payloads, server_state, weights=None):
        def leaf(p):
            geo = geometry(p.shape)
            n = p.values.shape[0]
            w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
            rows = jnp.broadcast_to(jnp.arange(geo.chunks)[None, :, None], p.indices.shape)
            wv = w[:, None, None] * p.values.astype(jnp.float32)
            num = jnp.zeros((geo.chunks, geo.per_chunk), jnp.float32).at[rows, p.indices].add(wv)
            if reduce == "senders":
                den = jnp.zeros((geo.chunks, geo.per_chunk), jnp.float32).at[rows, p.indices].add(
                    jnp.broadcast_to(w[:, None, None], p.indices.shape))
                coef = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
            else:
                coef = num / jnp.sum(w)
            u = geo.inverse(coef)
            return (jnp.sign(u) if sign else u).astype(p.values.dtype)
        return jax.tree.map(leaf, payloads, is_leaf=_is_leaf), server_state

    def specs(params):
        out = []
        for x in jax.tree.leaves(params):
            geo = geometry(tuple(x.shape))
            n = geo.chunks * geo.k
            out += [(n, jnp.dtype(x.dtype).itemsize * 8), (n, index_bits(geo))]
        return out

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def down_bits(params, n) -> int:
        del n
        return wire.stream_bits([(math.prod(x.shape), 2) for x in jax.tree.leaves(params)])

    def pack(payload) -> bytes:
        fields = []
        for p in jax.tree.leaves(payload, is_leaf=_is_leaf):
            fields += [wire.float_bits(np.asarray(p.values)),
                       (np.asarray(p.indices).astype(np.uint64), index_bits(geometry(p.shape)))]
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, specs(params))
        out = []
        for i, x in enumerate(leaves):
            geo = geometry(tuple(x.shape))
            vals = wire.bits_float(fields[2 * i], x.dtype).reshape(geo.chunks, geo.k)
            idx = fields[2 * i + 1].astype(np.int32).reshape(geo.chunks, geo.k)
            out.append(DemoLeaf(vals, idx, tuple(x.shape)))
        return jax.tree.unflatten(treedef, out)

    if reduce == "workers":
        aggregation = "sign_of_mean" if sign else "mean"
    else:
        aggregation = "sign_of_mean_over_senders" if sign else "mean_over_senders"
    props = Props(kind="biased", summable=False, linear_exact=False, aggregation=aggregation,
                  replaces_optimizer=True)
    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      props, down_bits=down_bits if sign else None)


COMPRESSORS = {"demo": demo}
DESCRIPTIONS = {
    "demo": "DeMo: decoupled momentum, chunked-DCT top-k with the sent part removed, sign of the "
            "all-gathered average (Peng, Quesnelle & Kingma 2024, arXiv 2411.19870)",
}
