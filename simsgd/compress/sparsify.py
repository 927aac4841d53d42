"""Sparsifiers: layer-wise top-k, random-k with a shared seed, and hard-threshold sparsification.

All three keep, in each leaf (layer) of d entries, a subset S of its entries and zero the rest:
``C(g)_j = s * g_j if j in S else 0`` (``s = 1`` except for unbiased random-k, ``s = d/k``).

- ``topk`` (Aji & Heafield 2017; Stich, Cordonnier & Jaggi 2018): S = the k entries of largest |g|.
  Contractive: ``||C(g) - g||^2 <= (1 - k/d) ||g||^2`` per leaf; biased, so pair it with error
  feedback. Wire: per leaf k values (leaf dtype) then k indices at ``ceil(log2 d)`` bits.
- ``randk`` (research/compressors.md §1.3): S = a uniformly random k-subset drawn from a key SHARED
  by all workers (a step counter in the server state), so supports coincide, payloads are summable
  (all-reduce) and only the k values travel: the receiver regenerates S.
- ``threshold`` (Strom 2015; Sahu et al., NeurIPS 2021, "hard-threshold sparsifier"): S = {j : |g_j|
  >= tau}. The message length varies: per leaf a count header, then that many values and indices.

Selection never needs a full sort of a large leaf: ``select_top`` finds the k largest keys with a
threshold estimated from a random sample (as DGC does, research/compressors.md §3.1), a fixed-capacity
candidate gather and ``top_k`` over the candidates only; a bisection on the keys' bit patterns
repairs a bad sample estimate, so the result is always identical to ``lax.top_k`` (see there).

Payloads of top-k and threshold have different supports on different workers, so they are not
summable: all-gather or a parameter server, then a scatter-add (research/compressors.md §1.2).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props

# Aji & Heafield (EMNLP 2017, abstract): "we map the 99% smallest updates (by absolute value) to zero".
DEFAULT_RATIO = 0.01
# Sahu et al. (NeurIPS 2021), reference code sands-lab/rethinking-sparsification cnn-lstm/run.sh:
# lambda = 1 / (2 sqrt(k_min)) with k_min = 0.1% of ResNet-18's 11,173,962 parameters = 4.73e-3.
DEFAULT_TAU = 4.73e-3
METHODS = ("auto", "exact", "sampled")
# "auto" uses the sampled selection for leaves of at least this many entries (when k <= d / 32).
AUTO_MIN_SIZE = 1 << 16


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "indices"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class SparseLeaf:
    """One leaf's sparse message: ``values`` [k] (leaf dtype) at flat ``indices`` [k] int32.

    ``shape`` (the dense leaf's shape) is static pytree metadata, not data: it is known to both
    sides and never sent. Stacked over workers, values and indices are [N, k].
    """
    values: jax.Array
    indices: jax.Array
    shape: tuple


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "indices", "count"],
                   meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class ThresholdLeaf:
    """One leaf's variable-length message in a fixed-capacity buffer of d slots.

    The first ``count`` (int32 scalar) slots hold the kept entries in position order; the other
    slots hold value 0 at index d (out of range: dropped by the scatter). Only the first ``count``
    entries go on the wire.
    """
    values: jax.Array
    indices: jax.Array
    count: jax.Array
    shape: tuple


def _is_sparse(x) -> bool:
    return isinstance(x, (SparseLeaf, ThresholdLeaf))


def index_bits(size: int) -> int:
    """Bits of one flat index into a leaf of ``size`` entries: ``max(1, ceil(log2 size))``."""
    return max(1, (int(size) - 1).bit_length())


def count_bits(size: int) -> int:
    """Bits of a count in ``0..size``: ``ceil(log2(size + 1))`` (at least 1)."""
    return max(1, int(size).bit_length())


def _scatter(values, indices, size):
    return jnp.zeros((size,), values.dtype).at[indices].add(values, mode="drop")


def _check_ratio_k(name, ratio, k):
    if ratio is not None and not 0 < ratio <= 1:
        raise ValueError(f"{name}: ratio must be in (0, 1], got {ratio}")
    if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
        raise ValueError(f"{name}: k must be a positive integer, got {k}")


def _k_of(ratio, k):
    """Per-leaf k: ``min(k, d)``, or ``max(1, ceil(ratio d))`` with ceil on the decimal ratio."""
    exact_ratio = Fraction(repr(float(ratio))) if ratio is not None else None

    def k_of(size: int) -> int:
        if k is not None:
            return min(int(k), size)
        return min(size, max(1, math.ceil(exact_ratio * size)))
    return k_of


# ---- selection of the k largest keys without a full sort --------------------------------------

_PREFIX_BLOCK = 16


def prefix_count(mask) -> jax.Array:
    """Inclusive prefix count of a boolean (or 0/1 integer) vector, int32: ``jnp.cumsum``.

    On the CPU, ``cumsum`` (a full-window reduce-window) costs about five memory passes; there the
    count runs in blocks of 16 instead (unrolled running sums inside each block, the block totals
    counted the same way recursively, then the block offsets added), about 1.6x faster, same
    integers."""
    x = jnp.asarray(mask).astype(jnp.int32)
    if jax.default_backend() != "cpu":
        return jnp.cumsum(x)
    return _blocked_prefix(x)


def _blocked_prefix(x):
    d, b = x.shape[0], _PREFIX_BLOCK
    if d <= b:
        return jnp.cumsum(x)
    nb = -(-d // b)
    xb = jnp.pad(x, (0, nb * b - d)).reshape(nb, b)
    acc = xb[:, 0]
    runs = [acc]
    for j in range(1, b):
        acc = acc + xb[:, j]
        runs.append(acc)
    inner = jnp.stack(runs, axis=1)
    total = inner[:, -1]
    return (inner + (_blocked_prefix(total) - total)[:, None]).reshape(-1)[:d]


def _place(target, size: int, fill: int):
    """``out[target[j]] = j`` into ``size`` slots filled with ``fill`` (targets >= size dropped)."""
    d = target.shape[0]
    return jnp.full((size,), fill, jnp.int32).at[target].set(jnp.arange(d, dtype=jnp.int32), mode="drop")


def loop_under_vmap_on_cpu(f):
    """``f`` (positional array arguments, a pytree of arrays out) that, on the CPU, runs one call per
    batch element (``lax.map``) when vmapped, unbatched arguments passed whole; on other backends
    ``f`` itself (vmap batches it as usual). For scatters: XLA:CPU runs a batched scatter about 3x
    slower than the same scatters one by one (measured: placing [16, 10^6] positions, 95 ms vs
    29 ms). The results are the same arrays either way."""
    if jax.default_backend() != "cpu":
        return f

    @jax.custom_batching.custom_vmap
    def g(*args):
        return f(*args)

    @g.def_vmap
    def _(axis_size, in_batched, *args):
        del axis_size
        if not any(in_batched):
            out = g(*args)
            return out, jax.tree.map(lambda _: False, out)

        def one(batched):
            it = iter(batched)
            return g(*[next(it) if b else a for a, b in zip(args, in_batched)])
        out = jax.lax.map(one, [a for a, b in zip(args, in_batched) if b])
        return out, jax.tree.map(lambda _: True, out)

    return g


def place_positions(target, size: int, fill: int):
    """``out[target[j]] = j`` into ``size`` slots filled with ``fill`` (targets >= size dropped);
    one scatter per worker on the CPU (``loop_under_vmap_on_cpu``)."""
    return loop_under_vmap_on_cpu(lambda t: _place(t, size, fill))(target)


def _first_true(mask, size: int, fill: int):
    """Positions of the first ``size`` True entries of ``mask`` in increasing order (int32 [size]),
    padded with ``fill``: a prefix count and a scatter, O(d), no sort."""
    pos = prefix_count(mask) - 1
    target = jnp.where(mask & (pos < size), pos, size)
    return place_positions(target, size, fill)


def kth_key(keys, k):
    """The k-th largest of non-negative int32 ``keys`` [d] (``k`` may be traced, 1 <= k <= d): the
    largest t with #{keys >= t} >= k, bit by bit from the top, 31 counting passes over ``keys``."""
    def body(i, t):
        cand = t | jnp.left_shift(jnp.int32(1), 30 - i)
        return jnp.where(jnp.sum(keys >= cand, dtype=jnp.int32) >= k, cand, t)
    return jax.lax.fori_loop(0, 31, body, jnp.int32(0))


def _first_k_at_least(keys, t, k: int, fill: int = 0):
    """Positions (int32 [k], increasing) of the keys above ``t`` and then of the first keys equal to
    it, k in all, given that t is the k-th largest key (padded with ``fill`` if fewer)."""
    above, ties = keys > t, keys == t
    need = k - jnp.sum(above, dtype=jnp.int32)
    take = above | (ties & (prefix_count(ties) <= need))
    return _first_true(take, k, fill)


# topk_ascending samples a bracket of the threshold for leaves of at least this many entries
ASCENDING_SAMPLED_MIN = 1 << 14


def _ascending_plan(d: int, k: int, sample: int | None = None) -> tuple[int, int, int, int]:
    """(sample size s, sample ranks r_hi < r_lo counted from the largest, band capacity C) of
    ``topk_ascending``: s = min(d, 2^14) evenly spaced keys; with q = k/d the count of samples
    above the k-th largest key is about s q +- sqrt(s q (1 - q)), so ranks 5 standard deviations
    either side bracket it (a miss, probability ~1e-6 per side, only costs the exact fallback); the
    band between the two thresholds holds about (r_lo - r_hi) d / s entries, C is twice that."""
    s = min(d, 1 << 14) if sample is None else min(d, max(1, int(sample)))
    mu = s * k / d
    sd = math.sqrt(max(mu * (1 - k / d), 1.0))
    r_hi = max(0, math.floor(mu - 5 * sd))
    r_lo = min(s, math.ceil(mu + 5 * sd) + 1)
    cap = min(d, 2 * math.ceil((r_lo - r_hi) * d / s) + 64)
    return s, r_hi, r_lo, cap


def _bracketed_kth(keys, k: int, sample: int | None = None):
    """Steps 1-3 of ``topk_ascending`` on int32 keys >= 0 (1 <= k < d): ``(t, ok, cand, ck)``, t the
    k-th largest key when ``ok`` (the bracket held), ``cand`` the candidate positions (increasing,
    padded with d) and ``ck`` their keys (padded with -1), k + C of them."""
    d = keys.shape[0]
    s, r_hi, r_lo, cap = _ascending_plan(d, k, sample)
    stride = d // s
    # sample order statistics (keys above +inf, NaN patterns, clipped to it: only speed depends on them)
    top = jax.lax.top_k(_as_float(jnp.minimum(keys[:s * stride:stride], 0x7F800000)), r_lo)[0]
    t_lo = jax.lax.bitcast_convert_type(top[r_lo - 1], jnp.int32)
    t_hi = jax.lax.bitcast_convert_type(top[r_hi - 1], jnp.int32) if r_hi >= 1 else jnp.int32(2 ** 31 - 1)
    kc = min(d, k + cap)
    is_cand = keys >= t_lo
    pos = prefix_count(is_cand) - 1
    c_lo = pos[-1] + 1
    cand = place_positions(jnp.where(is_cand & (pos < kc), pos, kc), kc, d)   # increasing positions
    ck = jnp.where(cand < d, keys[jnp.minimum(cand, d - 1)], -1)
    c_hi = jnp.sum(ck >= t_hi, dtype=jnp.int32)       # all of #{key >= t_hi} when c_lo <= kc
    ok = (c_lo >= k) & (c_lo <= kc) & (c_hi < k) & (c_lo - c_hi <= cap)
    band = _first_true((ck >= 0) & (ck < t_hi), cap, kc)
    bk = jnp.where(band < kc, ck[jnp.minimum(band, kc - 1)], -1)
    return kth_key(bk, k - c_hi), ok, cand, ck


def kth_largest_key(keys, k: int):
    """The k-th largest of int32 ``keys`` >= 0 (1-D, static 1 <= k <= d), exactly: on leaves of at
    least ``ASCENDING_SAMPLED_MIN`` entries bracketed from a sample and found in the band (one
    compaction pass), else (or when the bracket misses) by 31 counting passes (``kth_key``)."""
    d = keys.shape[0]
    if d < ASCENDING_SAMPLED_MIN or k >= d:
        return kth_key(keys, k)
    t, ok, _, _ = _bracketed_kth(keys, int(k))
    return run_unless(ok, lambda x: kth_key(x, k), t, keys)


def topk_ascending(score, k: int, sample: int | None = None):
    """Flat indices (int32 [k], increasing) of the ``k`` entries of largest ``|score|`` (1-D); ties at
    the k-th value go to the lowest indices. Exact, and no sort of the vector.

    Small leaves (under ``ASCENDING_SAMPLED_MIN`` entries, unless ``sample`` is given): the k-th
    largest key (bit pattern of |score|) by 31 counting passes (``kth_key``), then a prefix-count
    compaction. Large leaves: one pass over the leaf instead of 33:
    1. two thresholds t_lo <= t_hi from order statistics of an evenly spaced sample
       (``_ascending_plan``);
    2. one compaction of the candidates, key >= t_lo, in position order into k + C slots; its prefix
       count gives c_lo = #{key >= t_lo}, and (when c_lo fits) the candidates give
       c_hi = #{key >= t_hi}; the bracket holds if c_hi < k <= c_lo and c_lo - c_hi <= C;
    3. the k-th largest key is then the (k - c_hi)-th largest of the band t_lo <= key < t_hi (at
       most C entries): 31 counting passes over the band only;
    4. among the candidates, those above it and the first ties, compacted (prefix counts over k + C).
    A sample whose bracket misses takes the small-leaf path instead (``run_unless``: only when some
    input, under vmap some worker, needs it), so the result is always exact.
    """
    d = score.shape[0]
    k = int(k)
    if not 1 <= k <= d:
        raise ValueError(f"topk_ascending: k must be in 1..{d}, got {k}")
    if k == d:
        return jnp.arange(d, dtype=jnp.int32)
    keys = score_keys(score)

    def exact(keys):
        return _first_k_at_least(keys, kth_key(keys, k), k)

    if d < ASCENDING_SAMPLED_MIN and sample is None:
        return exact(keys)
    t, ok, cand, ck = _bracketed_kth(keys, k, sample)
    fast = cand[jnp.minimum(_first_k_at_least(ck, t, k), cand.shape[0] - 1)]
    return run_unless(ok, exact, fast, keys)


def score_keys(score):
    """The int32 keys ``topk_ascending`` orders ``score`` by: the bit patterns of |score| (float32)."""
    return jax.lax.bitcast_convert_type(jnp.abs(score).astype(jnp.float32), jnp.int32)


def run_unless(done, f, out, x):
    """``out`` where ``done``, else ``f(x)`` (same shape and dtype as ``out``), computed only when
    needed: a while loop of 0 or 1 rounds. Under vmap a ``lax.cond`` becomes a select that always
    runs both branches; the batched loop runs ``f`` (for every input) only if some input needs it.
    ``x`` travels in the loop state and is perturbed by a select XLA cannot fold, so ``f(x)`` is not
    loop-invariant and cannot be hoisted out of the loop (where it would always run)."""
    def body(c):
        _, _, x = c
        return jnp.asarray(True), f(x), jax.tree.map(lambda a: jnp.where(done, a, a + 1), x)
    return jax.lax.while_loop(lambda c: ~c[0], body, (done, out, x))[1]


def _sample_plan(d: int, k: int) -> tuple[int, int]:
    """(capacity C, sample size s) of the sampled selection: C = 4k candidates (at most d), and
    enough samples that about 256 of them lie above a threshold with 2k entries of the leaf above
    it. ``select_top`` aims the threshold at (k + C)/2 entries (2.5k), i.e. about 320 sampled ones;
    the count above it then has a relative error of about 1/18, well inside the [k, C] window
    that needs no repair."""
    capacity = min(d, 4 * k)
    m = min(d, 2 * k)
    s = min(d, max(1024, math.ceil(256 * d / m)))
    return capacity, s


def select_top(keys, k: int, key, capacity: int | None = None, sample: int | None = None):
    """Indices (int32 [k]) of the k largest of ``keys`` (uint32 [d], every key < 0x7F800000, the bit
    patterns of non-negative finite float32 numbers), in the order
    ``jax.lax.top_k`` gives them: by key descending, ties by lower position first.

    1. Estimate a threshold t from ``sample`` keys drawn at random positions (DGC §3 samples 1% and
       takes the top of the sample; here the sample size comes from ``_sample_plan``).
    2. If the count f(t) = #{keys >= t} is in [k, capacity], done. Otherwise bisect t on the key
       values (bit patterns), keeping f(lo) >= k > f(hi), until f(t) lands in the window or
       hi = lo + 1; then t = lo is exactly the k-th largest key and more than ``capacity`` keys tie
       with it. This loop is the repair for a bad sample; it runs at most 31 passes over the leaf.
    3. Gather the positions with key >= t (at most ``capacity`` of them; prefix sums, no sort) --
       after a tie exit, the first ``capacity`` with key > t and the first k with key == t -- and
       take ``top_k`` over these candidates only.
    Exact whenever k <= d: every entry with key > t is a candidate (there are at most f(t) <=
    capacity of them, or fewer than k in the tie case), and among entries with key == t the
    lowest-position ones are, so the k largest (with lax.top_k's tie rule) are all candidates; ties
    keep their position order inside each candidate group.
    """
    d = keys.shape[0]
    plan_c, plan_s = _sample_plan(d, k)
    capacity = plan_c if capacity is None else min(d, max(int(capacity), k))
    s = plan_s if sample is None else min(d, max(1, int(sample)))
    m = min(d, (k + capacity) // 2)
    r = min(s, max(1, round(s * m / d)))

    def f(t):
        return jnp.sum((keys >= t).astype(jnp.int32))

    picks = jax.random.randint(key, (s,), 0, d)
    t0 = jax.lax.bitcast_convert_type(jax.lax.top_k(_as_float(keys[picks]), r)[0][-1], jnp.uint32)
    c0 = f(t0)
    ok0 = (c0 >= k) & (c0 <= capacity)
    lo = jnp.where(c0 > capacity, t0, jnp.uint32(0))
    hi = jnp.where(c0 < k, t0, jnp.uint32(1 << 31))

    def cond(state):
        lo, hi, _, done = state
        return ~done & (hi - lo > 1)

    def body(state):
        lo, hi, t, _ = state
        mid = lo + (hi - lo) // 2
        c = f(mid)
        good = (c >= k) & (c <= capacity)
        return jnp.where(c > capacity, mid, lo), jnp.where(c < k, mid, hi), jnp.where(good, mid, t), good

    lo, _, t, done = jax.lax.while_loop(cond, body, (lo, hi, t0, ok0))
    t = jnp.where(done, t, lo)
    # done: the f(t) <= capacity keys >= t in one compaction (position order keeps top_k's tie order
    # among equal keys). Tie exit: those above t and the first k equal to it, two compactions, run
    # only when some input (worker) needs them.
    cand = jnp.concatenate([_first_true(keys >= t, capacity, d), jnp.full((k,), d, jnp.int32)])
    cand = run_unless(done, lambda x: jnp.concatenate([_first_true(x > t, capacity, d), _first_true(x == t, k, d)]),
                      cand, keys)
    cand_keys = jnp.where(cand < d, _as_float(keys[jnp.minimum(cand, d - 1)]), -1.0)
    _, slot = jax.lax.top_k(cand_keys, k)
    return cand[slot]


def _as_float(keys):
    """Keys below 0x7F800000 viewed as the non-negative finite float32 numbers with these bit
    patterns: the same order, and ``lax.top_k`` on float32 is a fast partial sort on CPU (on int32
    it is a full sort)."""
    return jax.lax.bitcast_convert_type(keys, jnp.float32)


def magnitude_keys(x):
    """uint32 keys ordering entries by |x|: the bit pattern of |x| as float32 (monotone for
    non-negative floats; below 0x7F800000 for finite x)."""
    return jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)


# on the CPU, "auto" samples only from this k up (below it the partial sort is faster)
AUTO_MIN_K_CPU = 1 << 14


def _use_sampled(method: str, d: int, k: int) -> bool:
    """"auto": the sampled selection for leaves of at least 2**16 entries with k <= d/32 -- on the
    CPU only for k >= 2**14: there ``lax.top_k`` is a partial sort, faster for small k (measured,
    [16, 10^6]: k = 10^4 159 ms vs 212 ms sampled; k = 3 10^4 379 vs 292; one 25M leaf with
    k = 2.5 10^5: 700 vs 390 ms per worker). Both give the same indices."""
    if method == "auto":
        big = d >= AUTO_MIN_SIZE and 32 * k <= d
        return big and (jax.default_backend() != "cpu" or k >= AUTO_MIN_K_CPU)
    return method == "sampled"


def _check_method(name, method):
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {', '.join(METHODS)}, got {method!r}")


# ---- shared pieces of the sparse (value, index) formats ---------------------------------------

def _sparse_aggregate(payloads, weights):
    """(Weighted) mean of the decoded sparse payloads [N, ...]: one scatter-add of all N messages."""
    def leaf(p):
        n, size = p.values.shape[0], math.prod(p.shape)
        if weights is None:
            vals = p.values
        else:
            w = (weights / jnp.sum(weights)).astype(p.values.dtype)
            vals = w.reshape((n,) + (1,) * (p.values.ndim - 1)) * p.values
        dense = _scatter(vals.reshape(-1), p.indices.reshape(-1), size)
        if weights is None:
            dense = dense / n
        return dense.reshape(p.shape)
    return jax.tree.map(leaf, payloads, is_leaf=_is_sparse)


def _sparse_decode(payload):
    return jax.tree.map(lambda p: _scatter(p.values, p.indices, math.prod(p.shape)).reshape(p.shape),
                        payload, is_leaf=_is_sparse)


def _value_bits(x) -> int:
    return jnp.dtype(x.dtype).itemsize * 8


# ---- top-k --------------------------------------------------------------------------------------

def topk(ratio: float | None = None, k: int | None = None, method: str = "auto") -> Compressor:
    """Layer-wise top-k: per leaf ``k_leaf = min(k, d)`` if ``k`` is given, else ``max(1, ceil(ratio d))``.

    Args:
      ratio: fraction of each leaf's entries to keep, in (0, 1] (``ceil`` is taken on the decimal
        value of ``ratio``, so ``ratio=0.1, d=30`` keeps exactly 3).
      k: entries to keep per leaf (capped at the leaf's size). Give exactly one of ``ratio``, ``k``
        (the registry's ``topk``, ``topk_default``, falls back to ratio 0.01 when neither is given).
      method: "exact" (``lax.top_k`` over the whole leaf, a sort), "sampled" (``select_top``: sampled
        threshold, fixed-capacity candidate gather, top-k over the candidates), or "auto" (sampled
        for leaves of at least 2**16 entries with k <= d/32, on the CPU only when also k >= 2**14,
        where ``lax.top_k`` is a fast partial sort for smaller k; exact otherwise). All three return
        the same payload, bit for bit, for finite gradients (with NaNs the order is unspecified).

    Props: kind "contractive" (alpha = k_leaf / d per leaf), not summable.

    Wire format (one bit stream for the whole tree, leaves in ``jax.tree.leaves`` order, see
    ``payload.py``): per leaf, the k values in the leaf's own dtype (float32: 32 bits each), then
    the k flat row-major indices at ``ceil(log2 d)`` bits each (at least 1). No header: k and d are
    static. ``payload_bits = 8 * ceil(sum_leaf k (b_value + b_index) / 8)``.

    References: Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017;
    Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018.
    """
    if (ratio is None) == (k is None):
        raise ValueError("topk: give exactly one of ratio (fraction kept per leaf) or k (entries kept per leaf)")
    _check_ratio_k("topk", ratio, k)
    _check_method("topk", method)
    k_of = _k_of(ratio, k)

    def init(params):
        del params
        return (), ()

    def encode_leaf(key, g):
        flat = g.reshape(-1)
        kk = k_of(flat.size)
        if _use_sampled(method, flat.size, kk):
            idx = select_top(magnitude_keys(flat), kk, key)
        else:
            _, idx = jax.lax.top_k(jnp.abs(flat), kk)
        return SparseLeaf(flat[idx], idx.astype(jnp.int32), tuple(g.shape))

    def encode(key, grads, worker_state, server_state):
        del server_state
        leaves, treedef = jax.tree.flatten(grads)
        out = [encode_leaf(jax.random.fold_in(key, i), g) for i, g in enumerate(leaves)]
        return jax.tree.unflatten(treedef, out), worker_state

    def decode(payload, server_state):
        del server_state
        return _sparse_decode(payload)

    def aggregate(payloads, server_state, weights=None):
        return _sparse_aggregate(payloads, weights), server_state

    def specs(params):
        out = []
        for x in jax.tree.leaves(params):
            size = math.prod(x.shape)
            kk = k_of(size)
            out += [(kk, _value_bits(x)), (kk, index_bits(size))]
        return out

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        fields = []
        for p in jax.tree.leaves(payload, is_leaf=_is_sparse):
            fields += [wire.float_bits(np.asarray(p.values)),
                       (np.asarray(p.indices).astype(np.uint64), index_bits(math.prod(p.shape)))]
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, specs(params))
        out = [SparseLeaf(wire.bits_float(fields[2 * i], x.dtype), fields[2 * i + 1].astype(np.int32), tuple(x.shape))
               for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="contractive", summable=False, linear_exact=False))


