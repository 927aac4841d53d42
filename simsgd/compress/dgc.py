"""Deep Gradient Compression (Lin, Han, Mao, Wang & Dally, ICLR 2018), as its reference code runs it.

Per worker i and leaf (layer), at step t (non-Nesterov form; research/compressors.md §3.1):

    g  <- clip(g)                      local clipping of the whole tree's norm to clip_norm / sqrt(N)  (paper §3.2)
    u  <- m u + g                      momentum correction: accumulate the velocity ...      (paper §3.1)
    v  <- v + u                        ... not the raw gradient
    S  =  {j : |v_j| >= thr}           thr estimated from a strided sample of |v| (below)
    send (S, v[S]);  u[S] <- 0;  v[S] <- 0      momentum factor masking (paper §3.3)

Nesterov (reference README): ``u <- m (u + g); v <- v + u + g``. The aggregate is the mean of the
sparse decodes (all-gather, scatter-add, x 1/N); it already holds the momentum, so the outer
optimizer is plain SGD (``replaces_optimizer``). Weight decay (the reference's ``DGCSGD`` gives it its
own momentum buffer) is not part of the compressor.

Threshold by sampling, as ``DGCCompressor._sparsify`` (synxlin/deep-gradient-compression
``dgc/compression.py``) does it, for a leaf of d entries at density rho:
  * k = ceil(rho d) entries are to be sent. If d <= ceil(2 / rho) the "sample" is the whole leaf
    (stride 1). Otherwise the stride is ``ceil(d / M / 32) * 32 + 1`` with
    ``M = max(ceil(sample_ratio d), ceil(2 / rho))``, lowered by 8 until ``d // stride >= M``; the
    samples are ``|v|[start::stride]`` from a random start in ``[0, stride)`` (per worker key).
  * thr = the ceil(rho * (d // stride))-th largest sample; select ``|v| >= thr``.
  * Adaptation (sampled leaves only, up to ``max_adaptation_iters`` rounds): more than
    ``upper_bound * k`` selected -> exact top-k among the selected (``resample``; here: the exact
    k-th largest |v| among the selected, gathered by the same compaction that collects the
    entries to send, with room for 16 k of them; with more selected, the k-th largest of the leaf
    from a sampled bracket, ``sparsify.kth_largest_key``; no sort) and stop; between k and
    ``upper_bound * k`` -> stop; fewer than ``lower_bound * k`` -> ``thr *= lower_bound`` and
    count again.
  * Send the first k selected entries in position order (``indices[:num_selects]``), or all of
    them when fewer were selected.
Like the reference, leaves with ndim <= 1 (biases, norms) are not compressed when ``dense_1d``:
they go dense with momentum ``u <- m u + g`` (the reference applies it after the all-reduce; it is
linear, so applying it per worker before averaging is the same), and a density of 1 sends every
leaf that way, i.e. momentum SGD.

Warm-up (paper §3.4): the density falls exponentially over ``warmup_steps`` steps split into four
equal phases, 1/4, 1/16, 1/64, 1/256 (sparsity 75%, 93.75%, 98.4375%, 99.6%), then ``ratio``
(99.9% by default); each phase's density is ``max(4^-j, ratio)``. The step counter lives in the
worker state. Every phase's sampling plan is static; the phase is picked at run time.

Wire format (one bit stream, see ``payload.py``): a header of one uint32 count per compressed leaf
(the all-gather exchanges every message's length), then per leaf in ``jax.tree.leaves`` order:
compressed leaves their ``count`` values in the leaf dtype followed by their ``count`` flat indices
at ``index_width`` bits (int32 by default, as the reference's ``int32_indices`` option and its
CIFAR recipe send; ``int64`` is the reference's code default, ``log2`` is ``ceil(log2 d)``); dense
leaves all d values. Messages vary in length (``message_bytes``); ``payload_bits`` is the largest:
every compressed leaf at the capacity of the densest phase.

Deviations: clipping rescales the whole tree's norm (Pascanu et al., as the paper describes it;
the reference's ``clip_grad.py`` clips per tensor). Top-k ties at the threshold are broken by
position. ``ceil`` is taken on the decimal value of ``ratio`` (``ratio=0.1, d=30`` keeps 3).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props
from simsgd.compress.sparsify import kth_largest_key, place_positions, prefix_count, run_unless

WARMUP_PHASES = 4                 # densities 4^-1 .. 4^-4 during warm-up, then the final ratio
INDEX_WIDTHS = ("int32", "int64", "log2")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "indices", "count"],
                   meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class DGCLeaf:
    """One compressed leaf: ``values`` [K] and flat ``indices`` [K] int32, of which the first ``count``
    are sent (the rest are zero padding up to the capacity K of the densest phase)."""
    values: jax.Array
    indices: jax.Array
    count: jax.Array
    shape: tuple


def _is_leaf(x) -> bool:
    return isinstance(x, DGCLeaf)


class DGCState(NamedTuple):
    momentum: Any    # u, like the grads
    velocity: Any    # v (accumulated velocity), like the grads; unused (zero) on dense leaves
    step: jax.Array  # int32: encodes done so far (drives the warm-up schedule)


class Plan(NamedTuple):
    """Static sampling plan of one leaf at one density (``DGCCompressor.initialize``)."""
    k: int            # entries to send (num_selects)
    num_samples: int
    stride: int
    k_samples: int    # top-k of the samples whose minimum is the threshold
    adapt: bool       # d > num_samples: the threshold is an estimate, adapt it
    above: int        # nnz > above  <=>  nnz > upper_bound * k
    below: int        # nnz < below  <=>  nnz < lower_bound * k


def plan(size: int, density: Fraction, sample_ratio: Fraction, upper_bound: float, lower_bound: float) -> Plan:
    """The reference's static plan for a leaf of ``size`` entries at ``density`` (exact arithmetic)."""
    k = max(1, math.ceil(size * density))
    if sample_ratio < 1:
        pct, cpr = math.ceil(size * sample_ratio), math.ceil(2 / density)
        if size <= cpr:
            stride, num = 1, size
        else:
            want = max(pct, cpr)
            stride = math.ceil(Fraction(size, want) / 32) * 32 + 1
            num = size // stride
            while num < want:
                stride -= 8
                num = size // stride
    else:
        stride, num = 1, size
    k_samples = math.ceil(num * density)
    up, low = Fraction(repr(float(upper_bound))) * k, Fraction(repr(float(lower_bound))) * k
    return Plan(k, num, stride, k_samples, size > num, math.floor(up), math.ceil(low))


