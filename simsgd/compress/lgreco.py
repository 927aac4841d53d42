"""L-GreCo: layer-wise adaptive PowerSGD ranks chosen by a dynamic program (Alimohammadi, Markov,
Frantar & Alistarh, MLSys 2024; code LGrCo/L-GreCo ``ResNet50/image_classification/hooks/lgreco_hook.py``).

The base compressor is PowerSGD (``lowrank.powersgd``: two all-reduces, P then Q, error feedback,
warm start) run with a rank r_l per matrix. Every ``adjust_every`` steps the controller re-plans:

1. Worker 0 accumulates its error-corrected matrices over the last ``acc_steps`` steps of the window,
   A_l = sum (delta / acc_steps) M_l (a local statistic: no bytes).
2. For each layer and each candidate rank r in [floor(gamma r0), min(n, m, ceil(beta r0))] the error
   of the best rank-r approximation, err_l(r) = ||A_l - [A_l]_r||_F = sqrt(sum_{i > r} s_i^2) (the
   reference's "SVD" option; its default "Power" runs 5 power iterations toward the same value),
   and the size size_l(r) = r (n_l + m_l).
3. The knapsack   min sum_l size_l(r_l)   s.t.   sum_l err_l(r_l) <= alpha sum_l err_l(r0)
   (the budget set by the uniform rank r0; the errors are Frobenius norms, not squares), solved
   exactly after discretising each error to ceil(err / (budget / B)) (at least 1, B = 10000 buckets):
   DP_l[b] = min_r DP_{l-1}[b - e_l(r)] + size_l(r) = least size of layers 0..l with discretised
   error < b; the plan is the first b minimising DP_L[b], then backtracking.
4. The new ranks are adopted (broadcast by rank 0 in the reference) and every query Q is redrawn
   (N(0, 1), shared seed): the reference re-initialises P and Q at each adjustment.

Before ``start_iter`` (1000 in the reference hook) gradients are all-reduced dense with no error
feedback. Matrices with (n + m) r0 * min_compression_rate >= n m, and vectors, always go dense.

**Static shapes inside jit.** Each matrix keeps factors with r_max_l columns; a rank r_l < r_max_l
is a column mask (the query's columns >= r_l are zero). Gram-Schmidt with eps keeps zero columns
zero, so this is bit-for-bit rank-r_l PowerSGD. The DP runs inside the jitted ``aggregate`` under
``lax.cond`` only at re-plan steps: per layer a [K_l, B + 1] table (K_l candidate ranks), argmin
over candidates, then backtracking with traced indices. No host round-trip.

**Wire format (variable length).** A header of 1 bit (dense phase) and r_l per compressed matrix
in ``bit_length(r_max_l)`` bits (the count field of a variable-length message), then either every
leaf dense, or round 1 (per leaf in ``jax.tree.leaves`` order: P_l [n, r_l] or dense values) and
round 2 (Q_l [m, r_l] per compressed matrix). ``message_bytes`` prices each step as sent, and
``round_message_bytes`` splits it into the two sequential collectives (header, vectors and P's; Q's);
``payload_bits`` is the largest message. As in ``lowrank``, ``encode`` returns the worker's own
matrix with its round-1 factor (round 2 needs the all-reduced P^), and ``pack`` of one message
writes the lone-worker (N = 1) round 2.

Deviations: exact SVD errors instead of 5 power iterations from a random start; sizes in elements
(as the reference); the rank broadcast from worker 0 (a few bytes every ``adjust_every`` steps) is
not counted; vectors carry no error memory (PowerSGD paper code; the DDP hook's vector "memory"
is local minus mean, which sums to zero and so never changes the aggregate). Only PowerSGD ranks
are planned (the paper also plans top-k densities and quantisation widths).
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
from simsgd.compress.lowrank import _shared_normal, bits_of, from_matrix, gram_schmidt, matrix_shape, to_matrix

BIG = 2 ** 30   # "infinite" size in the DP (int32; real sizes are far below)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["first", "local", "rank"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class LGLocal:
    """One compressed matrix of a worker's message as ``encode`` returns it: the round-1 factor
    ``first`` [n, r_max] (columns >= rank are zero), the worker's matrix ``local`` [n, m] (never
    travels, except as the dense message before ``start_iter``), the rank in use (int32)."""
    first: jax.Array
    local: jax.Array
    rank: jax.Array
    shape: tuple


@functools.partial(jax.tree_util.register_dataclass, data_fields=["first", "second", "rank"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class LGWire:
    """One compressed matrix off the wire: round-1 [n, r_max] and round-2 [m, r_max] factors (zero
    columns beyond ``rank``)."""
    first: jax.Array
    second: jax.Array
    rank: jax.Array
    shape: tuple


@functools.partial(jax.tree_util.register_dataclass, data_fields=["leaves", "dense"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LGMsg:
    """A whole message: the per-leaf tree and the header's dense-phase flag (int32 0/1)."""
    leaves: object
    dense: jax.Array


