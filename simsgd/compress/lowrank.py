"""Low-rank compressors: PowerSGD (Vogels, Karimireddy & Jaggi, NeurIPS 2019) and Dion (Ahn, Xu,
Abreu & Langford, arXiv 2504.05295, 2025).

Both send, for every matrix, two rank-r factors in two SEQUENTIAL all-reduces per step. PowerSGD
(paper Algorithm 1 with error feedback; epfml/powersgd ``paper-code/gradient_reducers.py::RankKReducer``):

    M_i = G_i + e_i                  (EF, gradient form; G_i viewed as [out, in], see ``matrix_shape``)
    round 1:  P_i = M_i Q;   P = mean_i P_i;   P^ = orth(P)      (Gram-Schmidt, col /= |col| + 1e-8)
    round 2:  Q_i = M_i^T P^;  Q = mean_i Q_i
    estimate  P^ Q^T (the same on every worker);   e_i <- M_i - P^ Q^T;   Q is the next step's warm start

Dion (data-parallel mode, ``replicate_mesh_grad_sync``; each worker keeps its own momentum):

    B_i = M_i + G_i;  round 1: P = mean_i B_i Q, P^ = QR(P).Q;  round 2: R = mean_i B_i^T P^
    M_i <- B_i - (1 - mu) P^ R^T;   Q <- R / (|R_col| + eps);   direction sqrt(fan_out/fan_in) P^ Q^T

**Why the payload carries the worker's own matrix.** simsgd's protocol is one ``encode`` per worker,
then one ``aggregate``. Round 2 needs each worker's private matrix M_i AND the all-reduced P^,
which exists only after every worker's round 1: no message a worker can form in ``encode`` suffices
(the server would need M_i^T P^ for a P^ it does not know yet, i.e. M_i itself). So ``encode``
returns ``LocalFactors(first=P_i, local=M_i)``: ``first`` is the real round-1 message and ``local``
never travels; it stands for the worker's memory, which ``aggregate`` uses only to compute exactly
what that worker sends in round 2 (``Q_i = M_i^T P^``, per worker), before averaging. The numerics
are the paper's to float precision, and the bits counted are exactly the two rounds:

    payload_bits = sum_matrices r (n + m) b  +  sum_vectors d b       (b = the leaf dtype's bits)

The message layout (``pack``): round 1 = per leaf in ``jax.tree.leaves`` order, P_i (n x r,
row-major) for a matrix or the dense values of a vector (ndim <= 1, all-reduced uncompressed as in
the reference); then round 2 = Q_i (m x r) per matrix. No header: shapes and ranks are static.
Because Q_i depends on the other workers' P's, ``pack`` of ONE message writes the round-2 factor a
lone worker (N = 1) sends, ``Q_i = M_i^T orth(P_i)``, and ``decode`` of one message is the N = 1
result; ``wire_rounds`` gives the exact per-worker bytes for N workers (tests check that they
rebuild ``aggregate``'s result). ``round_bits`` splits the message into its two rounds, so the
engine prices two collectives one after the other, each with its own latency, as the real system
runs them (``algorithms.base.compressor_exchange``).

Error feedback is exact but stored one step late: encode cannot know P^ Q^T yet, so the worker
state keeps M_i (as many floats as e_i) and the next encode forms e_i = M_i - P^ Q^T from the
factors kept in the server state. ``powersgd_error`` returns e_i for tests.
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

GS_EPS = 1e-8   # paper-code orthogonalize(): col /= (norm + 1e-8)


# ---- shared pieces -------------------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass, data_fields=["first", "local"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class LocalFactors:
    """One matrix leaf of a worker's message as ``encode`` returns it.

    first: the round-1 factor [n, r] (travels). local: the worker's own matrix [n, m] that round 2
    is computed from (never travels). shape: the leaf's shape (static metadata, known to both sides).
    """
    first: jax.Array
    local: jax.Array
    shape: tuple


@functools.partial(jax.tree_util.register_dataclass, data_fields=["first", "second"], meta_fields=["shape"])
@dataclasses.dataclass(frozen=True)
class WireFactors:
    """One matrix leaf as it comes off the wire (``unpack``): round-1 [n, r] and round-2 [m, r] factors."""
    first: jax.Array
    second: jax.Array
    shape: tuple


def _is_factors(x) -> bool:
    return isinstance(x, (LocalFactors, WireFactors))


def matrix_shape(shape) -> tuple[int, int] | None:
    """The matrix view of a leaf, [output features, input features], or None for vectors and scalars.

    The reference views a torch weight [out, in, kh, kw] as [shape[0], rest] = [out, in kh kw]
    (``view_as_matrix``: "[output features, input features]"). JAX kernels put the output features
    LAST (dense [in, out], conv [kh, kw, in, out]), so the same matrix here is
    ``(shape[-1], prod(shape[:-1]))``, i.e. ``to_matrix(g) = g.reshape(-1, shape[-1]).T``.
    """
    if len(shape) < 2:
        return None
    return int(shape[-1]), int(math.prod(shape[:-1]))


def to_matrix(g: jax.Array) -> jax.Array:
    """[..., out] -> [out, prod(...)] (see ``matrix_shape``)."""
    return g.reshape(-1, g.shape[-1]).T


def from_matrix(m: jax.Array, shape) -> jax.Array:
    """Inverse of ``to_matrix``."""
    return m.T.reshape(shape)


def bits_of(dtype) -> int:
    return jnp.dtype(dtype).itemsize * 8


def gram_schmidt(p: jax.Array, eps: float = GS_EPS) -> jax.Array:
    """Modified Gram-Schmidt on the columns of ``p`` [n, r]: normalise column i (``/ (norm + eps)``),
    remove it from the later columns. A zero column stays zero. ``r`` is static and small."""
    r = p.shape[-1]
    for i in range(r):
        col = p[:, i:i + 1]
        col = col / (jnp.sqrt(jnp.sum(col * col)) + eps)
        rest = p[:, i + 1:]
        rest = rest - jnp.sum(col * rest, axis=0, keepdims=True) * col
        p = jnp.concatenate([p[:, :i], col, rest], axis=1)
    return p


def _wmean(x: jax.Array, weights) -> jax.Array:
    return tree.wmean(x, weights)


def _shared_normal(seed: int, leaf: int, count, shape, dtype) -> jax.Array:
    """N(0, 1) draws that every worker makes identically: key(seed) folded with the leaf and a counter."""
    k = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), leaf), count)
    return jax.random.normal(k, shape, jnp.float32).astype(dtype)


def _leaf_specs(params, first_cols, second_cols):
    """Wire fields ``(count, width)``: round 1 per leaf (factor or dense), then round 2 per matrix leaf.

    ``first_cols(i, n, m)`` / ``second_cols`` give (rows, r) of the factors of matrix leaf i."""
    leaves = jax.tree.leaves(params)
    round1, round2 = [], []
    for i, x in enumerate(leaves):
        mat, b = matrix_shape(x.shape), bits_of(x.dtype)
        if mat is None:
            round1.append((int(math.prod(x.shape)), b))
        else:
            rows, r = first_cols(i, *mat)
            round1.append((rows * r, b))
            rows2, r2 = second_cols(i, *mat)
            round2.append((rows2 * r2, b))
    return round1 + round2


def _round_bits(params, specs) -> tuple[int, int]:
    """Bits of round 1 (the first ``len(leaves)`` fields) and round 2 (the rest), each its own message."""
    k = len(jax.tree.leaves(params))
    return wire.stream_bits(specs[:k]), wire.stream_bits(specs[k:])


def _pack_rounds(payload, solo_second) -> bytes:
    """Round 1 (factors / dense vectors in leaf order), then round 2 (second factors)."""
    round1, round2 = [], []
    for p in jax.tree.leaves(payload, is_leaf=_is_factors):
        if isinstance(p, LocalFactors):
            round1.append(wire.float_bits(np.asarray(p.first)))
            round2.append(wire.float_bits(np.asarray(solo_second(p.first, p.local))))
        elif isinstance(p, WireFactors):
            round1.append(wire.float_bits(np.asarray(p.first)))
            round2.append(wire.float_bits(np.asarray(p.second)))
        else:
            round1.append(wire.float_bits(np.asarray(p)))
    return wire.pack_fields(round1 + round2)


def _unpack_rounds(data: bytes, params, specs, factor_shapes):
    """Inverse of ``_pack_rounds``; ``factor_shapes(i, n, m) -> ((rows1, r), (rows2, r))``."""
    leaves, treedef = jax.tree.flatten(params)
    fields = wire.unpack_fields(data, specs)
    n_round1 = len(leaves)
    out, j = [], 0
    for i, x in enumerate(leaves):
        mat = matrix_shape(x.shape)
        if mat is None:
            out.append(wire.bits_float(fields[i], x.dtype).reshape(x.shape))
            continue
        s1, s2 = factor_shapes(i, *mat)
        out.append(WireFactors(wire.bits_float(fields[i], x.dtype).reshape(s1),
                               wire.bits_float(fields[n_round1 + j], x.dtype).reshape(s2), tuple(x.shape)))
        j += 1
    return jax.tree.unflatten(treedef, out)


def _unflatten_like(payload, values):
    return jax.tree.unflatten(jax.tree.structure(payload, is_leaf=_is_factors), values)


# ---- PowerSGD ------------------------------------------------------------------------------------

class PowerLeafState(NamedTuple):
    """Shared factors of one matrix after the last step: ``p_hat`` [n, r] (orthonormal, zero before the
    first step), ``q`` [m, r] (the all-reduced Q: next step's warm start; N(0, 1) before the first)."""
    p_hat: jax.Array
    q: jax.Array


class PowerState(NamedTuple):
    leaves: tuple     # per leaf: PowerLeafState for a matrix, () for a vector
    step: jax.Array   # int32, steps aggregated so far (draws a fresh Q each step without warm start)


def powersgd(rank: int = 2, seed: int = 0, warm_start: bool = True) -> Compressor:
    """PowerSGD with error feedback and a warm-started single power iteration per step.

    Args:
      rank: r; each matrix uses ``min(n, m, rank)``. Default 2, the paper's main CIFAR-10 setting
        (``hyperparameters.md``: Tables 2, 4 "High" and 6 use rank 2; Table 3 sweeps 1, 2, 4).
      seed: shared seed of the initial N(0, 1) query Q (all workers draw the same).
      warm_start: reuse the last all-reduced Q (``reuse_query=True``, the paper's default). False draws
        a fresh shared Gaussian Q every step (Table 2's "without warm start" ablation).

    Props: kind "biased" (EF inside), summable (both rounds are all-reduces), aggregation
    "power_iteration" (orthogonalisation between the rounds makes it non-linear in the P's; it IS
    linear in the workers' inputs for a fixed Q: N workers == one worker fed the mean gradient and
    the mean memory). Vectors (ndim <= 1) go dense with no error feedback, as in the reference.

    Deviations: P is averaged (Algorithm 1) where the paper code sums (harmless: orthogonalised
    next); the error buffer is formed one call late (exact, see the module docstring).
    """
    if int(rank) != rank or rank < 1:
        raise ValueError(f"powersgd: rank must be a positive integer, got {rank}")
    rank = int(rank)

    def r_of(n, m):
        return min(n, m, rank)

    def init(params):
        leaves = jax.tree.leaves(params)
        ws, ss = [], []
        for i, x in enumerate(leaves):
            mat = matrix_shape(x.shape)
            if mat is None:
                ws.append(())
                ss.append(())
                continue
            n, m = mat
            r = r_of(n, m)
            ws.append(jnp.zeros((n, m), x.dtype))
            ss.append(PowerLeafState(jnp.zeros((n, r), x.dtype), _shared_normal(seed, i, 0, (m, r), x.dtype)))
        return tuple(ws), PowerState(tuple(ss), jnp.zeros((), jnp.int32))

    def encode(key, grads, worker_state, server_state):
        del key
        leaves, treedef = jax.tree.flatten(grads)
        out, new_ws = [], []
        for i, g in enumerate(leaves):
            mat = matrix_shape(g.shape)
            if mat is None:
                out.append(g)
                new_ws.append(())
                continue
            st = server_state.leaves[i]
            m_i = to_matrix(g) + (worker_state[i] - st.p_hat @ st.q.T)   # M_i = G_i + e_i
            query = st.q if warm_start else _shared_normal(seed, i, server_state.step, st.q.shape, st.q.dtype)
            out.append(LocalFactors(m_i @ query, m_i, tuple(g.shape)))
            new_ws.append(m_i)
        return jax.tree.unflatten(treedef, out), tuple(new_ws)

    def aggregate(payloads, server_state, weights=None):
        est, new = [], []
        for p in jax.tree.leaves(payloads, is_leaf=_is_factors):
            if not isinstance(p, LocalFactors):
                est.append(_wmean(p, weights))
                new.append(())
                continue
            p_hat = gram_schmidt(_wmean(p.first, weights))                       # round 1
            q = _wmean(jnp.einsum("knm,nr->kmr", p.local, p_hat), weights)       # round 2
            est.append(from_matrix(p_hat @ q.T, p.shape))
            new.append(PowerLeafState(p_hat, q))
        return _unflatten_like(payloads, est), PowerState(tuple(new), server_state.step + 1)

    def solo_second(first, local):
        return local.T @ gram_schmidt(first)

    def decode(payload, server_state):
        del server_state
        out = []
        for p in jax.tree.leaves(payload, is_leaf=_is_factors):
            if isinstance(p, LocalFactors):
                second = solo_second(p.first, p.local)
            elif isinstance(p, WireFactors):
                second = p.second
            else:
                out.append(p)
                continue
            out.append(from_matrix(gram_schmidt(p.first) @ second.T, p.shape))
        return _unflatten_like(payload, out)

    def shapes(i, n, m):
        r = r_of(n, m)
        return (n, r), (m, r)

    def specs(params):
        return _leaf_specs(params, lambda i, n, m: shapes(i, n, m)[0], lambda i, n, m: shapes(i, n, m)[1])

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        return _pack_rounds(payload, solo_second)

    def unpack(data: bytes, params):
        return _unpack_rounds(data, params, specs(params), shapes)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=True, linear_exact=False, aggregation="power_iteration"),
                      down_bits=lambda params, n: payload_bits(params),
                      round_bits=lambda params: _round_bits(params, specs(params)))