def densities(ratio: float, warmup_steps: int) -> list[Fraction]:
    """The schedule's densities: ``[max(4^-1, r), ..., max(4^-4, r), r]`` with warm-up, else ``[r]``."""
    r = Fraction(repr(float(ratio)))
    if warmup_steps <= 0 or r >= 1:
        return [r]
    return [max(Fraction(1, 4 ** (j + 1)), r) for j in range(WARMUP_PHASES)] + [r]


def phase_of(step, warmup_steps: int):
    """Index into ``densities``: phase ``floor(4 step / warmup_steps)`` during warm-up, then the last."""
    if warmup_steps <= 0:
        return jnp.zeros((), jnp.int32)
    return jnp.minimum((4 * step) // warmup_steps, WARMUP_PHASES).astype(jnp.int32)


def sample_starts(key, strides):
    """Each leaf's random first sample, uniform in ``[0, stride)`` (the reference's
    ``random.randint(0, stride - 1)``): one draw of 32 random bits per leaf, modulo its stride."""
    strides = jnp.asarray(strides, jnp.uint32)
    return (jax.random.bits(key, strides.shape, jnp.uint32) % strides).astype(jnp.int32)


def index_bits_of(width: str, size: int) -> int:
    if width == "int32":
        return 32
    if width == "int64":
        return 64
    return max(1, (int(size) - 1).bit_length())


def _kth_largest(a, k):
    """Exact k-th largest entry of ``a`` >= 0 (float32), by bisection on its bit pattern: 32 counts."""
    bits = jax.lax.bitcast_convert_type(a, jnp.int32)

    def body(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits >= mid) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.int32(0x7F800001)))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _kth_largest_sampled(a, k, ks, phase):
    """``_kth_largest(a, k)`` for a phase-dependent k (one of the static ``ks``, picked by ``phase``):
    ``sparsify.kth_largest_key`` (bracketed from a sample, one compaction pass) per distinct k."""
    keys = jnp.minimum(jax.lax.bitcast_convert_type(a, jnp.int32), 0x7F800000)   # NaN counts as inf, as there
    ts = {kk: kth_largest_key(keys, kk) for kk in sorted(set(ks))}
    if len(ts) == 1:
        t = next(iter(ts.values()))
    else:
        t = jnp.stack([ts[kk] for kk in ks])[phase]
    return jax.lax.bitcast_convert_type(t, jnp.float32)


