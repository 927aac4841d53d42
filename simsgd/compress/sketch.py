"""Sketching compressors: FetchSGD's count sketch and the random-projection sketch of Song et al.

Both treat the whole gradient tree as ONE vector ``v`` in R^d (the leaves in ``jax.tree.leaves``
order, each flattened row-major, promoted to float32), as the papers do, and both are linear with
randomness shared by every worker, so workers' messages add up inside an all-reduce.

fetchsgd -- Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez & Arora, "FetchSGD:
Communication-Efficient Federated Learning with Sketching", ICML 2020, Algorithm 1; reference code
kiddyboots216/CommEfficient ``fed_aggregator.py::_server_helper_sketched`` and ``csvec.py``.
  A count sketch S(v) in R^(r x c) with, per row j, a bucket hash h_j: [d] -> [c] and a sign hash
  s_j: [d] -> {-1, +1} (fixed for the whole run, from ``seed``): ``S(v)[j, h_j(i)] += s_j(i) v_i``.
  The hashes are computed, not stored: csvec uses polynomial hashes mod 2^61 - 1 (2-wise
  independent buckets, 4-wise independent signs); 64-bit products are not available in JAX's
  default 32-bit mode, so here each (seed, row, purpose) stream is two rounds of the lowbias32
  integer mixer over the coordinate index (``hash_words``) -- cheap, identical on every device,
  empirically well mixed, but without a formal k-wise independence guarantee.
  Unsketch: ``U(S)_i = median_j s_j(i) S[j, h_j(i)]``. Each worker sends ``S(g_i)``; the server
  keeps momentum and error *in sketch space*:
      S = mean_i S(g_i);  S_u <- rho S_u + S;  S_e <- S_e + S_u;
      Delta = Top-k(U(S_e));  then, in the cells where S(Delta) != 0: S_e <- 0 (and S_u <- 0)
  and returns Delta, which plain SGD applies: x <- x - lr Delta.
  - Error reset: the paper's Algorithm 1 subtracts, S_e <- S_e - S(Delta); the reference code
    zeroes the nonzero cells of S(Delta) instead ("this should work but doesn't (model
    diverges)"). Default ``error_reset="zero"`` (the code); ``"subtract"`` gives Algorithm 1.
  - Momentum masking: the code zeroes S_u in the same cells (momentum factor masking in sketch
    space). An earlier version wrote ``Vvelocity[nz[:,0], nz[:,1]].zero_()``, which zeroes a copy
    (a no-op); the later version assigns ``= 0``. ``momentum_masking=True`` follows the later one.
  - Learning rate: Algorithm 1 accumulates ``S_e <- S_e + lr S_u``. Here S_e accumulates S_u and
    the outer plain SGD multiplies Delta by lr. Top-k, the median and the cell zeroing are all
    positively homogeneous, so with a constant lr the two trajectories are identical; under a
    schedule they differ (the paper's S_e remembers past learning rates).
  - Second round: Sketched-SGD (Ivkin et al. 2019; its code's ``p2`` option) asks the workers
    for the exact values of the candidate heavy coordinates in a second round. FetchSGD's sketch
    mode has none: the reference code takes Delta's values from the sketch estimates of S_e
    (``unSketch(k)``), and the workers hold no state to answer from. No second round is counted.
  - Top-k is exact, ties broken by the lower index, found without sorting (``topk_indices``: the
    k-th largest |U(S_e)| bracketed from a sample, then a fixed-capacity selection). The reference
    code sorts.
  - The median over rows is the usual one (mean of the two middle values for an even r; torch's
    median takes the lower one), computed by a small sorting network. The defaults use r = 5.
  - S(Delta) is sketched from Delta's k entries only (scatter of k, not d, values per row).
  - Not modelled: csvec's ``numBlocks`` memory trick (repeated hashes with block offsets), local
    momentum/error variants, and the code's division by the number of examples (we average over
    workers).
  Wire (up): the r x c table, float32, row-major: ``payload_bits = 32 r c``. Down (parameter
  server): Delta as k float32 values then k indices at ``ceil(log2 d)`` bits into the flattened
  model (the reference code counts 4 bytes per changed weight and no index).
  Props: biased, summable (all-reduce of sketches), replaces_optimizer (momentum lives in S_u).

sketch_project -- Song, Wang, Yu & Zhang, "Sketching for First Order Method: Efficient Algorithm
for Low-Bandwidth Channel and Vulnerability", ICML 2023 (arXiv 2210.08371).
  Each worker sends ``sk(g) = R_t g`` with R_t in R^(s x d), s << d, drawn fresh every step from
  shared randomness named by (seed, step), the step counter kept in the server state (SRHT and
  count-sketch draws are hashed from them as above; the dense families use ``jax.random`` with
  ``fold_in(key(seed), step)``);
  the receiver de-sketches with R_t^T: ``estimate = R_t^T mean_i R_t g_i``. E[R^T R] = I, so the
  estimate is unbiased. Sketch families (``sketch``):
  - ``"srht"``: R = sqrt(d'/s) P H D with d' = 2^ceil(log2 d) (g zero-padded), D random signs,
    H the orthonormal Walsh-Hadamard matrix (applied by a fast transform, never formed), P picks s
    rows uniformly with replacement (each row of P is one e_i) so E[P^T P] = (s/d') I.
  - ``"countsketch"``: one nonzero per column, R[h(i), i] = sigma(i) (h uniform in [s], sigma = +-1).
  - ``"gaussian"``: R_ij ~ N(0, 1/s); ``"ams"``: R_ij = +-1/sqrt(s). Both dense (s x d formed:
    small models only; init refuses s d > 2^27).
  The families are the standard ones of the sketching literature; which of them the paper's
  analysis uses could not be checked against the PDF here. The paper's Gaussian-noise (DP)
  variant is not implemented. Wire (up): s float32 values, ``payload_bits = 32 s``. Down: the
  server can send the sketched mean (s float32) and every worker de-sketches it with the shared
  R_t: ``down_bits = 32 s``. Props: unbiased, summable, aggregate = mean of the decodes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props
from simsgd.compress.sparsify import index_bits, loop_under_vmap_on_cpu, topk_ascending

_HIGHEST = jax.lax.Precision.HIGHEST


# ---- the whole tree as one float32 vector ------------------------------------------------------

def _sizes(params) -> list[int]:
    return [math.prod(x.shape) for x in jax.tree.leaves(params)]


def _flatten(grads) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    return jnp.concatenate([jnp.asarray(x).reshape(-1).astype(jnp.float32) for x in leaves]) if leaves \
        else jnp.zeros((0,), jnp.float32)


class Layout(NamedTuple):
    """Static description of the gradient tree: its treedef and each leaf's (shape, dtype name).

    Carried by every message as pytree metadata (known to both sides, never sent)."""
    treedef: object
    leaves: tuple

    @property
    def d(self) -> int:
        return sum(math.prod(shape) for shape, _ in self.leaves)

    def unflatten(self, v):
        out, o = [], 0
        for shape, dtype in self.leaves:
            size = math.prod(shape)
            out.append(v[o:o + size].reshape(shape).astype(dtype))
            o += size
        return jax.tree.unflatten(self.treedef, out)


def layout_of(params) -> Layout:
    leaves, treedef = jax.tree.flatten(params)
    return Layout(treedef, tuple((tuple(x.shape), jnp.dtype(x.dtype).name) for x in leaves))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values"], meta_fields=["layout"])
@dataclasses.dataclass(frozen=True)
class SketchMessage:
    """One worker's sketch: ``values`` (FetchSGD: the [r, c] table; projection: [s]) in float32.

    ``layout`` (static metadata) lets the receiver rebuild the gradient tree. Stacked over workers,
    ``values`` gets a leading [N] axis.
    """
    values: jax.Array
    layout: Layout


# ---- exact top-k without a sort ----------------------------------------------------------------

def topk_indices(x: jax.Array, k: int) -> jax.Array:
    """Indices (ascending) of the ``k`` entries of largest ``|x|``; ties go to the lower index.

    Exact and sort-free: ``sparsify.topk_ascending`` (the k-th largest ``|x|`` bracketed from a
    sample and found within the band; small vectors: bit by bit on its IEEE pattern, 31 counting
    passes), then every entry above it plus the first entries equal to it fill exactly k slots.
    """
    d = x.shape[0]
    k = int(k)
    if not 1 <= k <= d:
        raise ValueError(f"topk_indices: k must be in 1..{d}, got {k}")
    return topk_ascending(x, k)


# ---- shared randomness: hashing ---------------------------------------------------------------

_GOLDEN = 0x9E3779B9


def _u32(x) -> jax.Array:
    if isinstance(x, (int, np.integer)):
        return jnp.uint32(int(x) % 2 ** 32)
    return jnp.asarray(x).astype(jnp.uint32)


def mix32(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons, "Hash function prospector"): a bijective uint32 mixer, full avalanche."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def stream_word(seed, *tags) -> jax.Array:
    """A uint32 naming one random stream: ``seed`` then each tag (ints, or traced ints such as a step)."""
    w = mix32(_u32(seed))
    for t in tags:
        w = mix32(w ^ mix32(_u32(t) + jnp.uint32(_GOLDEN)))
    return w


def hash_words(word: jax.Array, n: int) -> jax.Array:
    """n pseudo-random uint32 of the stream ``word``: two mixing rounds of (i * golden + word)."""
    i = jnp.arange(n, dtype=jnp.uint32)
    return mix32(mix32(i * jnp.uint32(_GOLDEN) + word) ^ word)


# ---- count sketch (FetchSGD) -------------------------------------------------------------------

def count_sketch_hashes(seed: int, rows: int, cols: int, d: int):
    """The shared hashes of a count sketch: buckets int32 [rows, d] in [0, cols), signs float32 +-1.

    Row j uses two independent streams of ``hash_words`` (buckets: word % cols; signs: top bit).
    """
    buckets, signs = [], []
    for j in range(rows):
        buckets.append((hash_words(stream_word(seed, j, 0), d) % jnp.uint32(cols)).astype(jnp.int32))
        signs.append(jnp.where(hash_words(stream_word(seed, j, 1), d) >> 31, 1.0, -1.0).astype(jnp.float32))
    return jnp.stack(buckets), jnp.stack(signs)


def count_sketch(v, buckets, signs, cols: int):
    """S(v) [rows, cols]: ``S[j, h_j(i)] += s_j(i) v_i`` (one segment sum per row; on the CPU one
    per worker under vmap, ``sparsify.loop_under_vmap_on_cpu``: batched scatters are slow there)."""
    rows = buckets.shape[0]

    def sketch(v, buckets, signs):
        return jnp.stack([jax.ops.segment_sum(signs[j] * v, buckets[j], num_segments=cols) for j in range(rows)])
    return loop_under_vmap_on_cpu(sketch)(v, buckets, signs)


def median_rows(rows: list) -> jax.Array:
    """Elementwise median of a few equal-shape arrays, by an odd-even transposition sorting network
    (r rounds of min/max; no sort of a [r, d] array): the middle one, or the mean of the two middle."""
    rows = list(rows)
    r = len(rows)
    for rnd in range(r):
        for i in range(rnd % 2, r - 1, 2):
            rows[i], rows[i + 1] = jnp.minimum(rows[i], rows[i + 1]), jnp.maximum(rows[i], rows[i + 1])
    return rows[r // 2] if r % 2 else (rows[r // 2 - 1] + rows[r // 2]) / 2


def count_unsketch(table, buckets, signs):
    """U(S) [d]: ``median_j s_j(i) S[j, h_j(i)]``."""
    return median_rows([table[j][buckets[j]] * signs[j] for j in range(buckets.shape[0])])


def count_sketch_sparse(values, idx, buckets, signs, cols: int):
    """S(v) of a vector that is ``values`` at ``idx`` and zero elsewhere (k entries, not d)."""
    rows = buckets.shape[0]
    return jnp.stack([jax.ops.segment_sum(signs[j][idx] * values, buckets[j][idx], num_segments=cols)
                      for j in range(rows)])


class FetchState(NamedTuple):
    momentum: jax.Array   # S_u [rows, cols]
    error: jax.Array      # S_e [rows, cols]


def fetchsgd(k: int = 50000, num_rows: int = 5, num_cols: int = 500000, momentum: float = 0.9,
             error_reset: str = "zero", momentum_masking: bool = True, seed: int = 0) -> Compressor:
    """FetchSGD: count-sketched gradients, momentum and error accumulation in sketch space, top-k.

    Args:
      k: coordinates updated per step (capped at the model size d). Code default 50000.
      num_rows, num_cols: the sketch's r x c (code defaults 5 x 500000).
      momentum: rho of the sketch-space ("virtual") momentum, in [0, 1) (the paper's runs use 0.9).
      error_reset: "zero" (reference code: zero S_e where S(Delta) != 0) or "subtract"
        (Algorithm 1: S_e -= S(Delta)).
      momentum_masking: also zero S_u where S(Delta) != 0 (reference code).
      seed: the hash functions (fixed for the run, shared by every worker).

    The aggregate is the update direction Delta (k-sparse); use plain SGD with the method's lr.
    """
    for name, val, lo in (("k", k, 1), ("num_rows", num_rows, 1), ("num_cols", num_cols, 1)):
        if int(val) != val or val < lo:
            raise ValueError(f"fetchsgd: {name} must be a positive integer, got {val}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"fetchsgd: momentum must be in [0, 1), got {momentum}")
    if error_reset not in ("zero", "subtract"):
        raise ValueError(f"fetchsgd: error_reset must be 'zero' or 'subtract', got {error_reset!r}")
    if int(seed) != seed:
        raise ValueError(f"fetchsgd: seed must be an integer, got {seed}")
    r, c, seed = int(num_rows), int(num_cols), int(seed)

    def hashes(d):
        return count_sketch_hashes(seed, r, c, d)

    def init(params):
        del params
        z = jnp.zeros((r, c), jnp.float32)
        return (), FetchState(z, z)

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        lay = layout_of(grads)
        b, s = hashes(lay.d)
        return SketchMessage(count_sketch(_flatten(grads), b, s, c), lay), worker_state

    def decode(payload: SketchMessage, server_state):
        del server_state
        b, s = hashes(payload.layout.d)
        return payload.layout.unflatten(count_unsketch(payload.values, b, s))

    def aggregate(payloads: SketchMessage, server_state: FetchState, weights=None):
        lay = payloads.layout
        d = lay.d
        kk = min(int(k), d)
        b, s = hashes(d)
        sk = tree.wmean(payloads.values, weights)
        s_u = momentum * server_state.momentum + sk
        s_e = server_state.error + s_u
        est = count_unsketch(s_e, b, s)
        idx = topk_indices(est, kk)
        delta = jnp.zeros((d,), jnp.float32).at[idx].set(est[idx])
        s_delta = count_sketch_sparse(est[idx], idx, b, s, c)
        hit = s_delta != 0
        s_e = jnp.where(hit, 0.0, s_e) if error_reset == "zero" else s_e - s_delta
        if momentum_masking:
            s_u = jnp.where(hit, 0.0, s_u)
        return lay.unflatten(delta), FetchState(s_u, s_e)

    def payload_bits(params) -> int:
        return wire.stream_bits([(r * c, 32)])

    def down_bits(params, n) -> int:
        d = sum(_sizes(params))
        kk = min(int(k), d)
        return wire.stream_bits([(kk, 32), (kk, index_bits(d))])

    def pack(payload: SketchMessage) -> bytes:
        return wire.pack_fields([wire.float_bits(np.asarray(payload.values, np.float32))])

    def unpack(data: bytes, params):
        (u,) = wire.unpack_fields(data, [(r * c, 32)])
        return SketchMessage(jnp.asarray(wire.bits_float(u, np.float32).reshape(r, c)), layout_of(params))

    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="biased", summable=True, linear_exact=False, aggregation="sketch_topk",
                            replaces_optimizer=True),
                      down_bits=down_bits)


# ---- random projection sketch (Song, Wang, Yu & Zhang) -----------------------------------------

SKETCHES = ("srht", "countsketch", "gaussian", "ams")
_DENSE_LIMIT = 2 ** 27   # entries of a dense s x d sketch matrix init accepts (512 MiB of float32)


def _hadamard_np(n: int) -> np.ndarray:
    i = np.arange(n)
    return ((-1.0) ** np.bitwise_count(i[:, None] & i[None, :])).astype(np.float32)


def fwht(x: jax.Array, block_bits: int = 7) -> jax.Array:
    """Unnormalized fast Walsh-Hadamard transform over the last axis (a power of two): ``x @ H``,
    ``H_ij = (-1)^popcount(i & j)`` (Sylvester order).

    H_n is the Kronecker product of small Hadamard matrices, so the transform is a few passes that
    each multiply one group of up to ``block_bits`` index bits by a dense +-1 matrix of side up to
    128 (float32, HIGHEST precision), instead of log2(n) butterfly passes over memory.
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"fwht: length must be a power of two, got {n}")
    lead = x.shape[:-1]
    bits_left = n.bit_length() - 1
    lo = 1                                  # product of the sizes of the index bits already done
    while bits_left:
        b = min(block_bits, bits_left)
        m = 1 << b
        hi = n // (lo * m)
        y = x.reshape(lead + (hi, m, lo))
        y = jnp.einsum("...amc,mk->...akc", y, jnp.asarray(_hadamard_np(m)), precision=_HIGHEST)
        x = y.reshape(lead + (n,))
        lo *= m
        bits_left -= b
    return x