def topk_default(ratio: float | None = None, k: int | None = None, method: str = "auto") -> Compressor:
    """The registry's ``topk``: ``topk`` itself, except that with neither ``ratio`` nor ``k`` it keeps
    ratio 0.01 per leaf (Aji & Heafield 2017: "the 99% smallest updates ... to zero"), so that the
    factory constructs with no arguments. ``topk()`` called directly still asks for one of them."""
    if ratio is None and k is None:
        ratio = DEFAULT_RATIO
    return topk(ratio=ratio, k=k, method=method)


# ---- random-k with a shared seed ------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["values"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class RandkLeaf:
    """One leaf's random-k message: the k values [k] (leaf dtype) at the shared support; ``shape``
    (static metadata, never sent) is the dense leaf's shape."""
    values: jax.Array
    shape: tuple


def randk_draws(seed: int, step, sizes):
    """The shared random keys of random-k at server step ``step``: per leaf of ``sizes[i]`` entries,
    that many iid uniform 29-bit integers plus 2**23 (uint32: the bit patterns of normal positive
    float32 numbers, see ``select_top``) from ``fold_in(fold_in(key(seed), step), i)``.
    The leaf's support is the positions of the k largest (ties: lower position first), which is a
    uniformly random k-subset."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    return [(jax.random.bits(jax.random.fold_in(base, i), (int(d),), jnp.uint32) >> 3) + jnp.uint32(1 << 23)
            for i, d in enumerate(sizes)]


def randk(ratio: float | None = None, k: int | None = None, unbiased: bool = False, seed: int = 0) -> Compressor:
    """Random-k with a shared seed: ``C(g) = s * g * 1_S``, S a uniformly random k-subset of each leaf,
    the same on every worker at a given step; ``s = d/k`` when ``unbiased`` else 1.

    Args:
      ratio / k: as ``topk`` (at most one; neither: ratio 0.01, the same density as the topk
        default so the two compare at equal density).
      unbiased: scale by d/k: ``E[C(g)] = g`` and ``E||C(g) - g||^2 = (d/k - 1) ||g||^2`` (omega =
        d/k - 1). Unscaled (default, the PowerSGD paper code's ``RandomSparseReducer``, used with
        error feedback) it is contractive in expectation with alpha = k/d. Do not combine the
        scaling with error feedback (research/compressors.md §1.3).
      seed: the shared seed. Step t's subset comes from ``randk_draws(seed, t, sizes)``; the step
        counter t (int32) is the server state, advanced by ``aggregate``.

    Wire format: per leaf the k values ``g[S]`` in the leaf's dtype, in the order of S; no indices
    (the receiver regenerates S from the seed and the step), no header. ``payload_bits = 8 *
    ceil(sum_leaf k b_value / 8)``; a parameter server replies with the same k averaged values
    (``down_bits == payload_bits``). Props: summable (same support and scale on every worker: an
    all-reduce of the k values); linear in the workers' inputs at a fixed step.

    S is drawn as the k largest of d iid uniform keys, selected by ``select_top`` for large leaves
    (no full sort); equal 29-bit keys at the k-th place are broken by position, a deviation from
    exact uniformity with probability about d / 2**29 per leaf and step.

    References: research/compressors.md §1.3; grace ``randomk.py`` (seed from the tensor name and the
    global step, values only on the wire); Vogels, Karimireddy & Jaggi, NeurIPS 2019, paper code
    ``RandomSparseReducer``; Stich, Cordonnier & Jaggi, NeurIPS 2018 (rand-k with memory).
    """
    if ratio is not None and k is not None:
        raise ValueError("randk: give at most one of ratio (fraction kept per leaf) or k (entries kept per leaf)")
    if ratio is None and k is None:
        ratio = DEFAULT_RATIO
    _check_ratio_k("randk", ratio, k)
    if not isinstance(unbiased, (bool, np.bool_)):
        raise ValueError(f"randk: unbiased must be true or false, got {unbiased!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 31:
        raise ValueError(f"randk: seed must be an integer in [0, 2**31), got {seed!r}")
    seed = int(seed)
    k_of = _k_of(ratio, k)

    def support(step, sizes):
        out = []
        for i, (d, keys) in enumerate(zip(sizes, randk_draws(seed, step, sizes))):
            kk = k_of(d)
            if _use_sampled("auto", d, kk):
                sel_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), (1 << 20) + i)
                out.append(select_top(keys, kk, sel_key))
            else:
                out.append(jax.lax.top_k(_as_float(keys), kk)[1].astype(jnp.int32))
        return out

    def init(params):
        del params
        return (), jnp.zeros((), jnp.int32)

    def encode(key, grads, worker_state, server_state):
        del key
        leaves, treedef = jax.tree.flatten(grads)
        idx = support(server_state, [g.size for g in leaves])
        out = [RandkLeaf(g.reshape(-1)[i], tuple(g.shape)) for g, i in zip(leaves, idx)]
        return jax.tree.unflatten(treedef, out), worker_state

    def expand(payload, step):
        leaves, treedef = jax.tree.flatten(payload, is_leaf=_is_randk)
        idx = support(step, [math.prod(p.shape) for p in leaves])
        out = []
        for p, i in zip(leaves, idx):
            d, kk = math.prod(p.shape), p.values.shape[-1]
            dense = jnp.zeros((d,), p.values.dtype).at[i].set(p.values)
            if unbiased:
                dense = (dense * (d / kk)).astype(p.values.dtype)
            out.append(dense.reshape(p.shape))
        return jax.tree.unflatten(treedef, out)

    def decode(payload, server_state):
        return expand(payload, server_state)

    def aggregate(payloads, server_state, weights=None):
        mean = jax.tree.map(lambda v: tree.wmean(v, weights).astype(v.dtype), payloads)
        return expand(mean, server_state), server_state + 1

    def specs(params):
        return [(k_of(math.prod(x.shape)), _value_bits(x)) for x in jax.tree.leaves(params)]

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        return wire.pack_fields([wire.float_bits(np.asarray(p.values))
                                 for p in jax.tree.leaves(payload, is_leaf=_is_randk)])

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, specs(params))
        return jax.tree.unflatten(treedef, [RandkLeaf(wire.bits_float(f, x.dtype), tuple(x.shape))
                                            for f, x in zip(fields, leaves)])

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="unbiased" if unbiased else "contractive", summable=True, linear_exact=False),
                      down_bits=lambda params, n: payload_bits(params))


def _is_randk(x) -> bool:
    return isinstance(x, RandkLeaf)


# ---- hard threshold ---------------------------------------------------------------------------------

def threshold(tau: float = DEFAULT_TAU) -> Compressor:
    """Hard-threshold sparsification: per leaf send ``{(j, g_j) : |g_j| >= tau}``, a variable number.

    Args:
      tau: the threshold, > 0 and finite. Default 4.73e-3: Sahu et al.'s lambda = 1/(2 sqrt(k_min))
        for ResNet-18 on CIFAR-10 with k_min = 0.1% of its parameters (reference code ``run.sh``).

    ``C(g)_j = g_j 1{|g_j| >= tau}``: deterministic and biased; not contractive (with every |g_j| <
    tau nothing is sent), but its error is absolutely bounded, ``||C(g) - g||^2 <= d tau^2``
    ("absolute compressor", Sahu et al. 2021). Use it with error feedback, as the paper does.

    Wire format (variable length, one bit stream, see ``payload.py``): first a header of one count
    per leaf, ``n_leaf`` at ``ceil(log2(d + 1))`` bits; then per leaf the ``n_leaf`` kept values in
    the leaf's dtype, in position order, then their ``n_leaf`` flat indices at ``ceil(log2 d)`` bits.
    ``message_bytes = ceil(sum_leaf (b_count + n_leaf (b_value + b_index)) / 8)``; ``payload_bits``
    is the largest message (every entry kept). Deviation from the reference code (grace
    ``threshold.py``, Sahu et al.'s ``ThreshReducer``: int64 positions and no header, the length
    travelling as a tensor size): tight fixed-width indices and an explicit count.

    References: N. Strom, "Scalable Distributed DNN Training Using Commodity GPU Cloud Computing",
    Interspeech 2015 (threshold with residuals; Strom sends +-tau, here the values are exact);
    Sahu, Dutta, Abdelmoniem, Banerjee, Canini & Kalnis, "Rethinking gradient sparsification as
    total error minimization", NeurIPS 2021.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (0 < tau < math.inf):
        raise ValueError(f"threshold: tau must be a finite number > 0, got {tau!r}")
    tau = float(tau)
    # the smallest float32 >= tau: for float32 (and narrower, upcast) |g|, |g| >= tau <=> |g| >= tau32
    tau32 = np.float32(tau)
    if float(tau32) < tau:
        tau32 = np.nextafter(tau32, np.float32(np.inf))
    tau32 = float(tau32)

    def init(params):
        del params
        return (), ()

    def encode_leaf(g):
        flat = g.reshape(-1)
        d = flat.size
        mask = jnp.abs(flat.astype(jnp.float32)) >= jnp.float32(tau32)
        idx = _first_true(mask, d, d)
        vals = jnp.where(idx < d, flat[jnp.minimum(idx, d - 1)], jnp.zeros((), flat.dtype))
        return ThresholdLeaf(vals, idx, jnp.sum(mask.astype(jnp.int32)), tuple(g.shape))

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        return jax.tree.map(encode_leaf, grads), worker_state

    def decode(payload, server_state):
        del server_state
        return _sparse_decode(payload)

    def aggregate(payloads, server_state, weights=None):
        return _sparse_aggregate(payloads, weights), server_state

    def message_bytes(payload):
        bits = jnp.int32(0)
        for p in jax.tree.leaves(payload, is_leaf=_is_sparse):
            d = math.prod(p.shape)
            bits = bits + count_bits(d) + p.count.astype(jnp.int32) * (_value_bits(p.values) + index_bits(d))
        return (bits + 7) // 8

    def header_specs(params):
        return [(1, count_bits(math.prod(x.shape))) for x in jax.tree.leaves(params)]

    def body_specs(params, counts):
        out = []
        for x, n in zip(jax.tree.leaves(params), counts):
            out += [(int(n), _value_bits(x)), (int(n), index_bits(math.prod(x.shape)))]
        return out

    def payload_bits(params) -> int:
        sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
        return wire.stream_bits(header_specs(params) + body_specs(params, sizes))

    def pack(payload) -> bytes:
        leaves = jax.tree.leaves(payload, is_leaf=_is_sparse)
        counts = [int(p.count) for p in leaves]
        fields = [(np.array([n], np.uint64), count_bits(math.prod(p.shape))) for p, n in zip(leaves, counts)]
        for p, n in zip(leaves, counts):
            fields += [wire.float_bits(np.asarray(p.values)[:n]),
                       (np.asarray(p.indices)[:n].astype(np.uint64), index_bits(math.prod(p.shape)))]
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        head = header_specs(params)
        counts = [int(c[0]) for c in wire.unpack_fields(data[:wire.stream_bits(head) // 8], head)]
        fields = wire.unpack_fields(data, head + body_specs(params, counts))[len(head):]
        out = []
        for i, (x, n) in enumerate(zip(leaves, counts)):
            d = math.prod(x.shape)
            vals = np.zeros((d,), x.dtype)
            idx = np.full((d,), d, np.int32)
            vals[:n] = wire.bits_float(fields[2 * i], x.dtype)
            idx[:n] = fields[2 * i + 1].astype(np.int32)
            out.append(ThresholdLeaf(vals, idx, np.int32(n), tuple(x.shape)))
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=False, linear_exact=False), message_bytes=message_bytes)


COMPRESSORS = {"topk": topk_default, "randk": randk, "threshold": threshold}
DESCRIPTIONS = {
    "topk": "layer-wise top-k by magnitude, values + ceil(log2 d)-bit indices "
            "(Aji & Heafield 2017; Stich, Cordonnier & Jaggi, NeurIPS 2018)",
    "randk": "layer-wise random-k with a shared seed: k values, no indices, all-reduce; optional d/k scaling "
             "(Stich, Cordonnier & Jaggi, NeurIPS 2018; Vogels et al., NeurIPS 2019 baselines)",
    "threshold": "hard-threshold sparsifier |g| >= tau, variable length with a count per leaf "
                 "(Strom, Interspeech 2015; Sahu et al., NeurIPS 2021)",
}