def dgc(ratio: float = 0.001, momentum: float = 0.9, nesterov: bool = False, momentum_masking: bool = True,
        warmup_steps: int = 0, sample_ratio: float = 0.01, upper_bound: float = 1.3, lower_bound: float = 0.8,
        max_adaptation_iters: int = 10, resample: bool = True, clip_norm: float = 0.0, workers: int = 1,
        dense_1d: bool = True, index_width: str = "int32") -> Compressor:
    """Deep Gradient Compression: momentum correction and masking, sampled threshold, warm-up, clipping.

    Args:
      ratio: final density rho in (0, 1] (0.001 = 99.9% sparsity, the paper's); 1 sends everything
        dense with momentum (momentum SGD), as the reference does for ``compress_ratio >= 1``.
      momentum: m in [0, 1) (0.9). nesterov: the reference's Nesterov form.
      momentum_masking: zero u where sent (paper §3.3; False is the reference's ``nm`` ablation).
      warmup_steps: length of the sparsity warm-up (the paper: 4 epochs); 0 = none.
      sample_ratio: fraction of |v| sampled for the threshold, in [0.01, 1] (the reference clamps it
        to at least 0.01); 1 = exact top-k.
      upper_bound, lower_bound, max_adaptation_iters, resample: the reference's threshold
        adaptation (1.3, 0.8, 10, True).
      clip_norm: the global clipping threshold (0 = no clipping, as in the paper's CNN runs); each
        worker clips its gradient tree's norm to ``clip_norm / sqrt(workers)`` (paper §3.2).
      workers: N, only used to scale ``clip_norm``.
      dense_1d: leaves with ndim <= 1 go dense (the reference compresses only ``dim() > 1``).
      index_width: "int32" (default), "int64" (the reference's default wire type) or "log2".
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"dgc: ratio must be in (0, 1], got {ratio}")
    if not 0 <= momentum < 1:
        raise ValueError(f"dgc: momentum must be in [0, 1), got {momentum}")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise ValueError(f"dgc: warmup_steps must be a non-negative integer, got {warmup_steps}")
    if not 0.01 <= sample_ratio <= 1:
        raise ValueError(f"dgc: sample_ratio must be in [0.01, 1] (the reference clamps it there), got {sample_ratio}")
    if not upper_bound >= 1:
        raise ValueError(f"dgc: upper_bound must be >= 1, got {upper_bound}")
    if not 0 < lower_bound <= 1:
        raise ValueError(f"dgc: lower_bound must be in (0, 1], got {lower_bound}")
    if int(max_adaptation_iters) != max_adaptation_iters or max_adaptation_iters < 0:
        raise ValueError(f"dgc: max_adaptation_iters must be a non-negative integer, got {max_adaptation_iters}")
    if not clip_norm >= 0:
        raise ValueError(f"dgc: clip_norm must be >= 0 (0 = no clipping), got {clip_norm}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"dgc: workers must be a positive integer, got {workers}")
    if index_width not in INDEX_WIDTHS:
        raise ValueError(f"dgc: index_width must be one of {', '.join(INDEX_WIDTHS)}, got {index_width!r}")
    warmup_steps, max_iters = int(warmup_steps), int(max_adaptation_iters)
    rhos = densities(ratio, warmup_steps)
    sample_frac = Fraction(repr(float(sample_ratio)))
    local_clip = float(clip_norm) / math.sqrt(int(workers))

    def is_sparse(shape) -> bool:
        return rhos[-1] < 1 and not (dense_1d and len(shape) <= 1)

    @functools.lru_cache(maxsize=None)
    def plans(size: int) -> tuple[Plan, ...]:
        return tuple(plan(size, r, sample_frac, upper_bound, lower_bound) for r in rhos)

    def capacity(size: int) -> int:
        return max(p.k for p in plans(size))

    def init(params):
        z = tree.zeros_like(params)
        return DGCState(z, tree.zeros_like(params), jnp.zeros((), jnp.int32)), ()

    def select(start, v, phase, size):
        """Indices (capacity K, position order) and count of the entries of flat ``v`` to send."""
        ps = plans(size)
        K = max(p.k for p in ps)

        def pick(field):       # this phase's value of a plan field (a constant when there is one phase)
            vals = [int(getattr(p, field)) for p in ps]
            return vals[0] if len(set(vals)) == 1 else jnp.asarray(vals, jnp.int32)[phase]

        k, stride, k_s, adapt, above, below = (pick(f) for f in ("k", "stride", "k_samples", "adapt", "above", "below"))
        a = jnp.abs(v).astype(jnp.float32)
        sampled = any(p.adapt for p in ps)          # static: some phase samples (else all are exact)
        if sampled:
            # the sample: |v|[start::stride] (the whole leaf when not adapting), padded with -1
            # (below every |v|) up to the largest plan's count
            adapt = jnp.asarray(adapt, bool)
            n_cap = min(size, max(p.num_samples for p in ps) + 1)
            pos = jnp.where(adapt, start, 0) + stride * jnp.arange(n_cap, dtype=jnp.int32)
            samples = jnp.where(pos < size, a[jnp.minimum(pos, size - 1)], -1.0)
        else:
            samples = a
        top = jax.lax.top_k(samples, max(p.k_samples for p in ps))[0]
        thr = top[k_s - 1]
        res = jnp.asarray(False)
        if sampled and max_iters > 0:
            count = lambda t: jnp.sum(a >= t, dtype=jnp.int32)  # noqa: E731

            def cond(c):
                i, _, _, done, _ = c
                return (i < max_iters) & ~done

            def body(c):
                i, t, nnz, _, res = c
                too_many = nnz > above
                if resample:
                    res = too_many
                    t_new = jnp.where(nnz < below, t * jnp.float32(lower_bound), t)
                    stop = nnz >= below
                else:
                    t_new = jnp.where(too_many, t * jnp.float32(upper_bound),
                                      jnp.where(nnz < below, t * jnp.float32(lower_bound), t))
                    stop = (nnz > k) & ~too_many | (nnz <= k) & (nnz >= below)
                nnz = jnp.where(stop, nnz, count(t_new))
                return i + 1, t_new, nnz, stop, res

            init = (jnp.int32(0), thr, count(thr), ~adapt, jnp.asarray(False))
            _, thr, _, _, res = jax.lax.while_loop(cond, body, init)
        exact = resample and sampled and max_iters > 0    # static: a resample may be asked for

        def first_k(mask, fill):
            """The first K positions of ``mask`` (fill-padded) and how many entries it holds."""
            pos = prefix_count(mask) - 1
            return place_positions(jnp.where(mask & (pos < K), pos, K), K, fill), pos[-1] + 1

        # one compaction of |v| >= thr in position order, into K slots -- or, when a resample may
        # follow, into cap = 4K slots, so that the exact k-th largest (the resample) can be taken
        # among the candidates instead of by 32 counting passes over the leaf
        cap = min(size, 16 * K) if exact else K
        mask = a >= thr
        pos = prefix_count(mask) - 1
        nnz = pos[-1] + 1
        cand = place_positions(jnp.where(mask & (pos < cap), pos, cap), cap, size)
        if not exact:
            idx = jnp.where(cand < size, cand, 0)
            sent = jnp.minimum(nnz, k)
        else:
            cv = jnp.where(cand < size, a[jnp.minimum(cand, size - 1)], -1.0)
            thr = jnp.where(res, _kth_largest(cv, k), thr)   # every |v| >= it is a candidate if nnz <= cap
            slot, cnt = first_k(cv >= thr, cap)
            idx = jnp.where(slot < cap, cand[jnp.minimum(slot, cap - 1)], 0)
            sent = jnp.minimum(cnt, k)

            def full(a):     # more than cap candidates: the k-th largest of the whole leaf
                t = _kth_largest_sampled(a, k, [p.k for p in ps], phase)
                i, c = first_k(a >= t, 0)
                return i, jnp.minimum(c, k), t
            idx, sent, thr = run_unless(~res | (nnz <= cap), full, (idx, sent, thr), a)
        return idx, sent

    def encode(key, grads, worker_state: DGCState, server_state):
        del server_state
        if local_clip > 0:
            norm = jnp.sqrt(tree.sq_norm(grads))
            coef = jnp.minimum(1.0, local_clip / (norm + 1e-6))
            grads = tree.scale(coef, grads)
        phase = phase_of(worker_state.step, warmup_steps)
        g_l, treedef = jax.tree.flatten(grads)
        strides = jnp.asarray([[p.stride for p in plans(math.prod(g.shape))] for g in g_l], jnp.int32)
        starts = sample_starts(key, strides[:, phase]) if g_l else None
        u_l, v_l = jax.tree.leaves(worker_state.momentum), jax.tree.leaves(worker_state.velocity)
        out, us, vs = [], [], []
        for i, (g, u, v) in enumerate(zip(g_l, u_l, v_l)):
            if nesterov:
                u = momentum * (u + g)
            else:
                u = momentum * u + g
            if not is_sparse(g.shape):
                out.append(u + g if nesterov else u)
                us.append(u)
                vs.append(v)
                continue
            v = v + u + g if nesterov else v + u
            size = math.prod(g.shape)
            idx, sent = select(starts[i], v.reshape(-1), phase, size)
            K = idx.shape[0]
            valid = jnp.arange(K) < sent
            flat = v.reshape(-1)
            values = jnp.where(valid, flat[idx], jnp.zeros((), flat.dtype))
            idx = jnp.where(valid, idx, 0)
            drop = jnp.where(valid, idx, size)           # index `size` is out of range: dropped
            v = flat.at[drop].set(0, mode="drop").reshape(g.shape)
            if momentum_masking:
                u = u.reshape(-1).at[drop].set(0, mode="drop").reshape(g.shape)
            out.append(DGCLeaf(values, idx, sent, tuple(g.shape)))
            us.append(u)
            vs.append(v)
        state = DGCState(jax.tree.unflatten(treedef, us), jax.tree.unflatten(treedef, vs), worker_state.step + 1)
        return jax.tree.unflatten(treedef, out), state

    def decode(payload, server_state):
        del server_state

        def leaf(p):
            if not _is_leaf(p):
                return p
            size = math.prod(p.shape)
            return jnp.zeros((size,), p.values.dtype).at[p.indices].add(p.values).reshape(p.shape)
        return jax.tree.map(leaf, payload, is_leaf=_is_leaf)

    def aggregate(payloads, server_state, weights=None):
        def leaf(p):
            if not _is_leaf(p):
                return tree.wmean({"x": p}, weights)["x"].astype(p.dtype)
            n, size = p.values.shape[0], math.prod(p.shape)
            w = jnp.full((n,), 1.0 / n) if weights is None else weights / jnp.sum(weights)
            vals = (w[:, None].astype(p.values.dtype) * p.values).reshape(-1)
            return jnp.zeros((size,), p.values.dtype).at[p.indices.reshape(-1)].add(vals).reshape(p.shape)
        return jax.tree.map(leaf, payloads, is_leaf=_is_leaf), server_state

    def leaf_bits(x):
        return jnp.dtype(x.dtype).itemsize * 8

    def payload_bits(params) -> int:
        fields = []
        for x in jax.tree.leaves(params):
            size = math.prod(x.shape)
            if is_sparse(x.shape):
                fields += [(1, 32), (capacity(size), leaf_bits(x) + index_bits_of(index_width, size))]
            else:
                fields.append((size, leaf_bits(x)))
        return wire.stream_bits(fields)

    def message_bytes(payload):
        whole, rem = 0, 0            # bytes and leftover bits, kept apart so that int32 does not overflow
        for p in jax.tree.leaves(payload, is_leaf=_is_leaf):
            if _is_leaf(p):
                w = jnp.dtype(p.values.dtype).itemsize * 8 + index_bits_of(index_width, math.prod(p.shape))
                whole = whole + 4 + p.count * (w // 8)
                rem = rem + p.count * (w % 8)
            else:
                whole = whole + p.size * p.dtype.itemsize
        return (jnp.asarray(whole, jnp.int32) + (jnp.asarray(rem, jnp.int32) + 7) // 8).astype(jnp.int32)

    def pack(payload) -> bytes:
        leaves = jax.tree.leaves(payload, is_leaf=_is_leaf)
        counts = [int(p.count) for p in leaves if _is_leaf(p)]
        fields = [(np.asarray(counts, np.uint32), 32)] if counts else []
        for p in leaves:
            if _is_leaf(p):
                c = int(p.count)
                fields += [wire.float_bits(np.asarray(p.values)[:c]),
                           (np.asarray(p.indices)[:c].astype(np.uint64), index_bits_of(index_width, math.prod(p.shape)))]
            else:
                fields.append(wire.float_bits(np.asarray(p)))
        return wire.pack_fields(fields)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        n_sparse = sum(is_sparse(x.shape) for x in leaves)
        counts = [int(c) for c in wire.unpack_fields(data[:4 * n_sparse], [(n_sparse, 32)])[0]] if n_sparse else []
        specs, it = [], iter(counts)
        for x in leaves:
            size = math.prod(x.shape)
            if is_sparse(x.shape):
                c = next(it)
                specs += [(c, leaf_bits(x)), (c, index_bits_of(index_width, size))]
            else:
                specs.append((size, leaf_bits(x)))
        fields = wire.unpack_fields(data[4 * n_sparse:], specs)
        out, f, it = [], 0, iter(counts)
        for x in leaves:
            size = math.prod(x.shape)
            if is_sparse(x.shape):
                c, K = next(it), capacity(size)
                vals = np.zeros(K, x.dtype)
                vals[:c] = wire.bits_float(fields[f], x.dtype)
                idx = np.zeros(K, np.int32)
                idx[:c] = fields[f + 1].astype(np.int32)
                out.append(DGCLeaf(vals, idx, np.int32(c), tuple(x.shape)))
                f += 2
            else:
                out.append(wire.bits_float(fields[f], x.dtype).reshape(x.shape))
                f += 1
        return jax.tree.unflatten(treedef, out)

    # jitted as a whole: called eagerly, the loops and scatters would each be dispatched on their own
    return Compressor(init, jax.jit(encode), jax.jit(decode), jax.jit(aggregate), payload_bits, pack, unpack,
                      Props(kind="biased", summable=False, linear_exact=False, replaces_optimizer=True),
                      message_bytes=jax.jit(message_bytes))


COMPRESSORS = {"dgc": dgc}
DESCRIPTIONS = {
    "dgc": "Deep Gradient Compression: momentum correction and factor masking, sampled top-k threshold, "
           "sparsity warm-up, local clipping (Lin et al., ICLR 2018)",
}