def _block_bits() -> int:
    """``fwht``'s block size for the sketches: 4 index bits (16 x 16 factors) on the CPU, where the
    transform is bound by multiply-adds (2^b per entry per pass: 160 for 2^20 entries instead of
    640 with 7, measured ~1.5x faster), 7 elsewhere (fewer passes over memory). The results differ
    only by float rounding (the +-1 sums are grouped differently)."""
    return 4 if jax.default_backend() == "cpu" else 7


def _pow2(d: int) -> int:
    return 1 << max(0, (int(d) - 1).bit_length())


def projection_draws(sketch: str, seed: int, step, d: int, s: int) -> dict:
    """The shared randomness of step ``step``'s R_t (identical on every worker for the same step).

    srht: ``signs`` [d] (+-1, the diagonal D on the unpadded part), ``rows`` [s] in [0, d') (P);
    countsketch: ``buckets`` [d] in [0, s), ``signs`` [d] -- hashed from (seed, step);
    gaussian / ams: ``matrix`` [s, d] from ``jax.random`` with key ``fold_in(key(seed), step)``.
    """
    if sketch in ("srht", "countsketch"):
        word = stream_word(seed, step)
        signs = jnp.where(hash_words(stream_word(word, 1), d) >> 31, 1.0, -1.0).astype(jnp.float32)
        h = hash_words(stream_word(word, 2), d if sketch == "countsketch" else s)
        if sketch == "countsketch":
            return {"signs": signs, "buckets": (h % jnp.uint32(s)).astype(jnp.int32)}
        log2 = _pow2(d).bit_length() - 1     # a uniform row of the padded d' = 2^log2: the top log2 bits
        rows = (h >> (32 - log2)) if log2 else jnp.zeros_like(h)
        return {"signs": signs, "rows": rows.astype(jnp.int32)}
    key = jax.random.fold_in(jax.random.key(seed), step)
    if sketch == "gaussian":
        return {"matrix": jax.random.normal(key, (s, d), jnp.float32) / jnp.sqrt(jnp.float32(s))}
    if sketch == "ams":
        signs = jnp.where(jax.random.bernoulli(key, 0.5, (s, d)), 1.0, -1.0).astype(jnp.float32)
        return {"matrix": signs / jnp.sqrt(jnp.float32(s))}
    raise ValueError(f"sketch must be one of {', '.join(SKETCHES)}, got {sketch!r}")