def powersgd_error(worker_state, server_state):
    """The error buffers e_i = M_i - P^ Q^T (one per matrix leaf, [.., n, m]; () for vectors) after a step.

    Works on one worker's state or on the stacked [N, ...] worker state."""
    out = []
    for w, st in zip(worker_state, server_state.leaves):
        out.append(() if isinstance(st, tuple) and not st else w - st.p_hat @ st.q.T)
    return tuple(out)


def wire_rounds(payloads, server_state_after) -> list[bytes]:
    """The exact bytes each of N workers sends in one step (round 1, then round 2), host side.

    ``payloads``: the stacked [N, ...] messages of a two-round compressor; ``server_state_after``:
    the server state ``aggregate`` returned (it holds the broadcast P^ of round 1). Round 2 of
    worker i is ``M_i^T P^`` (PowerSGD; Dion's R_i is the same product in its working orientation).
    """
    leaves = jax.tree.leaves(payloads, is_leaf=_is_factors)
    n = next(np.asarray(p.first if _is_factors(p) else p).shape[0] for p in leaves)
    out = []
    for k in range(n):
        round1, round2 = [], []
        for p, st in zip(leaves, server_state_after.leaves):
            if isinstance(p, LocalFactors):
                round1.append(wire.float_bits(np.asarray(p.first[k])))
                round2.append(wire.float_bits(np.asarray(p.local[k]).T @ np.asarray(st.p_hat)))
            else:
                round1.append(wire.float_bits(np.asarray(p[k])))
        out.append(wire.pack_fields(round1 + round2))
    return out


