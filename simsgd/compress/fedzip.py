"""FedZip: top-z sparsification, k-means quantization of the kept values, Huffman-coded cluster ids.

Malekijoo, Fadaeieslam, Malekijou, Homayounfar, Alizadeh-Shabdiz & Rawassizadeh, "FEDZIP: A
Compression Framework for Communication-Efficient Federated Learning", arXiv 2102.01593 (2021);
the authors' code malekijoo/FedZip (``deploy.py``: ``prune``, ``kmean_cluster``,
``huffman_encoding``, ``huffman_encoding_difference_table``).

Per leaf of d entries (a client's weight update in FedAvg, or a gradient):
  1. Top-z: keep the k = max(1, ceil(z d)) entries of largest |x| (the authors' code prunes a fraction
     0.8 of each layer, keeping 20%: z = 0.2). Exact top-k without a sort (``gmf.select_topk``);
     ties go to the lowest index.
  2. k-means of the kept SIGNED values into C clusters (the code: 3, chosen in the paper by
     silhouette analysis): centroids start evenly spaced on [min, max] (``tf.linspace``), then
     ``iters`` Lloyd rounds (the code: 4), each "assign every value to its nearest centroid (ties:
     the lower one), move each non-empty centroid to its cluster's mean". Each kept value decodes to
     its cluster's centroid; the dropped entries decode to exactly 0.
  3. Encoding: the C centroids in the leaf's dtype (the code counts "3 * 32 bit for centroids"),
     the Huffman code lengths of the C cluster ids (4 bits each, 0 = unused; C <= 16 so lengths <=
     15), the positions of the kept entries, and the canonical Huffman codes of their ids, built
     from this message's id counts (the code's table is 1 bit for the most frequent of 3 ids, 2 for
     the others; here a general Huffman code, the same for 3 ids).
     Positions, ``positions`` argument: "gap" (default) -- gaps between consecutive kept indices
     (first: index + 1), each Elias-gamma coded (2 floor(log2 n) + 1 bits), the decodable form of the
     paper's difference-of-address position encoding, whose bit count (``bitsize``) is each gap's
     bare width, which no receiver could parse; "index" -- each index at ceil(log2 d) bits (the
     paper's position encoding uses 27-bit addresses).

Wire format (one bit stream for the tree, leaves in ``jax.tree.leaves`` order, zero-padded to whole
bytes at the end; see payload.py): per leaf, C centroids (IEEE bits, LSB first), C code lengths at
4 bits (LSB first), k positions, k Huffman codes. Elias-gamma and Huffman codes are written in code
order (their first bit first): Elias-gamma is floor(log2 n) zeros, then n's binary digits from the
most significant. Canonical Huffman: symbols sorted by (length, id) take consecutive codes. The
length varies with the data: ``message_bytes`` is exact (jittable) and ``payload_bits`` the largest
message (Huffman codes at C - 1 bits, gaps bounded by 2 k log2(d / k) + k, by concavity).

Huffman code lengths come from the standard merge of the two lightest nodes, ties to the lowest
node index (leaves 0..C-1, merged nodes numbered C, C+1, ... in order); a message with one used id
codes it with 1 bit.

Deviations from the authors' code (stated): their k-means runs on the whole layer INCLUDING the
pruned zeros (so zeros decode to a small centroid, and only the two rarer ids need positions);
here it runs on the kept values, as the paper's pipeline and research/compressors.md §3.3 describe,
so dropped entries stay exactly zero. Their code skips pruning bias layers; here every leaf is
pruned alike. Server: decode, then FedAvg (the (weighted) mean); down-link dense.
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
from simsgd.compress.gmf import keep_count, select_topk
from simsgd.compress.sparsify import index_bits, loop_under_vmap_on_cpu

LENGTH_BITS = 4
MAX_CLUSTERS = 16
_POSITIONS = ("gap", "index")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["centroids", "lengths", "ids", "indices"],
                   meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class FedZipLeaf:
    """One leaf's message: ``centroids`` [C] (leaf dtype), Huffman code ``lengths`` [C] (int32, 0 =
    unused id), cluster ``ids`` [k] (int32) of the kept entries at flat ``indices`` [k] (int32,
    ascending). ``shape`` is static metadata, never sent."""
    centroids: jax.Array
    lengths: jax.Array
    ids: jax.Array
    indices: jax.Array
    shape: tuple


def _is_leaf(x) -> bool:
    return isinstance(x, FedZipLeaf)


@jax.jit
def huffman_lengths(counts: jax.Array) -> jax.Array:
    """Huffman code lengths (int32 [C]) for symbol ``counts`` [C] (static C); 0 for unused symbols,
    1 when a single symbol is used. Merge order: lightest two nodes, ties to the lowest node index."""
    c = counts.shape[0]
    counts = counts.astype(jnp.int32)
    used = counts > 0
    n_used = jnp.sum(used)
    if c == 1:
        return used.astype(jnp.int32)
    big = jnp.iinfo(jnp.int32).max
    w = jnp.concatenate([counts, jnp.zeros((c - 1,), jnp.int32)])
    active = jnp.concatenate([used, jnp.zeros((c - 1,), bool)])
    parent = jnp.full((2 * c - 1,), -1, jnp.int32)

    def merge(m, carry):                        # node c + m := the two lightest active nodes
        w, active, parent = carry
        do = jnp.sum(active) >= 2
        wm = jnp.where(active, w, big)
        a = jnp.argmin(wm)
        b = jnp.argmin(wm.at[a].set(big))
        new = c + m
        w = w.at[new].set(jnp.where(do, w[a] + w[b], 0))
        active = jnp.where(do, active.at[a].set(False).at[b].set(False).at[new].set(True), active)
        parent = jnp.where(do, parent.at[a].set(new).at[b].set(new), parent)
        return w, active, parent

    _, _, parent = jax.lax.fori_loop(0, c - 1, merge, (w, active, parent))

    def climb(_, carry):                        # depth = hops from each leaf to the root
        ptr, depth = carry
        up = parent[ptr]
        has = up >= 0
        return jnp.where(has, up, ptr), depth + has

    _, depth = jax.lax.fori_loop(0, 2 * c - 2, climb, (jnp.arange(c), jnp.zeros((c,), jnp.int32)))
    lengths = jnp.where(used, depth, 0)
    return jnp.where(used & (n_used == 1), 1, lengths)


def _elias_gamma_bits(n: jax.Array) -> jax.Array:
    """Bits of the Elias-gamma code of each positive int32 ``n``: 2 floor(log2 n) + 1."""
    return 2 * (31 - jax.lax.clz(n.astype(jnp.int32))) + 1


@functools.partial(jax.jit, static_argnums=(1, 2))
def kmeans_1d(values: jax.Array, clusters: int, iters: int):
    """Lloyd's k-means of 1-D ``values`` (float32) from centroids evenly spaced on [min, max].

    Returns ``(centroids [C], ids [k])``: ``ids`` from the last assignment, ``centroids`` the means
    of those clusters (an empty cluster keeps its previous centroid).
    """
    lo, hi = jnp.min(values), jnp.max(values)
    cent = jnp.linspace(lo, hi, clusters) if clusters > 1 else lo[None]
    ids = jnp.zeros(values.shape, jnp.int32)
    for _ in range(iters):
        ids = jnp.argmin(jnp.abs(values[:, None] - cent[None, :]), axis=1).astype(jnp.int32)
        sums = jnp.zeros((clusters,), values.dtype).at[ids].add(values)
        cnt = jnp.zeros((clusters,), jnp.int32).at[ids].add(1)
        cent = jnp.where(cnt > 0, sums / jnp.maximum(cnt, 1).astype(values.dtype), cent)
    return cent, ids


# ---- host-side bit streams ----------------------------------------------------------------------

def _fixed_bits(values: np.ndarray, width: int) -> np.ndarray:
    """0/1 array of ``values`` at ``width`` bits each, least significant bit first."""
    v = np.asarray(values, np.uint64).reshape(-1)
    return ((v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8).reshape(-1)


def _prefix_code_bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0/1 array of variable-length codes, each written most significant bit first."""
    codes = np.asarray(codes, np.uint64).reshape(-1)
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.uint8)
    owner = np.repeat(np.arange(lengths.size), lengths)
    j = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)      # position within its code
    shift = (lengths[owner] - 1 - j).astype(np.uint64)
    return ((codes[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def elias_gamma_encode(n: np.ndarray) -> np.ndarray:
    """0/1 bits of the Elias-gamma codes of positive integers ``n``, one after another."""
    n = np.asarray(n, np.int64).reshape(-1)
    if n.size and n.min() < 1:
        raise ValueError("Elias-gamma codes positive integers only")
    width = np.floor(np.log2(np.maximum(n, 1))).astype(np.int64)
    width = width + (np.left_shift(1, width + 1) <= n) - (np.left_shift(1, width) > n)   # exact floor(log2 n)
    return _prefix_code_bits(n, 2 * width + 1)   # the leading zeros are n's own high zero bits


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (uint64 [C]) for code ``lengths`` [C] (0 = unused)."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.uint64)
    code, prev = 0, 0
    for s in sorted((int(l), i) for i, l in enumerate(lengths) if l > 0):
        length, sym = s
        code <<= length - prev
        codes[sym] = code
        code += 1
        prev = length
    return codes


class _Reader:
    def __init__(self, bits: np.ndarray):
        self.bits, self.pos = bits, 0

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > self.bits.size:
            raise ValueError("message ends early")
        out = self.bits[self.pos:self.pos + n]
        self.pos += n
        return out

    def fixed(self, count: int, width: int) -> np.ndarray:
        chunk = self.take(count * width).astype(np.uint64).reshape(count, width)
        return np.sum(chunk << np.arange(width, dtype=np.uint64), axis=1, dtype=np.uint64)

    def bit(self) -> int:
        return int(self.take(1)[0])


def elias_gamma_decode(reader: _Reader, count: int) -> np.ndarray:
    out = np.zeros(count, np.int64)
    for i in range(count):
        zeros = 0
        while reader.bit() == 0:
            zeros += 1
        value = 1
        for _ in range(zeros):
            value = (value << 1) | reader.bit()
        out[i] = value
    return out


def huffman_decode(reader: _Reader, lengths: np.ndarray, count: int) -> np.ndarray:
    codes = canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in range(len(lengths)) if lengths[s] > 0}
    longest = int(max(lengths)) if count else 0
    out = np.zeros(count, np.int64)
    for i in range(count):
        code, length = 0, 0
        while (length, code) not in table:
            if length >= longest:
                raise ValueError("not a code of this message's Huffman table")
            code, length = (code << 1) | reader.bit(), length + 1
        out[i] = table[(length, code)]
    return out


# ---- the compressor ------------------------------------------------------------------------------

def fedzip(z: float = 0.2, clusters: int = 3, iters: int = 4, positions: str = "gap") -> Compressor:
    """FedZip per leaf: top-z, k-means of the kept values into ``clusters``, Huffman-coded ids.

    Args:
      z: fraction of each leaf's entries kept, in (0, 1] (the authors' code keeps 20%).
      clusters: k-means clusters C, 1..16 (3).
      iters: Lloyd iterations, >= 1 (4, as ``kmean_cluster``).
      positions: "gap" (Elias-gamma coded gaps) or "index" (ceil(log2 d) bits each).

    Props: kind "biased", not summable (supports and codebooks differ), aggregation "mean".
    """
    if not 0 < z <= 1:
        raise ValueError(f"fedzip: z (fraction kept) must be in (0, 1], got {z}")
    if int(clusters) != clusters or not 1 <= clusters <= MAX_CLUSTERS:
        raise ValueError(f"fedzip: clusters must be an integer in 1..{MAX_CLUSTERS}, got {clusters}")
    if int(iters) != iters or iters < 1:
        raise ValueError(f"fedzip: iters must be a positive integer, got {iters}")
    if positions not in _POSITIONS:
        raise ValueError(f"fedzip: positions must be one of {', '.join(_POSITIONS)}, got {positions!r}")
    clusters, iters = int(clusters), int(iters)

    def init(params):
        del params
        return (), ()

    def cluster(values):
        cent, ids = kmeans_1d(values, clusters, iters)
        return cent, ids, huffman_lengths(jnp.zeros((clusters,), jnp.int32).at[ids].add(1))

    def encode_leaf(g):
        flat = g.reshape(-1)
        idx = select_topk(jnp.abs(flat), keep_count(z, flat.size))
        # k-means and the id counts scatter-add into C bins: one worker at a time on the CPU
        cent, ids, lengths = loop_under_vmap_on_cpu(cluster)(flat[idx].astype(jnp.float32))
        return FedZipLeaf(cent.astype(g.dtype), lengths, ids, idx, tuple(g.shape))

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        return jax.tree.map(encode_leaf, grads), worker_state

    def leaf_values(p):
        return jnp.take_along_axis(p.centroids, p.ids, axis=-1) if p.ids.ndim > 1 else p.centroids[p.ids]

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(lambda p: jnp.zeros((math.prod(p.shape),), p.centroids.dtype).at[p.indices]
                            .set(leaf_values(p)).reshape(p.shape), payload, is_leaf=_is_leaf)

    def aggregate(payloads, server_state, weights=None):
        def leaf(p):
            n, size = p.ids.shape[0], math.prod(p.shape)
            vals = leaf_values(p)
            if weights is not None:
                vals = (weights / jnp.sum(weights)).astype(vals.dtype)[:, None] * vals
            dense = jnp.zeros((size,), vals.dtype).at[p.indices.reshape(-1)].add(vals.reshape(-1))
            return (dense if weights is not None else dense / n).reshape(p.shape)
        return jax.tree.map(leaf, payloads, is_leaf=_is_leaf), server_state

    def value_bits(dtype) -> int:
        return jnp.dtype(dtype).itemsize * 8

    def position_bits(indices, size):
        if positions == "index":
            return jnp.int32(indices.shape[0] * index_bits(size))
        gaps = jnp.diff(indices, prepend=-1)            # >= 1: ascending indices, first gap = index + 1
        return jnp.sum(_elias_gamma_bits(gaps))

    def message_bytes(payload):
        whole, rest = jnp.int32(0), jnp.int32(0)     # bits = 8 whole + rest, summed without overflow
        for p in jax.tree.leaves(payload, is_leaf=_is_leaf):
            c = p.centroids.shape[0]
            bits = (c * (value_bits(p.centroids.dtype) + LENGTH_BITS) + position_bits(p.indices, math.prod(p.shape))
                    + jnp.sum(p.lengths[p.ids]))
            whole, rest = whole + bits // 8, rest + bits % 8
        return whole + (rest + 7) // 8

    def max_leaf_bits(x) -> int:
        d = math.prod(x.shape)
        k = keep_count(z, d)
        if positions == "index":
            pos = k * index_bits(d)
        else:
            pos = k + 2 * math.floor(k * math.log2(d / k) + 1e-9)
        return clusters * (value_bits(x.dtype) + LENGTH_BITS) + pos + k * max(1, clusters - 1)

    def payload_bits(params) -> int:
        return 8 * math.ceil(sum(max_leaf_bits(x) for x in jax.tree.leaves(params)) / 8)

    def pack(payload) -> bytes:
        chunks = []
        for p in jax.tree.leaves(payload, is_leaf=_is_leaf):
            cent_bits, width = wire.float_bits(np.asarray(p.centroids))
            lengths = np.asarray(p.lengths).astype(np.int64)
            ids = np.asarray(p.ids).astype(np.int64)
            idx = np.asarray(p.indices).astype(np.int64)
            chunks += [_fixed_bits(cent_bits, width), _fixed_bits(lengths, LENGTH_BITS)]
            if positions == "index":
                chunks.append(_fixed_bits(idx, index_bits(math.prod(p.shape))))
            else:
                chunks.append(elias_gamma_encode(np.diff(idx, prepend=-1)))
            chunks.append(_prefix_code_bits(canonical_codes(lengths)[ids], lengths[ids]))
        bits = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
        return np.packbits(bits, bitorder="little").tobytes()

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        reader = _Reader(np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little"))
        out = []
        for x in leaves:
            d = math.prod(x.shape)
            k = keep_count(z, d)
            width = value_bits(x.dtype)
            cent = wire.bits_float(reader.fixed(clusters, width), x.dtype)
            lengths = reader.fixed(clusters, LENGTH_BITS).astype(np.int32)
            if positions == "index":
                idx = reader.fixed(k, index_bits(d)).astype(np.int64)
            else:
                idx = np.cumsum(elias_gamma_decode(reader, k)) - 1
            ids = huffman_decode(reader, lengths, k)
            out.append(FedZipLeaf(cent, lengths, ids.astype(np.int32), idx.astype(np.int32), tuple(x.shape)))
        if len(data) != math.ceil(reader.pos / 8) or reader.bits[reader.pos:].any():
            raise ValueError(f"fedzip: message is {len(data)} bytes, its fields end at bit {reader.pos}")
        return jax.tree.unflatten(treedef, out)

    # Jitted as wholes: one compilation per tree instead of one per small kernel when called eagerly.
    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="biased", summable=False, linear_exact=False), message_bytes=jax.jit(message_bytes))


COMPRESSORS = {"fedzip": fedzip}
DESCRIPTIONS = {
    "fedzip": "FedZip: top-z (20%), 3-means of the kept values, Huffman-coded ids + Elias-gamma gaps "
              "(Malekijoo et al., arXiv 2102.01593, 2021)",
}