def project(sketch: str, draws: dict, v: jax.Array, s: int) -> jax.Array:
    """sk(v) = R v  [s]."""
    d = v.shape[0]
    if sketch == "srht":    # R v = sqrt(d'/s) (H_orth D v)[rows] = (H D v)[rows] / sqrt(s)
        y = fwht(jnp.pad(draws["signs"] * v, (0, _pow2(d) - d)), _block_bits())
        return y[draws["rows"]] / jnp.sqrt(jnp.float32(s))
    if sketch == "countsketch":
        return jax.ops.segment_sum(draws["signs"] * v, draws["buckets"], num_segments=s)
    return jnp.dot(draws["matrix"], v, precision=_HIGHEST)


def deproject(sketch: str, draws: dict, m: jax.Array, d: int) -> jax.Array:
    """desk(m) = R^T m  [d]."""
    s = m.shape[0]
    if sketch == "srht":    # R^T m = D H P^T m / sqrt(s)  (H symmetric), then drop the padding
        z = jnp.zeros((_pow2(d),), jnp.float32).at[draws["rows"]].add(m)
        return draws["signs"] * fwht(z, _block_bits())[:d] / jnp.sqrt(jnp.float32(s))
    if sketch == "countsketch":
        return draws["signs"] * m[draws["buckets"]]
    return jnp.dot(m, draws["matrix"], precision=_HIGHEST)