def _is_lg(x) -> bool:
    return isinstance(x, (LGLocal, LGWire))


class LGLeafState(NamedTuple):
    """One compressed matrix: ``p_hat`` [n, r_max] and ``q_bar`` [m, r_max] of the last step (the
    EF memory is M_i - p_hat q_bar^T), ``query`` [m, r_max] the next round-1 Q (masked to ``rank``),
    ``acc`` [n, m] worker 0's accumulated matrix for the next plan, ``rank`` int32 (the next step's),
    ``sent`` int32 (the rank of the step just aggregated: sizes the server's answer)."""
    p_hat: jax.Array
    q_bar: jax.Array
    query: jax.Array
    acc: jax.Array
    rank: jax.Array
    sent: jax.Array


class LGState(NamedTuple):
    leaves: tuple       # LGLeafState per compressed matrix, () per dense leaf
    step: jax.Array     # int32, steps aggregated so far
    plans: jax.Array    # int32, re-plans done (selects the fresh queries)
    other_bytes: jax.Array   # int32, bytes of the leaves always sent dense (sizes the server's answer)


def lgreco_dp(errors, sizes, base, alpha: float = 1.0, buckets: int = 10000):
    """The L-GreCo dynamic program (jittable).

    Args:
      errors: per layer, an array [K_l] of the errors of its candidate options (float).
      sizes: per layer, a static sequence [K_l] of their sizes (ints).
      base: per layer, the static index of the uniform baseline option (the budget is
        ``alpha * sum_l errors[l][base[l]]``).
    Returns ``(choice [L] int32 option indices, feasible bool)``: the least total size whose
    discretised error sum stays below ``buckets`` buckets of ``budget / buckets`` each.
    """
    budget = alpha * sum(e[b] for e, b in zip(errors, base))
    width = budget / buckets
    ok = jnp.isfinite(budget) & (budget > 0)
    safe = jnp.where(ok, width, 1.0)
    disc = [jnp.clip(jnp.ceil(jnp.minimum(e, budget + 1) / safe), 1, buckets).astype(jnp.int32) for e in errors]
    b = jnp.arange(buckets + 1)
    pds, dp = [], None
    for e, s in zip(disc, sizes):
        s = jnp.asarray(s, jnp.int32)
        if dp is None:
            cand = jnp.where(b[None, :] > e[:, None], s[:, None], BIG)
        else:
            prev = dp[jnp.clip(b[None, :] - e[:, None], 0, buckets)]
            cand = jnp.where((b[None, :] >= e[:, None]) & (prev < BIG), prev + s[:, None], BIG)
        pds.append(jnp.argmin(cand, axis=0).astype(jnp.int32))
        dp = jnp.min(cand, axis=0)
    total = jnp.argmin(dp)
    feasible = ok & (dp[total] < BIG)
    choice = []
    for l in range(len(disc) - 1, -1, -1):
        j = pds[l][total]
        choice.append(j)
        total = total - disc[l][j]
    return jnp.stack(choice[::-1]), feasible