# ---- Dion ----------------------------------------------------------------------------------------

class DionLeafState(NamedTuple):
    """One matrix, in its working orientation [rows, cols] (rows = the longer side, where P lives):
    ``p_hat`` [rows, r] and ``r_bar`` [cols, r] of the last step (zeros before the first), ``q``
    [cols, r] the column-normalised warm start (N(0, 1) before the first step)."""
    p_hat: jax.Array
    r_bar: jax.Array
    q: jax.Array


class ScalarLeafState(NamedTuple):
    """AdamW (m, v) or Lion (m; v unused) state of one vector leaf, driven by the all-reduced gradient."""
    m: jax.Array
    v: jax.Array


class DionState(NamedTuple):
    leaves: tuple
    step: jax.Array   # int32, for AdamW's bias correction


def dion(rank_fraction: float = 0.5, mu: float = 0.95, seed: int = 0, scalar: str = "adamw",
         beta1: float = 0.9, beta2: float = 0.95, eps: float = 1e-8) -> Compressor:
    """Dion in data-parallel mode: low-rank orthonormalised updates, decoupled momenta, EF.

    Per matrix leaf X viewed as [n0, m0] = [fan_out, fan_in] (``matrix_shape``: JAX kernels keep the
    output features last) and worked on as [rows, cols] (transposed when n0 < m0, so P lies along
    the longer side, as ``dion_reference_optax.py``), rank ``r = max(1, int(rank_fraction * cols))``.
    The returned direction is sqrt(fan_out / fan_in) P^ Q^T (the README's learning-rate scale); the
    outer optimizer must be plain SGD with Dion's learning rate (``replaces_optimizer``).

    Args:
      rank_fraction: r / min(n0, m0), in (0, 1]. Default 0.5 (microsoft/dion ``configs/dion_160m.yaml``,
        ``ortho_fraction: 0.5``; the README reports 0.25 near full rank at 3B parameters).
      mu: 0.95 (paper and code); the momentum adds G with no (1 - mu), decay comes only from EF.
      seed: shared seed of the initial Q.
      scalar: the element-wise optimizer of vectors (ndim <= 1), "adamw" (the 160M config) or "lion",
        run on the all-reduced dense gradient (identical on every worker, so it lives in the server
        state), with ``beta1``, ``beta2`` (0.9, 0.95) and ``eps`` (1e-8, also Dion's column-norm eps).

    Deviations: weight decay (0.01 in the 160M config) is not applied (aggregate never sees the
    parameters); orthonormalisation is exact Householder QR in float32 (the optax reference defaults
    to randomized Cholesky-QR); a matrix whose all-reduced P is all zero is skipped with Q kept
    (the reference's ``fix_all_zero_or_nan`` tests the momentum B itself, which no worker has in DP
    mode; B == 0 implies P == 0). Leaves with ndim > 2 are flattened to matrices (Dion's reference
    supports only 2-D weights). Embeddings and LM heads should not go through Dion (README): simsgd
    cannot tell them apart, so route such models elsewhere.
    """
    if not 0 < rank_fraction <= 1:
        raise ValueError(f"dion: rank_fraction must be in (0, 1], got {rank_fraction}")
    if not 0 <= mu < 1:
        raise ValueError(f"dion: mu must be in [0, 1), got {mu}")
    if scalar not in ("adamw", "lion"):
        raise ValueError(f"dion: scalar must be 'adamw' or 'lion', got {scalar!r}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= b < 1:
            raise ValueError(f"dion: {name} must be in [0, 1), got {b}")
    if not eps > 0:
        raise ValueError(f"dion: eps must be positive, got {eps}")

    def geometry(n0, m0):
        transposed = n0 < m0
        rows, cols = (m0, n0) if transposed else (n0, m0)
        return transposed, rows, cols, max(1, min(cols, int(rank_fraction * cols)))

    def init(params):
        ws, ss = [], []
        for i, x in enumerate(jax.tree.leaves(params)):
            mat = matrix_shape(x.shape)
            if mat is None:
                ws.append(())
                ss.append(ScalarLeafState(jnp.zeros(x.shape, x.dtype), jnp.zeros(x.shape, x.dtype)))
                continue
            _, rows, cols, r = geometry(*mat)
            ws.append(jnp.zeros((rows, cols), x.dtype))
            ss.append(DionLeafState(jnp.zeros((rows, r), x.dtype), jnp.zeros((cols, r), x.dtype),
                                    _shared_normal(seed, i, 0, (cols, r), x.dtype)))
        return tuple(ws), DionState(tuple(ss), jnp.zeros((), jnp.int32))

    def encode(key, grads, worker_state, server_state):
        del key
        leaves, treedef = jax.tree.flatten(grads)
        out, new_ws = [], []
        for i, g in enumerate(leaves):
            mat = matrix_shape(g.shape)
            if mat is None:
                out.append(g)
                new_ws.append(())
                continue
            st = server_state.leaves[i]
            transposed = geometry(*mat)[0]
            w = to_matrix(g).T if transposed else to_matrix(g)
            b_i = worker_state[i] - (1 - mu) * (st.p_hat @ st.r_bar.T) + w    # B_i = M_i + G_i
            out.append(LocalFactors(b_i @ st.q, b_i, tuple(g.shape)))
            new_ws.append(b_i)
        return jax.tree.unflatten(treedef, out), tuple(new_ws)

    def orth(p):
        q, _ = jnp.linalg.qr(p.astype(jnp.float32))
        return q.astype(p.dtype)

    def finish_matrix(p_bar, r_bar, st, shape):
        """From the reduced P (before orth) and R: the direction and the new leaf state."""
        zero = jnp.all(p_bar == 0)
        p_hat = jnp.where(zero, 0, orth(p_bar)).astype(p_bar.dtype)
        r_bar = jnp.where(zero, st.q, r_bar)
        r32 = r_bar.astype(jnp.float32)
        q = (r32 / (jnp.linalg.norm(r32, axis=0, keepdims=True) + eps)).astype(r_bar.dtype)
        n0, m0 = matrix_shape(shape)
        d = math.sqrt(n0 / m0) * (p_hat @ q.T)
        d = d.T if geometry(n0, m0)[0] else d
        return from_matrix(d, shape), DionLeafState(p_hat, r_bar, q)

    def r_of_round1(p_bar, locals_):
        """Round 2's per-worker products B_i^T P^ for the reduced round-1 P (zero-skip included)."""
        zero = jnp.all(p_bar == 0)
        p_hat = jnp.where(zero, 0, orth(p_bar)).astype(p_bar.dtype)
        return jnp.einsum("...nm,nr->...mr", locals_, p_hat)

    def scalar_step(g, st, step):
        t = (step + 1).astype(jnp.float32)
        if scalar == "adamw":
            m = beta1 * st.m + (1 - beta1) * g
            v = beta2 * st.v + (1 - beta2) * g * g
            d = (m / (1 - beta1 ** t)) / (jnp.sqrt(v / (1 - beta2 ** t)) + eps)
            return d.astype(g.dtype), ScalarLeafState(m, v)
        d = jnp.sign(beta1 * st.m + (1 - beta1) * g)
        return d.astype(g.dtype), ScalarLeafState(beta2 * st.m + (1 - beta2) * g, st.v)

    def aggregate(payloads, server_state, weights=None):
        est, new = [], []
        for p, st in zip(jax.tree.leaves(payloads, is_leaf=_is_factors), server_state.leaves):
            if not isinstance(p, LocalFactors):
                d, s = scalar_step(_wmean(p, weights), st, server_state.step)
            else:
                p_bar = _wmean(p.first, weights)                                    # round 1
                r_bar = _wmean(r_of_round1(p_bar, p.local), weights)                # round 2
                d, s = finish_matrix(p_bar, r_bar, st, p.shape)
            est.append(d)
            new.append(s)
        return _unflatten_like(payloads, est), DionState(tuple(new), server_state.step + 1)

    def solo_second(first, local):
        return r_of_round1(first, local)

    def decode(payload, server_state):
        out = []
        for p, st in zip(jax.tree.leaves(payload, is_leaf=_is_factors), server_state.leaves):
            if isinstance(p, LocalFactors):
                out.append(finish_matrix(p.first, solo_second(p.first, p.local), st, p.shape)[0])
            elif isinstance(p, WireFactors):
                out.append(finish_matrix(p.first, p.second, st, p.shape)[0])
            else:
                out.append(scalar_step(p, st, server_state.step)[0])
        return _unflatten_like(payload, out)

    def shapes(i, n0, m0):
        _, rows, cols, r = geometry(n0, m0)
        return (rows, r), (cols, r)

    def specs(params):
        return _leaf_specs(params, lambda i, n, m: shapes(i, n, m)[0], lambda i, n, m: shapes(i, n, m)[1])

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        return _pack_rounds(payload, solo_second)

    def unpack(data: bytes, params):
        return _unpack_rounds(data, params, specs(params), shapes)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=True, linear_exact=False, aggregation="dion",
                            replaces_optimizer=True),
                      down_bits=lambda params, n: payload_bits(params),
                      round_bits=lambda params: _round_bits(params, specs(params)))