class StepCounter(NamedTuple):
    step: jax.Array   # int32: which R_t this step uses; advanced by aggregate


def sketch_project(ratio: float | None = None, size: int | None = None, sketch: str = "srht",
                   seed: int = 0) -> Compressor:
    """Random-projection sketch: send R_t g (s floats), de-sketch the mean with R_t^T (unbiased).

    Args:
      ratio: s / d, in (0, 1] (s = ceil(ratio d), at least 1). Default 0.1 when neither is given.
      size: s itself (a positive integer). Give at most one of ratio, size.
      sketch: "srht" (default), "countsketch", "gaussian" or "ams" (module docstring).
      seed: the shared randomness; R_t uses ``fold_in(key(seed), t)`` with t the server's counter.
    """
    if ratio is not None and size is not None:
        raise ValueError("sketch_project: give at most one of ratio (s/d) or size (s)")
    if ratio is None and size is None:
        ratio = 0.1
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"sketch_project: ratio must be in (0, 1], got {ratio}")
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"sketch_project: size must be a positive integer, got {size}")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch_project: sketch must be one of {', '.join(SKETCHES)}, got {sketch!r}")
    if int(seed) != seed:
        raise ValueError(f"sketch_project: seed must be an integer, got {seed}")
    exact_ratio = Fraction(repr(float(ratio))) if ratio is not None else None
    seed = int(seed)

    def s_of(d: int) -> int:
        return int(size) if size is not None else max(1, math.ceil(exact_ratio * d))

    def draws(server_state: StepCounter, d: int):
        return projection_draws(sketch, seed, server_state.step, d, s_of(d))

    def init(params):
        d = sum(_sizes(params))
        if sketch in ("gaussian", "ams") and s_of(d) * d > _DENSE_LIMIT:
            raise ValueError(f"sketch_project: a dense {sketch} sketch would form a {s_of(d)} x {d} matrix; "
                             f"use sketch='srht' or 'countsketch' for a model this size")
        return (), StepCounter(jnp.zeros((), jnp.int32))

    def encode(key, grads, worker_state, server_state):
        del key
        lay = layout_of(grads)
        d = lay.d
        return SketchMessage(project(sketch, draws(server_state, d), _flatten(grads), s_of(d)), lay), worker_state

    def decode(payload: SketchMessage, server_state):
        d = payload.layout.d
        return payload.layout.unflatten(deproject(sketch, draws(server_state, d), payload.values, d))

    def aggregate(payloads: SketchMessage, server_state: StepCounter, weights=None):
        d = payloads.layout.d
        mean = tree.wmean(payloads.values, weights)
        est = deproject(sketch, draws(server_state, d), mean, d)
        return payloads.layout.unflatten(est), StepCounter(server_state.step + 1)

    def payload_bits(params) -> int:
        return wire.stream_bits([(s_of(sum(_sizes(params))), 32)])

    def down_bits(params, n) -> int:
        return wire.stream_bits([(s_of(sum(_sizes(params))), 32)])

    def pack(payload: SketchMessage) -> bytes:
        return wire.pack_fields([wire.float_bits(np.asarray(payload.values, np.float32))])

    def unpack(data: bytes, params):
        s = s_of(sum(_sizes(params)))
        (u,) = wire.unpack_fields(data, [(s, 32)])
        return SketchMessage(jnp.asarray(wire.bits_float(u, np.float32)), layout_of(params))

    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="unbiased", summable=True, linear_exact=False), down_bits=down_bits)


COMPRESSORS = {"fetchsgd": fetchsgd, "sketch_project": sketch_project}
DESCRIPTIONS = {
    "fetchsgd": "count sketch of the gradient, momentum and error accumulated in sketch space on the server, "
                "top-k of the unsketched error (Rothchild et al., ICML 2020)",
    "sketch_project": "random projection R_t g with shared fresh R_t (SRHT / count-sketch / Gaussian / AMS), "
                      "de-sketched by R_t^T, unbiased (Song, Wang, Yu & Zhang, ICML 2023)",
}
