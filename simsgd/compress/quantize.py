"""Scalar quantizers: QSGD, QSDP's bucketed min-max quantizer, TernGrad.

All three are stochastic, layer-wise (per leaf) and bucketed, and draw independent randomness per
worker from the ``key`` the engine hands each worker. Leaves are flattened row-major; buckets are
consecutive runs of ``bucket_size`` entries, the last one shorter. Scales (norms, minima, maxima,
scalers) travel as float32 whatever the leaf's dtype; decoded values come back in the leaf's dtype.
Wire formats are one bit stream for the whole tree (leaves in ``jax.tree.leaves`` order, fields as in
``payload.py``: LSB first, padded with zero bits to a whole byte at the very end).

References (research/compressors.md §2.1-2.3):
- Alistarh, Grubic, Li, Tomioka & Vojnovic, "QSGD: Communication-Efficient SGD via Gradient
  Quantization and Encoding", NeurIPS 2017 (arXiv 1610.02132).
- Markov, Vladu, Guo & Alistarh, "Quantized Distributed Training of Large Models with Convergence
  Guarantees" (QSDP), ICML 2023 (arXiv 2302.02390).
- Wen, Xu, Yan, Wu, Wang, Chen & Li, "TernGrad: Ternary Gradients to Reduce Communication in
  Distributed Deep Learning", NeurIPS 2017 (arXiv 1705.07878); code wenwei202/terngrad.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props

# ---- shared helpers --------------------------------------------------------------------------


def _uint_dtype(max_value: int):
    """Smallest unsigned dtype that holds ``0..max_value``."""
    for dt in (jnp.uint8, jnp.uint16, jnp.uint32):
        if max_value <= jnp.iinfo(dt).max:
            return dt
    raise ValueError(f"{max_value} does not fit in 32 bits")


def bucket_layout(size: int, bucket_size: int) -> tuple[int, int, int]:
    """``(d, nb, last)``: bucket length ``d = min(bucket_size, size)``, number of buckets, length of the last."""
    d = max(1, min(int(bucket_size), int(size)))
    nb = max(1, math.ceil(size / d))
    return d, nb, size - (nb - 1) * d


def _buckets(x, d: int, nb: int, fill=0.0):
    """Flat ``x`` [n] padded with ``fill`` to ``nb * d`` and reshaped to [nb, d]."""
    return jnp.pad(x, (0, nb * d - x.size), constant_values=fill).reshape(nb, d)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1, k2, x0, x1):
    """The Threefry-2x32 block function (20 rounds; Salmon et al., SC 2011), JAX's default PRNG,
    written out as elementwise uint32 ops: ``(y0, y1)`` for key words ``(k1, k2)`` and counter
    words ``(x0, x1)`` (broadcast together). The same function as ``jax.extend.random.threefry_2x32``."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r)))
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def random_bits(key, shape) -> jax.Array:
    """Exactly ``jax.random.bits(key, shape, jnp.uint32)``, the same words bit for bit, computed so
    that XLA can fuse the generator into its consumer.

    JAX's partitionable Threefry (the default) hashes the counter pair (0, flat index) of each word
    and XORs the block's two outputs. JAX lowers that hash on the CPU as a rolled 5-iteration loop
    that writes both state arrays to memory every iteration (about ten memory passes per draw,
    measured 8x a memory pass for [16, 10^6] words); written out here as plain elementwise ops
    (``threefry2x32``), it fuses into the op that uses the words and no random array is stored.
    Falls back to ``jax.random.bits`` for other PRNG implementations, with
    ``jax_threefry_partitionable`` off, or for 2^32 or more words.
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if (n == 0 or n >= 2 ** 32 or str(jax.random.key_impl(key)) != "threefry2x32"
            or not jax.config.jax_threefry_partitionable):
        return jax.random.bits(key, shape, jnp.uint32)
    k = jax.random.key_data(key)
    y0, y1 = threefry2x32(k[0], k[1], jnp.uint32(0), jax.lax.iota(jnp.uint32, n).reshape(shape))
    return y0 ^ y1


def words_to_uniform(w: jax.Array) -> jax.Array:
    """Uniform float32 on [0, 1) from uint32 words, as ``jax.random.uniform`` makes them: the top 23
    bits as the mantissa of a float in [1, 2), minus 1 (the multiples of 2^-23)."""
    return jax.lax.bitcast_convert_type((w >> 9) | jnp.uint32(0x3F800000), jnp.float32) - jnp.float32(1.0)


def uniform(key, shape) -> jax.Array:
    """Exactly ``jax.random.uniform(key, shape, jnp.float32)``, bit for bit, from ``random_bits``
    (fusable into its consumer)."""
    return words_to_uniform(random_bits(key, shape))


def _per_entry(v, d: int, n: int):
    """Per-bucket values ``v`` [nb] repeated for each of the ``n`` entries (bucket = entry // d). The
    element-wise work then runs on the flat leaf (no padded [nb, d] copies of the entries)."""
    return jnp.broadcast_to(v[:, None], (v.shape[0], d)).reshape(-1)[:n]


def leaf_uniforms(key, sizes) -> list[jax.Array]:
    """The per-worker uniforms U[0, 1) every quantizer here draws: one float32 vector per leaf.

    ``sizes[i]`` is the number of draws for leaf i; leaf i uses ``jax.random.split(key, L)[i]``:
    exactly ``jax.random.uniform(keys[i], (sizes[i],))``, computed by ``uniform``.
    Tests feed the same draws to the float64 references.
    """
    keys = jax.random.split(key, max(1, len(sizes)))
    return [uniform(keys[i], (int(s),)) for i, s in enumerate(sizes)]


def _bit_length(a: np.ndarray) -> np.ndarray:
    """Bits of the binary representation of each positive integer in ``a`` (exact, vectorized)."""
    a = np.asarray(a, np.uint64).copy()
    out = np.zeros(a.shape, np.int64)
    while np.any(a):
        out += a > 0
        a >>= np.uint64(1)
    return out


def elias_omega_len(n) -> jax.Array:
    """Length in bits of the Elias omega (recursive) code of each positive int32 ``n`` (jittable).

    ``L(1) = 1`` and ``L(n) = (floor(log2 n) + 1) + L(floor(log2 n))`` for ``n > 1``: the binary
    representation of n, preceded by the recursive code of its length minus one, and a final 0.
    """
    n = jnp.asarray(n, jnp.int32)
    total = jnp.ones_like(n)
    k = n
    for _ in range(6):   # n < 2**31 needs at most 4 recursion steps
        active = k > 1
        bl = 32 - jax.lax.clz(jnp.maximum(k, 1))
        total = total + jnp.where(active, bl, 0)
        k = jnp.where(active, bl - 1, 1)
    return total


def elias_omega_bits(values: np.ndarray) -> list[np.ndarray]:
    """The Elias omega code of each positive integer, as arrays of 0/1 bits in transmission order."""
    return [_omega_code(int(v)) for v in np.asarray(values).reshape(-1)]


def _omega_code(n: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"Elias omega codes positive integers, got {n}")
    groups = []
    while n > 1:
        groups.append(n)
        n = n.bit_length() - 1
    bits = [int(b) for g in reversed(groups) for b in bin(g)[2:]] + [0]
    return np.array(bits, np.uint8)


def _omega_tokens(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elias omega codes of ``values`` [m] as tokens ``(value, width)`` [m, 7], MSB-first groups.

    Row j holds, in transmission order, the recursion groups of values[j] (unused slots have width 0)
    and the closing 0 bit.
    """
    k = np.asarray(values, np.int64).reshape(-1).copy()
    chain_v, chain_w = [], []
    for _ in range(6):
        active = k > 1
        bl = _bit_length(np.where(active, k, 1))
        chain_v.append(np.where(active, k, 0))
        chain_w.append(np.where(active, bl, 0))
        k = np.where(active, bl - 1, 1)
    if np.any(k > 1):
        raise ValueError("value too large for the Elias omega encoder")
    vals = np.stack(chain_v[::-1] + [np.zeros_like(k)], axis=1)
    widths = np.stack(chain_w[::-1] + [np.ones_like(k)], axis=1)
    return vals, widths


def _token_bits(vals: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Expand tokens ``(value, width)`` (flattened in order) into their bits, most significant first."""
    vals, widths = np.asarray(vals, np.int64).reshape(-1), np.asarray(widths, np.int64).reshape(-1)
    reps = np.repeat(np.arange(vals.size), widths)
    if reps.size == 0:
        return np.zeros(0, np.uint8)
    starts = np.cumsum(widths) - widths
    k = np.arange(reps.size) - starts[reps]
    shift = widths[reps] - 1 - k
    return ((vals[reps] >> shift) & 1).astype(np.uint8)


def _float32_bits(x) -> np.ndarray:
    """The 32 bits of each float32 in ``x``, LSB first (the order ``payload.pack_fields`` uses)."""
    u = np.asarray(x, np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return ((u[:, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).reshape(-1)


class _BitReader:
    """Sequential reader over a bit array (stream order of ``payload.py``)."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        self.pos = 0

    def bit(self) -> int:
        if self.pos >= self.bits.size:
            raise ValueError("Elias stream ended early")
        b = int(self.bits[self.pos])
        self.pos += 1
        return b

    def float32(self) -> np.float32:
        chunk = self.bits[self.pos:self.pos + 32]
        if chunk.size < 32:
            raise ValueError("Elias stream ended early")
        self.pos += 32
        u = np.sum(chunk.astype(np.uint64) << np.arange(32, dtype=np.uint64), dtype=np.uint64)
        return np.array([u], np.uint32).view(np.float32)[0]

    def omega(self) -> int:
        n = 1
        while self.bit() == 1:
            v = 1
            for _ in range(n):
                v = (v << 1) | self.bit()
            n = v
        return n


def _dtype_name(x) -> str:
    return jnp.dtype(x.dtype).name


# ---- QSGD ------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scales", "signs", "levels"],
                   meta_fields=["shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class QSGDLeaf:
    """One leaf's QSGD message: per bucket a float32 scale (its L2 or max norm) [nb]; per entry a sign
    bit (1 = negative; 0 where the level is 0) [n] uint8 and a level in 0..s [n] (smallest uint).
    ``shape`` and ``dtype`` are static metadata known to both sides, never sent."""
    scales: jax.Array
    signs: jax.Array
    levels: jax.Array
    shape: tuple
    dtype: str


def _is_qsgd(x) -> bool:
    return isinstance(x, QSGDLeaf)


def qsgd(levels: int = 7, bucket_size: int = 512, norm: str = "l2", elias: bool = False) -> Compressor:
    """QSGD's stochastic quantizer Q_s (paper eq. 4), bucketed (paper §4), layer-wise.

    Per bucket v of d entries with scale ||v|| (``norm="l2"``: the 2-norm of the theory, §3.1;
    ``"max"``: max_j |v_j|, what the paper's experiments used, §4), with ``r_j = |v_j| / ||v||``:
    ``Q(v)_j = ||v|| sgn(v_j) l_j / s``, ``l_j = floor(s r_j) + [u_j < s r_j - floor(s r_j)]``, u_j ~ U[0, 1)
    independent (the level rounds up with probability ``s r_j - floor(s r_j)``). Unbiased;
    with the 2-norm ``E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2`` (Lemma 3.1, per bucket).

    Wire formats (both carry the same quantized tensor, so decode is the same):
    - fixed width (default): per bucket a float32 scale, then per entry 1 sign bit and the level at
      ``ceil(log2(s + 1))`` bits. Per leaf: scales [nb], signs [n], levels [n].
      ``payload_bits = 8 ceil(sum_leaf (32 nb + n (1 + ceil(log2(s+1)))) / 8)``.
    - ``elias=True``: the paper's code (§3.1): per bucket 32 bits of the scale, then for each non-zero
      level, the Elias recursive (omega) code of its gap from the previous non-zero (1-based positions,
      the first gap from 0), one sign bit and the omega code of the level. Each bucket closes with the
      omega code of ``d_b + 1 - last`` (a gap past the bucket's end), which the paper leaves implicit
      but a multi-bucket stream needs. Variable length: ``message_bytes`` is exact;
      ``payload_bits`` is the largest message, every entry non-zero at level s:
      ``32 + d_b (2 + L(s)) + 1`` per bucket (reached with ``norm="max"`` on a constant bucket; with the
      2-norm only a bound, since sum_j r_j^2 = 1 keeps most levels low).

    Not summable (per-worker scales): all-gather or a parameter server, as in the paper's Algorithm 1.
    Deviation: the paper's experiments (§5) leave matrices under 10K entries unquantized; here every
    leaf is quantized, so small layers are counted at the quantized price.

    Args:
      levels: s >= 1 quantization levels. Counting wire bits with the sign, "b-bit" QSGD is
        s = 2^(b-1) - 1, so the default 7 is 4-bit QSGD (the paper is loose here: §4 pairs "4 bits"
        with a variance factor sqrt(512)/2^4, i.e. s = 16).
      bucket_size: d, entries per bucket (paper §5: 512 for 4- and 8-bit, 128 for 2-bit), at most 2^24.
      norm: "l2" (theory) or "max" (experiments).
      elias: count and pack the Elias-coded stream instead of the fixed-width one.
    """
    s = _check_int("qsgd", "levels", levels, 1, 2 ** 24)
    bucket = _check_int("qsgd", "bucket_size", bucket_size, 1, 2 ** 24)   # Elias bit counts stay in int32
    if norm not in ("l2", "max"):
        raise ValueError(f"qsgd: norm must be 'l2' or 'max', got {norm!r}")
    if not isinstance(elias, (bool, np.bool_)):
        raise ValueError(f"qsgd: elias must be true or false, got {elias!r}")
    width = int(s).bit_length()             # ceil(log2(s + 1))
    level_dtype = _uint_dtype(s)
    max_level_len = _omega_code(s).size          # L(s), the longest level code

    def init(params):
        del params
        return (), ()

    def encode_leaf(g, u):
        n = g.size
        d, nb, _ = bucket_layout(n, bucket)
        x = g.reshape(-1).astype(jnp.float32)
        xb = _buckets(x, d, nb)
        if norm == "l2":
            scale = jnp.sqrt(jnp.sum(xb * xb, axis=1))
        else:
            scale = jnp.max(jnp.abs(xb), axis=1)
        safe = jnp.where(scale > 0, scale, 1.0)
        r = jnp.abs(x) * _per_entry(1.0 / safe, d, n)     # one division per bucket (as XLA compiled |v| / ||v||)
        low = jnp.floor(s * r)                                           # l: |v_j|/||v|| in [l/s, (l+1)/s]
        lv = low + (u < s * r - low)                                     # l + 1 with probability s r - l
        lv = jnp.clip(lv, 0, s).astype(level_dtype)
        signs = ((x < 0) & (lv > 0)).astype(jnp.uint8)
        return QSGDLeaf(scale, signs, lv, tuple(g.shape), _dtype_name(g))

    def encode(key, grads, worker_state, server_state):
        del server_state
        leaves, treedef = jax.tree.flatten(grads)
        us = leaf_uniforms(key, [x.size for x in leaves])
        return jax.tree.unflatten(treedef, [encode_leaf(g, u) for g, u in zip(leaves, us)]), worker_state

    def decode_leaf(p: QSGDLeaf):
        n = math.prod(p.shape)
        d, nb, _ = bucket_layout(n, bucket)
        scales, levels, signs = jnp.asarray(p.scales), jnp.asarray(p.levels), jnp.asarray(p.signs)
        mag = levels.astype(jnp.float32) * _per_entry(scales / s, d, n)
        sign = 1.0 - 2.0 * signs.astype(jnp.float32)
        return (mag * sign).astype(p.dtype).reshape(p.shape)

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(decode_leaf, payload, is_leaf=_is_qsgd)

    def aggregate(payloads, server_state, weights=None):
        return tree.wmean(jax.vmap(lambda p: decode(p, server_state))(payloads), weights), server_state

    def fixed_specs(params):
        out = []
        for x in jax.tree.leaves(params):
            n = math.prod(x.shape)
            _, nb, _ = bucket_layout(n, bucket)
            out += [(nb, 32), (n, 1), (n, width)]
        return out

    def payload_bits(params) -> int:
        if not elias:
            return wire.stream_bits(fixed_specs(params))
        bits = 0
        for x in jax.tree.leaves(params):
            n = math.prod(x.shape)
            d, nb, last = bucket_layout(n, bucket)
            bits += 32 * nb + n * (2 + max_level_len) + nb   # each bucket closes with L(1) = 1 bit
        return 8 * math.ceil(bits / 8)

    def elias_leaf_bits(p: QSGDLeaf):
        """(whole bytes, leftover bits) of this leaf's buckets, summed without int32 overflow."""
        n = math.prod(p.shape)
        d, nb, last = bucket_layout(n, bucket)
        lv = _buckets(p.levels.astype(jnp.int32), d, nb)
        pos = jnp.arange(1, d + 1, dtype=jnp.int32)
        nz = lv > 0
        upto = jax.lax.cummax(jnp.where(nz, pos, 0), axis=1)
        prev = jnp.concatenate([jnp.zeros((nb, 1), jnp.int32), upto[:, :-1]], axis=1)
        item = jnp.where(nz, elias_omega_len(pos - prev) + 1 + elias_omega_len(jnp.maximum(lv, 1)), 0)
        length = jnp.full((nb,), d, jnp.int32).at[-1].set(last)
        bucket_bits = 32 + jnp.sum(item, axis=1) + elias_omega_len(length + 1 - upto[:, -1])
        return jnp.sum(bucket_bits // 8), jnp.sum(bucket_bits % 8)

    def message_bytes(payload):
        parts = [elias_leaf_bits(p) for p in jax.tree.leaves(payload, is_leaf=_is_qsgd)]
        whole = sum(a for a, _ in parts)
        rest = sum(b for _, b in parts)
        return (whole + (rest + 7) // 8).astype(jnp.int32)

    def pack(payload) -> bytes:
        leaves = jax.tree.leaves(payload, is_leaf=_is_qsgd)
        if not elias:
            fields = []
            for p in leaves:
                fields += [wire.float_bits(np.asarray(p.scales, np.float32)),
                           (np.asarray(p.signs).astype(np.uint64), 1), (np.asarray(p.levels).astype(np.uint64), width)]
            return wire.pack_fields(fields)
        chunks = []
        for p in leaves:
            n = math.prod(p.shape)
            d, nb, last = bucket_layout(n, bucket)
            scales, signs, lv = np.asarray(p.scales, np.float32), np.asarray(p.signs), np.asarray(p.levels)
            for b in range(nb):
                lo, hi = b * d, min(n, (b + 1) * d)
                chunks.append(_float32_bits(scales[b]))
                idx = np.flatnonzero(lv[lo:hi]) + 1                      # 1-based positions of non-zeros
                gaps = np.diff(np.concatenate([[0], idx]))
                gv, gw = _omega_tokens(gaps) if idx.size else (np.zeros((0, 7)), np.zeros((0, 7)))
                lvv, lvw = _omega_tokens(lv[lo:hi][idx - 1]) if idx.size else (np.zeros((0, 7)), np.zeros((0, 7)))
                sv = signs[lo:hi][idx - 1].reshape(-1, 1)
                vals = np.concatenate([gv, sv, lvv], axis=1)             # [gap code][sign][level code] per entry
                widths = np.concatenate([gw, np.ones_like(sv), lvw], axis=1)
                chunks.append(_token_bits(vals, widths))
                tv, tw = _omega_tokens(np.array([hi - lo + 1 - (idx[-1] if idx.size else 0)]))
                chunks.append(_token_bits(tv, tw))
        bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        return np.packbits(bits, bitorder="little").tobytes()

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        out = []
        if not elias:
            fields = wire.unpack_fields(data, fixed_specs(params))
            for i, x in enumerate(leaves):
                out.append(QSGDLeaf(wire.bits_float(fields[3 * i], np.float32), fields[3 * i + 1].astype(np.uint8),
                                    fields[3 * i + 2].astype(level_dtype), tuple(x.shape), _dtype_name(x)))
            return jax.tree.unflatten(treedef, out)
        reader = _BitReader(data)
        for x in leaves:
            n = math.prod(x.shape)
            d, nb, _ = bucket_layout(n, bucket)
            scales = np.zeros(nb, np.float32)
            signs = np.zeros(n, np.uint8)
            lv = np.zeros(n, np.int64)
            for b in range(nb):
                lo, hi = b * d, min(n, (b + 1) * d)
                scales[b] = reader.float32()
                pos = 0
                while True:
                    pos += reader.omega()
                    if pos > hi - lo:
                        break
                    signs[lo + pos - 1] = reader.bit()
                    lv[lo + pos - 1] = reader.omega()
            if lv.size and lv.max() > s:
                raise ValueError(f"qsgd: decoded level {lv.max()} exceeds s = {s}")
            out.append(QSGDLeaf(scales, signs, lv.astype(level_dtype), tuple(x.shape), _dtype_name(x)))
        if (len(data) * 8 - reader.pos) >= 8 or np.any(reader.bits[reader.pos:]):
            raise ValueError("qsgd: trailing data after the Elias stream")
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="unbiased", summable=False, linear_exact=False),
                      message_bytes=jax.jit(message_bytes) if elias else None)


def qsgd_variance_bound(d: int, s: int) -> float:
    """Lemma 3.1 (ii) of QSGD for one bucket of d entries: ``E||Q_s(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2``."""
    return min(d / s ** 2, math.sqrt(d) / s)


# ---- QSDP ------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["lo", "hi", "codes"], meta_fields=["shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class MinMaxLeaf:
    """One leaf's min-max message: per bucket float32 minimum ``lo`` and maximum ``hi`` [nb]; per entry
    the grid index ``codes`` in 0..2^b-1 [n] (smallest uint)."""
    lo: jax.Array
    hi: jax.Array
    codes: jax.Array
    shape: tuple
    dtype: str


def _is_minmax(x) -> bool:
    return isinstance(x, MinMaxLeaf)


def qsdp(bits: int = 8, bucket_size: int = 1024, rounding: str = "stochastic") -> Compressor:
    """QSDP's gradient quantizer Q_g: bucketed min-max uniform quantization with unbiased rounding.

    Per bucket with minimum m and maximum M, the grid is ``m + delta Z`` with
    ``delta = (M - m) / (2^b - 1)``; with ``y_j = (g_j - m) / delta`` the code q_j in 0..2^b-1 is an
    unbiased rounding of y_j and ``D(q)_j = m + delta q_j``, so ``E[D(q)] = g`` (a constant bucket is
    sent exactly). Rounding: ``"stochastic"``: ``q_j = floor(y_j) + [u_j < frac(y_j)]`` with u_j ~ U[0, 1)
    independent per entry (the stochastic max-min quantization of CGX, the communication library of
    QSDP's authors); ``"shift"``: ``q_j = floor(y_j + u)`` with one u per bucket, i.e. rounding on a
    randomly shifted lattice: each entry marginally the same as stochastic rounding (unbiased), the
    entries of a bucket correlated. Both draw from the worker's key; the decoder needs no randomness.

    Wire: per leaf the bucket minima [nb] and maxima [nb] as float32, then the codes [n] at b bits:
    ``payload_bits = 8 ceil(sum_leaf (64 nb + b n) / 8)`` (b + 64/B bits per entry, catalog §2.2).
    Not summable: QSDP's reduce-scatter dequantizes before it sums, i.e. an all-to-all of quantized
    chunks, priced here as all-gather / parameter server.

    Scope: this is Q_g, the gradient side. QSDP's weight quantization Q_w (weights all-gathered
    quantized; ``x_{t+1} = Q_w(x_t - eta Q_g(g))`` in its analysis) is the same quantizer with
    ``rounding="shift"`` applied to the sharded weights: ``sync_sgd(weights=...)``, YAML
    ``algorithm.weights`` (``simsgd.algorithms.fsdp``). The bucket size 1024 and the 8-bit (W8G8) default follow the catalog and
    were not confirmed against the paper's text.

    Args:
      bits: b, bits per entry, 1..16.
      bucket_size: entries per bucket (one min and one max each).
      rounding: "stochastic" or "shift".
    """
    b = _check_int("qsdp", "bits", bits, 1, 16)
    bucket = _check_int("qsdp", "bucket_size", bucket_size, 1, 2 ** 30)
    if rounding not in ("stochastic", "shift"):
        raise ValueError(f"qsdp: rounding must be 'stochastic' or 'shift', got {rounding!r}")
    top = 2 ** b - 1
    code_dtype = _uint_dtype(top)

    def init(params):
        del params
        return (), ()

    def draws(x):
        n = math.prod(x.shape)
        return n if rounding == "stochastic" else bucket_layout(n, bucket)[1]

    def encode_leaf(g, u):
        n = g.size
        d, nb, _ = bucket_layout(n, bucket)
        x = g.reshape(-1).astype(jnp.float32)
        xb = jnp.pad(x, (0, nb * d - n), mode="edge").reshape(nb, d)   # the last entry repeated: one
        lo, hi = jnp.min(xb, axis=1), jnp.max(xb, axis=1)               # padded copy serves min and max
        delta = (hi - lo) / top
        safe = jnp.where(delta > 0, delta, 1.0)
        # one division per bucket: (x - m) times 1/delta (what XLA compiled the per-entry division to)
        y = jnp.where(_per_entry(delta, d, n) > 0, (x - _per_entry(lo, d, n)) * _per_entry(1.0 / safe, d, n), 0.0)
        if rounding == "stochastic":                 # up with probability frac(y), one draw per entry
            q = jnp.floor(y) + (u < y - jnp.floor(y))
        else:                                        # floor on the grid shifted by one draw per bucket
            q = jnp.floor(y + _per_entry(u, d, n))
        q = jnp.clip(q, 0, top).astype(code_dtype)
        return MinMaxLeaf(lo, hi, q, tuple(g.shape), _dtype_name(g))

    def encode(key, grads, worker_state, server_state):
        del server_state
        leaves, treedef = jax.tree.flatten(grads)
        us = leaf_uniforms(key, [draws(x) for x in leaves])
        return jax.tree.unflatten(treedef, [encode_leaf(g, u) for g, u in zip(leaves, us)]), worker_state

    def decode_leaf(p: MinMaxLeaf):
        n = math.prod(p.shape)
        d, nb, _ = bucket_layout(n, bucket)
        lo, hi, codes = jnp.asarray(p.lo), jnp.asarray(p.hi), jnp.asarray(p.codes)
        delta = (hi - lo) / top
        v = _per_entry(lo, d, n) + _per_entry(delta, d, n) * codes.astype(jnp.float32)
        return v.astype(p.dtype).reshape(p.shape)

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(decode_leaf, payload, is_leaf=_is_minmax)

    def aggregate(payloads, server_state, weights=None):
        return tree.wmean(jax.vmap(lambda p: decode(p, server_state))(payloads), weights), server_state

    def specs(params):
        out = []
        for x in jax.tree.leaves(params):
            n = math.prod(x.shape)
            _, nb, _ = bucket_layout(n, bucket)
            out += [(nb, 32), (nb, 32), (n, b)]
        return out

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        fields = []
        for p in jax.tree.leaves(payload, is_leaf=_is_minmax):
            fields += [wire.float_bits(np.asarray(p.lo, np.float32)), wire.float_bits(np.asarray(p.hi, np.float32)),
                       (np.asarray(p.codes).astype(np.uint64), b)]
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        f = wire.unpack_fields(data, specs(params))
        out = [MinMaxLeaf(wire.bits_float(f[3 * i], np.float32), wire.bits_float(f[3 * i + 1], np.float32),
                          f[3 * i + 2].astype(code_dtype), tuple(x.shape), _dtype_name(x))
               for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="unbiased", summable=False, linear_exact=False))


# ---- TernGrad --------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scale", "trits"], meta_fields=["shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class TernLeaf:
    """One leaf's TernGrad message: the worker's scaler ``s_i`` (float32 scalar) and the ternary
    values ``trits`` in {-1, 0, 1} [n] int8 (on the wire: the 2-bit code ``trit + 1``)."""
    scale: jax.Array
    trits: jax.Array
    shape: tuple
    dtype: str


def _is_tern(x) -> bool:
    return isinstance(x, TernLeaf)


class TernState(NamedTuple):
    step: jax.Array   # int32 counter for the server's shared draws, advanced by aggregate


def terngrad_clip(g, clip: float):
    """TernGrad's gradient clipping (§3.2) for one layer: ``f(g) = clip(g, -c sigma, c sigma)`` with
    sigma the layer's standard deviation around its mean; ``clip = 0`` leaves g unchanged."""
    x = g.reshape(-1).astype(jnp.float32)
    if clip == 0:
        return x
    sigma = _sigma(x)
    return jnp.clip(x, -clip * sigma, clip * sigma)


def _sigma(x):
    """The standard deviation of a flat float32 ``x`` around its mean (two passes, as written)."""
    return jnp.sqrt(jnp.mean(jnp.square(x - jnp.mean(x))))


def terngrad_shared_uniforms(seed: int, step, n_workers: int, sizes) -> list[jax.Array]:
    """The server's draws v [N, n] per leaf for TernGrad's scaler sharing: from ``fold_in(key(seed),
    step)``, split per leaf, so every machine that knows the seed and the step draws the same
    (exactly ``jax.random.uniform``, computed by ``uniform``)."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    keys = jax.random.split(key, max(1, len(sizes)))
    return [uniform(keys[i], (n_workers, int(sz))) for i, sz in enumerate(sizes)]


def terngrad(clip: float = 2.5, seed: int = 0) -> Compressor:
    """TernGrad: layer-wise stochastic ternarization with a shared scaler (Wen et al. 2017).

    Per layer and worker i: clip ``f_i = clip(g_i, +-c sigma_i)`` (§3.2, c = 2.5; c = 0 disables),
    scaler ``s_i = max|f_i|`` (§3.1 "layer-wise ternarizing"), shared scaler ``s = max_i s_i``
    ("scaler sharing"), and ``t_ij = s sign(f_ij) b_ij`` with ``b_ij ~ Bernoulli(|f_ij| / s)``, so
    ``E[t_i] = f_i`` (= g_i without clipping). The server averages ``(1/N) sum_i t_i``: a multiple of
    s/N whose numerator sum_i sign b is an integer in [-N, N].

    Scaler sharing, as one message per step. The paper's workers first exchange their scalers, then
    ternarize against the shared one. Here each worker sends both at once: its scaler s_i and trits
    drawn against it, ``b'_ij ~ Bernoulli(|f_ij| / s_i)`` (per-worker key). The server, knowing every
    s_i, keeps each non-zero trit with probability ``s_i / s`` (draws from a seed shared by everyone,
    folded with a step counter in the server state and the worker's index), which gives exactly the
    paper's distribution: ``P(b_ij = 1) = (|f_ij| / s_i)(s_i / s) = |f_ij| / s``, independent across
    entries. The bits are the paper's two phases added up, one latency instead of two:
    - up, per worker: per layer s_i (32 bits) + 2 bits per entry (code ``trit + 1`` in {0, 1, 2}, as
      the reference code's ``ternary_encoder``): ``payload_bits = 8 ceil((32 L + 2 n) / 8)``;
    - down, per worker: per layer the shared s (32 bits) + ``ceil(log2(2N + 1))`` bits per entry for the
      integer sum in [-N, N]: ``down_bits = 8 ceil((32 L + n ceil(log2(2N+1))) / 8)``.
    ``aggregate`` is therefore not the mean of the per-worker ``decode`` (s_i t'_i, each unbiased on
    its own): Props.aggregation = "shared_scale_mean". Payloads are not summable before the server
    has s (parameter server or all-gather, then the shared draws; the sums themselves are).

    Deviation from the reference code: it uses ``s_i = c sigma_i`` even when max|g| < c sigma; this
    follows the paper (max of the clipped gradient). Every layer is ternarized (the code's
    ``size_to_binarize = 1``), including a 1-entry layer, which clipping zeroes (sigma = 0).

    Props: kind "unbiased" without clipping, else "biased" (unbiased for the clipped gradient).

    Args:
      clip: c >= 0, clipping at c standard deviations (0: no clipping).
      seed: seed of the server's shared draws.
    """
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip < 0:
        raise ValueError(f"terngrad: clip must be a finite number >= 0 (0 disables clipping), got {clip!r}")
    seed = _check_int("terngrad", "seed", seed, 0, 2 ** 31 - 1)
    clip = float(clip)

    def init(params):
        del params
        return (), TernState(jnp.zeros((), jnp.int32))

    def encode_leaf(g, u):
        x = g.reshape(-1).astype(jnp.float32)
        if clip == 0:
            f, s_i = x, jnp.max(jnp.abs(x))
        else:   # terngrad_clip; s_i = max|clip(x, +-a)| = min(max|x|, a) exactly (clipping is monotone),
            a = clip * _sigma(x)     # so max|x| is read in the pass of the mean, not in one after sigma
            f, s_i = jnp.clip(x, -a, a), jnp.minimum(jnp.max(jnp.abs(x)), a)
        t = jnp.where(u * s_i < jnp.abs(f), jnp.sign(f), 0.0).astype(jnp.int8)
        return TernLeaf(s_i, t, tuple(g.shape), _dtype_name(g))

    def encode(key, grads, worker_state, server_state):
        del server_state
        leaves, treedef = jax.tree.flatten(grads)
        us = leaf_uniforms(key, [x.size for x in leaves])
        return jax.tree.unflatten(treedef, [encode_leaf(g, u) for g, u in zip(leaves, us)]), worker_state

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(lambda p: (jnp.asarray(p.scale) * jnp.asarray(p.trits).astype(jnp.float32)
                                       ).astype(p.dtype).reshape(p.shape),
                            payload, is_leaf=_is_tern)

    def aggregate(payloads, server_state, weights=None):
        leaves, treedef = jax.tree.flatten(payloads, is_leaf=_is_tern)
        n_workers = leaves[0].trits.shape[0]
        vs = terngrad_shared_uniforms(seed, server_state.step, n_workers, [math.prod(p.shape) for p in leaves])
        w = jnp.full((n_workers,), 1.0 / n_workers) if weights is None else weights / jnp.sum(weights)
        out = []
        for p, v in zip(leaves, vs):
            s = jnp.max(p.scale)
            keep = v * s < p.scale[:, None]                  # probability s_i / s
            t = jnp.where(keep, p.trits.astype(jnp.float32), 0.0)
            mean = s * jnp.tensordot(w.astype(jnp.float32), t, axes=1, precision=jax.lax.Precision.HIGHEST)
            out.append(mean.astype(p.dtype).reshape(p.shape))
        return jax.tree.unflatten(treedef, out), TernState(server_state.step + 1)

    def specs(params):
        leaves = jax.tree.leaves(params)
        return [(1, 32) for _ in leaves] + [(math.prod(x.shape), 2) for x in leaves]

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def down_bits(params, n: int) -> int:
        leaves = jax.tree.leaves(params)
        width = max(1, (2 * int(n)).bit_length())          # ceil(log2(2n + 1))
        return wire.stream_bits([(len(leaves), 32)] + [(math.prod(x.shape), width) for x in leaves])

    def pack(payload) -> bytes:
        leaves = jax.tree.leaves(payload, is_leaf=_is_tern)
        fields = [wire.float_bits(np.asarray(p.scale, np.float32).reshape(1)) for p in leaves]
        fields += [((np.asarray(p.trits).astype(np.int64) + 1).astype(np.uint64), 2) for p in leaves]
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        f = wire.unpack_fields(data, specs(params))
        m = len(leaves)
        out = []
        for i, x in enumerate(leaves):
            codes = f[m + i].astype(np.int64)
            if codes.size and codes.max() > 2:
                raise ValueError("terngrad: 2-bit code 3 is not a ternary value")
            out.append(TernLeaf(wire.bits_float(f[i], np.float32)[0], (codes - 1).astype(np.int8), tuple(x.shape),
                                _dtype_name(x)))
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="unbiased" if clip == 0 else "biased", summable=False, linear_exact=False,
                            aggregation="shared_scale_mean"),
                      down_bits=down_bits)


def _check_int(name: str, arg: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name}: {arg} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


COMPRESSORS = {"qsgd": qsgd, "qsdp": qsdp, "terngrad": terngrad}
DESCRIPTIONS = {
    "qsgd": "stochastic s-level quantization of |g|/||g|| per bucket, fixed-width or Elias-coded "
            "(Alistarh et al., NeurIPS 2017)",
    "qsdp": "bucketed min-max b-bit quantization with unbiased stochastic or random-shift rounding, "
            "QSDP's gradient quantizer (Markov et al., ICML 2023)",
    "terngrad": "layer-wise stochastic ternary gradients with clipping and a shared max scaler, 2 bits up "
                "(Wen et al., NeurIPS 2017)",
}