def dion_momentum(worker_state, server_state, mu: float = 0.95):
    """The momenta M_i = B_i - (1 - mu) P^ R^T (working orientation) after a step; () for vectors."""
    out = []
    for w, st in zip(worker_state, server_state.leaves):
        out.append(w - (1 - mu) * (st.p_hat @ st.r_bar.T) if isinstance(st, DionLeafState) else ())
    return tuple(out)


COMPRESSORS = {"powersgd": powersgd, "dion": dion}
DESCRIPTIONS = {
    "powersgd": "rank-r power iteration with warm start and error feedback, two all-reduces of P and Q "
                "(Vogels, Karimireddy & Jaggi, NeurIPS 2019)",
    "dion": "orthonormalised low-rank updates with decoupled momentum and error feedback; an optimizer, "
            "use plain SGD outside (Ahn, Xu, Abreu & Langford, arXiv 2504.05295, 2025)",
}

__all__ = ["COMPRESSORS", "DESCRIPTIONS", "DionLeafState", "DionState", "LocalFactors", "PowerLeafState",
           "PowerState", "ScalarLeafState", "WireFactors", "dion", "dion_momentum", "gram_schmidt",
           "from_matrix", "matrix_shape", "powersgd", "powersgd_error", "to_matrix", "wire_rounds"]