def svd_errors(a: jax.Array, ranks) -> jax.Array:
    """||A - [A]_r||_F for each static rank r in ``ranks`` (from the singular values)."""
    s = jnp.linalg.svd(a.astype(jnp.float32), compute_uv=False)
    tail = jnp.sqrt(jnp.concatenate([jnp.cumsum((s * s)[::-1])[::-1], jnp.zeros((1,), s.dtype)]))
    return tail[jnp.asarray(ranks)]


def lgreco(rank: int = 4, adjust_every: int = 100, start_iter: int = 1000, alpha: float = 1.0, beta: float = 2.0,
           gamma: float = 0.5, delta: float = 1e-2, acc_steps: int = 10, min_compression_rate: float = 2.0,
           buckets: int = 10000, seed: int = 0) -> Compressor:
    """L-GreCo over PowerSGD ranks.

    Args (defaults: the reference hook's ``PowerSGDState`` and ``ResNet18/lgreco.sh``):
      rank: the uniform base rank r0 that sets the error budget (4 in ``lgreco.sh``).
      adjust_every: steps between re-plans (hook default 100; the ResNet-18 script uses one epoch).
      start_iter: dense all-reduce steps before compression starts (1000).
      alpha: error budget factor (1). beta, gamma: candidate ranks floor(gamma r0) .. ceil(beta r0)
        (0.5, 2). delta: accumulation scale (1e-2; it cancels in the plan, kept for fidelity).
      acc_steps: the last steps of each window that are accumulated (10).
      min_compression_rate: matrices with (n + m) r0 * rate >= n m are sent dense (2).
      buckets: error discretisation of the DP (10000). seed: shared seed of the queries.
    """
    for name, v, lo in (("rank", rank, 1), ("adjust_every", adjust_every, 1), ("acc_steps", acc_steps, 1),
                        ("buckets", buckets, 1), ("start_iter", start_iter, 0)):
        if int(v) != v or v < lo:
            raise ValueError(f"lgreco: {name} must be an integer >= {lo}, got {v}")
    if acc_steps > adjust_every:
        raise ValueError(f"lgreco: acc_steps must be <= adjust_every ({adjust_every}), got {acc_steps}")
    if not alpha > 0:
        raise ValueError(f"lgreco: alpha must be positive, got {alpha}")
    if not beta >= 1:
        raise ValueError(f"lgreco: beta must be >= 1 (the largest candidate rank is ceil(beta * rank)), got {beta}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"lgreco: gamma must be in [0, 1] (the smallest candidate rank is floor(gamma * rank)), "
                         f"got {gamma}")
    if not delta > 0:
        raise ValueError(f"lgreco: delta must be positive, got {delta}")
    if not min_compression_rate >= 0:
        raise ValueError(f"lgreco: min_compression_rate must be >= 0, got {min_compression_rate}")
    rank, adjust_every, start_iter, acc_steps, buckets = map(int, (rank, adjust_every, start_iter, acc_steps, buckets))
    r_lo, r_hi = int(math.floor(gamma * rank)), int(math.ceil(beta * rank))

    def layer(shape):
        """Static plan of one leaf: None (dense) or (n, m, r_base, r_max, candidate ranks)."""
        mat = matrix_shape(shape)
        if mat is None:
            return None
        n, m = mat
        r_base = min(n, m, rank)
        if not (n + m) * r_base * min_compression_rate < n * m:
            return None
        r_max = min(n, m, r_hi)
        return n, m, r_base, r_max, tuple(range(min(r_lo, r_max), r_max + 1))

    def mask(r, r_max, dtype):
        return (jnp.arange(r_max) < r).astype(dtype)

    def init(params):
        ws, ss = [], []
        for i, x in enumerate(jax.tree.leaves(params)):
            lay = layer(x.shape)
            if lay is None:
                ws.append(())
                ss.append(())
                continue
            n, m, r_base, r_max, _ = lay
            q0 = _shared_normal(seed, i, 0, (m, r_max), x.dtype) * mask(r_base, r_max, x.dtype)
            ws.append(jnp.zeros((n, m), x.dtype))
            ss.append(LGLeafState(jnp.zeros((n, r_max), x.dtype), jnp.zeros((m, r_max), x.dtype), q0,
                                  jnp.zeros((n, m), x.dtype), jnp.asarray(r_base, jnp.int32),
                                  jnp.asarray(r_base, jnp.int32)))
        other = sum(math.prod(x.shape) * bits_of(x.dtype) // 8
                    for x in jax.tree.leaves(params) if layer(x.shape) is None)
        return tuple(ws), LGState(tuple(ss), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                                  jnp.asarray(other, jnp.int32))

    def encode(key, grads, worker_state, server_state):
        del key
        dense = server_state.step < start_iter
        leaves, treedef = jax.tree.flatten(grads)
        out, new_ws = [], []
        for i, g in enumerate(leaves):
            if layer(g.shape) is None:
                out.append(g)
                new_ws.append(())
                continue
            st = server_state.leaves[i]
            m_i = to_matrix(g) + (worker_state[i] - st.p_hat @ st.q_bar.T)
            out.append(LGLocal(m_i @ st.query, m_i, st.rank, tuple(g.shape)))
            new_ws.append(jnp.where(dense, jnp.zeros_like(m_i), m_i))      # no memory in the dense phase
        return LGMsg(jax.tree.unflatten(treedef, out), dense.astype(jnp.int32)), tuple(new_ws)

    def plan(leaf_states, plans, params_leaves):
        """Re-plan: SVD errors of the accumulated matrices, the DP, new ranks and fresh queries."""
        idx = [i for i, st in enumerate(leaf_states) if isinstance(st, LGLeafState)]
        lays = [layer(params_leaves[i].shape) for i in idx]
        errors = [svd_errors(leaf_states[i].acc, lay[4]) for i, lay in zip(idx, lays)]
        sizes = [tuple(r * (lay[0] + lay[1]) for r in lay[4]) for lay in lays]
        base = [lay[4].index(lay[2]) for lay in lays]
        choice, feasible = lgreco_dp(errors, sizes, base, alpha, buckets)
        out = list(leaf_states)
        for k, (i, lay) in enumerate(zip(idx, lays)):
            st = leaf_states[i]
            new_rank = jnp.where(feasible, jnp.asarray(lay[4], jnp.int32)[choice[k]], st.rank)
            dtype = st.query.dtype
            q = _shared_normal(seed, i, plans + 1, st.query.shape, dtype) * mask(new_rank, lay[3], dtype)
            out[i] = LGLeafState(st.p_hat, st.q_bar, q, jnp.zeros_like(st.acc), new_rank, st.sent)
        return tuple(out)

    def aggregate(payloads, server_state, weights=None):
        step = server_state.step
        dense = step < start_iter
        rel = step - start_iter
        in_window = (~dense) & (rel % adjust_every >= adjust_every - acc_steps)
        leaves = jax.tree.leaves(payloads.leaves, is_leaf=_is_lg)
        est, new = [], []
        for p, st in zip(leaves, server_state.leaves):
            if not isinstance(p, LGLocal):
                est.append(tree.wmean(p, weights))
                new.append(())
                continue
            p_hat = gram_schmidt(tree.wmean(p.first, weights))                       # round 1
            q_bar = tree.wmean(jnp.einsum("knm,nr->kmr", p.local, p_hat), weights)   # round 2
            dense_mean = tree.wmean(p.local, weights)
            est.append(from_matrix(jnp.where(dense, dense_mean, p_hat @ q_bar.T), p.shape))
            p_hat = jnp.where(dense, st.p_hat, p_hat)
            q_bar = jnp.where(dense, st.q_bar, q_bar)
            acc = st.acc + jnp.where(in_window, delta / acc_steps, 0.0).astype(st.acc.dtype) * p.local[0]
            new.append(LGLeafState(p_hat, q_bar, jnp.where(dense, st.query, q_bar), acc, st.rank, st.rank))
        new = tuple(new)
        do_plan = (~dense) & ((rel + 1) % adjust_every == 0)
        if any(isinstance(st, LGLeafState) for st in new):
            shapes = [jax.ShapeDtypeStruct(p.shape, p.first.dtype) if isinstance(p, LGLocal) else
                      jax.ShapeDtypeStruct(p.shape[1:], p.dtype) for p in leaves]
            new = jax.lax.cond(do_plan, lambda s: plan(s, server_state.plans, shapes), lambda s: s, new)
        out = jax.tree.unflatten(jax.tree.structure(payloads.leaves, is_leaf=_is_lg), est)
        return out, LGState(new, step + 1, server_state.plans + do_plan.astype(jnp.int32), server_state.other_bytes)

    def solo_second(first, local):
        return local.T @ gram_schmidt(first)

    def decode(payload, server_state):
        del server_state
        out = []
        for p in jax.tree.leaves(payload.leaves, is_leaf=_is_lg):
            if isinstance(p, LGLocal):
                est = gram_schmidt(p.first) @ solo_second(p.first, p.local).T
                out.append(from_matrix(jnp.where(payload.dense == 1, p.local, est), p.shape))
            elif isinstance(p, LGWire):
                out.append(from_matrix(gram_schmidt(p.first) @ p.second.T, p.shape))
            else:
                out.append(p)
        return jax.tree.unflatten(jax.tree.structure(payload.leaves, is_leaf=_is_lg), out)

    # ---- the wire ----

    def header_specs(params):
        return [(1, 1)] + [(1, max(1, layer(x.shape)[3].bit_length())) for x in jax.tree.leaves(params)
                           if layer(x.shape) is not None]

    def body_specs(params, dense, ranks):
        """Fields after the header; ``ranks`` per compressed matrix (in order)."""
        leaves = jax.tree.leaves(params)
        if dense:
            return [(math.prod(x.shape), bits_of(x.dtype)) for x in leaves]
        round1, round2, it = [], [], iter(ranks)
        for x in leaves:
            lay, b = layer(x.shape), bits_of(x.dtype)
            if lay is None:
                round1.append((math.prod(x.shape), b))
            else:
                r = int(next(it))
                round1.append((lay[0] * r, b))
                round2.append((lay[1] * r, b))
        return round1 + round2

    def payload_bits(params) -> int:
        head = sum(c * w for c, w in header_specs(params))
        dense = sum(c * w for c, w in body_specs(params, True, []))
        maxr = [layer(x.shape)[3] for x in jax.tree.leaves(params) if layer(x.shape) is not None]
        comp = sum(c * w for c, w in body_specs(params, False, maxr))
        return 8 * math.ceil((head + max(dense, comp)) / 8)

    def message_size(dense, matrices, other_bytes):
        """Bytes of a message: ``matrices`` = [(n, m, value bytes, r_max, rank)] per compressed matrix.

        Every value field is whole bytes, so the total is the body bytes + ceil(header bits / 8)."""
        head = 1 + sum(max(1, r_max.bit_length()) for _, _, _, r_max, _ in matrices)
        dense_bytes = sum(n * m * b for n, m, b, _, _ in matrices)
        comp_bytes = sum(r.astype(jnp.int32) * ((n + m) * b) for n, m, b, _, r in matrices)
        body = other_bytes + jnp.where(dense, dense_bytes, comp_bytes)
        return (body + (head + 7) // 8).astype(jnp.int32)

    def message_bytes(payload):
        matrices, other = [], 0
        for p in jax.tree.leaves(payload.leaves, is_leaf=_is_lg):
            if isinstance(p, (LGLocal, LGWire)):
                n, m = matrix_shape(p.shape)
                matrices.append((n, m, bits_of(p.first.dtype) // 8, p.first.shape[-1], jnp.asarray(p.rank)))
            else:
                other += math.prod(p.shape) * bits_of(p.dtype) // 8
        return message_size(payload.dense == 1, matrices, other)

    def round_message_bytes(payload):
        """[round 1, round 2] bytes: the header, vectors and P factors (or every leaf dense in the dense
        phase, one round only: round 2 is then 0 bytes), then the Q factors; sums to ``message_bytes``."""
        total = message_bytes(payload)
        second = jnp.int32(0)
        for p in jax.tree.leaves(payload.leaves, is_leaf=_is_lg):
            if isinstance(p, (LGLocal, LGWire)):
                m = matrix_shape(p.shape)[1]
                second = second + jnp.asarray(p.rank).astype(jnp.int32) * (m * (bits_of(p.first.dtype) // 8))
        second = jnp.where(payload.dense == 1, 0, second).astype(jnp.int32)
        return jnp.stack([total - second, second])

    def down_message_bytes(server_state):
        """The server's answer (same format) for the step just aggregated."""
        matrices = [(st.p_hat.shape[0], st.q_bar.shape[0], bits_of(st.p_hat.dtype) // 8, st.p_hat.shape[1], st.sent)
                    for st in server_state.leaves if isinstance(st, LGLeafState)]
        return message_size(server_state.step - 1 < start_iter, matrices, server_state.other_bytes)

    def pack(payload) -> bytes:
        dense = int(np.asarray(payload.dense))
        leaves = jax.tree.leaves(payload.leaves, is_leaf=_is_lg)
        header, body, round2 = [(np.array([dense], np.uint64), 1)], [], []
        for p in leaves:
            if not _is_lg(p):
                body.append(wire.float_bits(np.asarray(p)))
                continue
            r = int(np.asarray(p.rank))
            header.append((np.array([r], np.uint64), max(1, p.first.shape[-1].bit_length())))
            if dense:                                  # the leaf itself, row-major
                body.append(wire.float_bits(np.asarray(p.local).T.reshape(p.shape)))
                continue
            second = p.second if isinstance(p, LGWire) else solo_second(p.first, p.local)
            body.append(wire.float_bits(np.asarray(p.first)[:, :r]))
            round2.append(wire.float_bits(np.asarray(second)[:, :r]))
        return wire.pack_fields(header + body + round2)

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        head = header_specs(params)
        nbits = sum(w for _, w in head)
        bits = np.unpackbits(np.frombuffer(data[:math.ceil(nbits / 8)], np.uint8), bitorder="little")
        values, pos = [], 0
        for _, w in head:
            values.append(int(np.sum(bits[pos:pos + w].astype(np.uint64) << np.arange(w, dtype=np.uint64))))
            pos += w
        dense, ranks = values[0], values[1:]
        fields = wire.unpack_fields(data, head + body_specs(params, dense, ranks))[len(head):]
        n_round1 = len(leaves)
        out, j = [], 0
        for i, x in enumerate(leaves):
            lay = layer(x.shape)
            if lay is None or dense:
                out.append(wire.bits_float(fields[i], x.dtype).reshape(x.shape))
                continue
            n, m, _, r_max, _ = lay
            r = ranks[j]
            first = np.zeros((n, r_max), x.dtype)
            second = np.zeros((m, r_max), x.dtype)
            first[:, :r] = wire.bits_float(fields[i], x.dtype).reshape(n, r)
            second[:, :r] = wire.bits_float(fields[n_round1 + j], x.dtype).reshape(m, r)
            out.append(LGWire(first, second, np.int32(r), tuple(x.shape)))
            j += 1
        return LGMsg(jax.tree.unflatten(treedef, out), np.int32(dense))

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=True, linear_exact=False, aggregation="power_iteration"),
                      down_bits=lambda params, n: payload_bits(params), message_bytes=message_bytes,
                      down_message_bytes=down_message_bytes, round_message_bytes=round_message_bytes)


def lgreco_ranks(server_state) -> list[int]:
    """The ranks in use, one per compressed matrix (host side, for tests and logs)."""
    return [int(st.rank) for st in server_state.leaves if isinstance(st, LGLeafState)]


COMPRESSORS = {"lgreco": lgreco}
DESCRIPTIONS = {
    "lgreco": "PowerSGD with per-layer ranks re-planned every K steps by a dynamic program: least size "
              "within the uniform rank's error (Alimohammadi, Markov, Frantar & Alistarh, MLSys 2024)",
}
