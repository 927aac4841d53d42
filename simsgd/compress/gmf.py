"""Global Momentum Fusion (GMF): DGC-style top-k whose selection also looks at the global momentum.

Kuo, Kuo & Lin, "Global Momentum Fusion: Communication-Efficient Federated Learning with Non-IID
Data", arXiv 2211.09320 (2022); reference code tony92151/global-momentum-fusion-fl
(``client/gfdgc_client.py``, ``client/dgc_client.py`` ``dgc_memory``,
``sparse_compressor/gfcompressor.py``, ``configs/cifar10/GFDGC/config_1.ini``).

Client i, round t, per leaf (research/compressors.md §3.2), on its update g:
    u <- m u + g;   v <- v + u                                   (DGC momentum correction)
    I = | phi Ghat + (1 - phi) vhat |,   xhat = x / ||x||_2 per leaf (fused before taking |.|)
    S = the k entries of largest I;   send v[S];   u[S] <- 0, v[S] <- 0   (momentum factor masking)
Server: the (weighted) mean of the sparse messages, est; then the global momentum, a heavy-ball sum
of the aggregates that every client also keeps (no extra traffic): G <- beta G + est.
While G == 0 (round 0, the reference's ``global_gradient is None``) a leaf's selection is plain
top-k of |v|. The values sent are v's, never the fused ones. The fusion ratio phi follows the
reference's schedule: ``fusion_schedule`` split evenly over ``rounds`` rounds (config_1.ini: 8
values 0 .. 0.197 over 220 rounds, so the first 27 rounds are plain DGC, the warm-up).

State: u, v per worker; G and a round counter (int32) on the server (shared).

Selection without a sort: the k-th largest score is found exactly (non-negative floats order as
their bit patterns; bracketed from a sample and refined within the band, see
``sparsify.topk_ascending``), then the entries above it and, among ties, the lowest indices fill
exactly k slots (``select_topk``). This is exact top-k; the reference thresholds at the sorted
value instead (keeping ties, so occasionally k + 1 entries) -- here always exactly k.

Wire format: as ``topk`` (sparsify.py): per leaf, k values in the leaf dtype then k flat indices
at ceil(log2 d) bits, ascending; ``k = max(1, ceil(ratio d))`` capped at d. Not summable (supports
differ): a parameter server or all-gather; down: the dense aggregate.

Props: kind "biased", replaces_optimizer (the messages carry DGC's momentum; in federated use the
paper applies a server optimizer, FedOpt-style Adam, to the aggregate -- FedAvg's server optimizer
is not restricted by the scenario).
Deviations: no local gradient clipping and no sparsity warm-up schedule (the GFDGC configs keep
compress_ratio fixed at 0.1); phi is a step function of the aggregate count, as in the reference.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from simsgd import tree
from simsgd.compress import sparsify
from simsgd.compress.base import Compressor, Props
from simsgd.compress.sparsify import SparseLeaf


@functools.partial(jax.jit, static_argnums=1)
def select_topk(score: jax.Array, k: int) -> jax.Array:
    """Flat indices (int32, ascending) of the ``k`` largest entries of a non-negative 1-D ``score``.

    Ties at the k-th value go to the lowest indices. No sort: ``sparsify.topk_ascending`` (the k-th
    largest value bracketed from a sample, one compaction pass; on small leaves by bisection on its
    float32 bit pattern), exact whatever the sample says.
    """
    d = score.shape[0]
    k = int(k)
    if k >= d:
        return jnp.arange(d, dtype=jnp.int32)
    return sparsify.topk_ascending(score, k)


def keep_count(ratio: float, size: int) -> int:
    """Entries kept in a leaf of ``size``: ``max(1, ceil(ratio size))`` capped at size (exact decimal)."""
    return min(size, max(1, math.ceil(Fraction(repr(float(ratio))) * size)))


class GMFWorker(NamedTuple):
    u: Any   # DGC momentum
    v: Any   # DGC velocity (accumulated momentum not yet sent)


class GMFServer(NamedTuple):
    momentum: Any    # G: the global momentum, a heavy-ball sum of the aggregates
    step: jax.Array  # int32 rounds aggregated (drives the fusion-ratio schedule)


def _schedule(fusion_schedule: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in str(fusion_schedule).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"gmf: fusion_schedule must be comma-separated numbers in [0, 1], got "
                         f"{fusion_schedule!r}") from None
    if not values or any(not 0 <= x <= 1 for x in values):
        raise ValueError(f"gmf: fusion_schedule must be comma-separated numbers in [0, 1], got {fusion_schedule!r}")
    return values


def _unit(x):
    n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
    return jnp.where(n > 0, x.astype(jnp.float32) / jnp.where(n > 0, n, 1.0), 0.0), n


def gmf(ratio: float = 0.1, momentum: float = 0.9, fusion_momentum: float = 0.9,
        fusion_schedule: str = "0.0,0.04,0.078,0.113,0.143,0.168,0.186,0.197", rounds: int = 220) -> Compressor:
    """Global Momentum Fusion top-k (defaults: the reference's CIFAR-10 GFDGC config_1.ini).

    Args:
      ratio: fraction of each leaf's entries sent, in (0, 1] (compress_ratio 0.1).
      momentum: DGC momentum m in [0, 1) (0.9).
      fusion_momentum: beta of the global momentum G <- beta G + aggregate, in [0, 1) (0.9).
      fusion_schedule: comma-separated fusion ratios phi in [0, 1], used in equal chunks of the
        rounds (the reference's fusing_ratio list).
      rounds: rounds the schedule is spread over (max_iteration 220); later rounds keep the last phi.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"gmf: ratio must be in (0, 1], got {ratio}")
    if not 0 <= momentum < 1:
        raise ValueError(f"gmf: momentum must be in [0, 1), got {momentum}")
    if not 0 <= fusion_momentum < 1:
        raise ValueError(f"gmf: fusion_momentum must be in [0, 1), got {fusion_momentum}")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"gmf: rounds must be a positive integer, got {rounds}")
    phis = jnp.asarray(_schedule(fusion_schedule), jnp.float32)
    n_phi = phis.shape[0]
    base = sparsify.topk(ratio=ratio)   # the wire format, decode and aggregate of plain top-k

    def phi_at(step):
        return phis[jnp.minimum(step * n_phi // int(rounds), n_phi - 1)]

    def init(params):
        return GMFWorker(tree.zeros_like(params), tree.zeros_like(params)), \
            GMFServer(tree.zeros_like(params), jnp.zeros((), jnp.int32))

    def encode(key, grads, ws: GMFWorker, ss: GMFServer):
        del key
        phi = phi_at(ss.step)
        u = jax.tree.map(lambda u, g: (momentum * u + g).astype(g.dtype), ws.u, grads)
        v = tree.add(ws.v, u)

        def leaf(u, v, G):
            flat_v, flat_u = v.reshape(-1), u.reshape(-1)
            vhat, _ = _unit(flat_v)
            ghat, gnorm = _unit(G.reshape(-1))
            score = jnp.where(gnorm > 0, jnp.abs(phi * ghat + (1 - phi) * vhat), jnp.abs(flat_v.astype(jnp.float32)))
            idx = select_topk(score, keep_count(ratio, flat_v.size))
            msg = SparseLeaf(flat_v[idx], idx, tuple(v.shape))
            return msg, flat_u.at[idx].set(0).reshape(u.shape), flat_v.at[idx].set(0).reshape(v.shape)

        out = jax.tree.map(leaf, u, v, ss.momentum)
        is_out = lambda x: isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], SparseLeaf)  # noqa: E731
        payload = jax.tree.map(lambda o: o[0], out, is_leaf=is_out)
        new_u = jax.tree.map(lambda o: o[1], out, is_leaf=is_out)
        new_v = jax.tree.map(lambda o: o[2], out, is_leaf=is_out)
        return payload, GMFWorker(new_u, new_v)

    def decode(payload, ss):
        return base.decode(payload, ())

    def aggregate(payloads, ss: GMFServer, weights=None):
        est, _ = base.aggregate(payloads, (), weights)
        G = jax.tree.map(lambda G, e: (fusion_momentum * G + e).astype(e.dtype), ss.momentum, est)
        return est, GMFServer(G, ss.step + 1)

    # Jitted as wholes: one compilation per tree instead of one per small kernel when called eagerly.
    return base._replace(init=init, encode=jax.jit(encode), decode=jax.jit(decode), aggregate=jax.jit(aggregate),
                         props=Props(kind="biased", summable=False, linear_exact=False, replaces_optimizer=True))


COMPRESSORS = {"gmf": gmf}
DESCRIPTIONS = {
    "gmf": "Global Momentum Fusion: DGC top-k (ratio 0.1) selected on |phi Ghat + (1-phi) vhat| with the global "
           "momentum G (Kuo, Kuo & Lin, arXiv 2211.09320, 2022)",
}
