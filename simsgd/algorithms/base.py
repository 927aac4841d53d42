"""The Algorithm protocol shared by every family, and the per-step ``Info`` record.

An algorithm is a pair of pure functions ``init(key, params) -> state`` and
``step(key, state) -> (state, info)``, plus ``params(state)``: the model to evaluate (the
server model, or the average of the workers' models). One ``step`` is one unit of the method's
own clock: an SGD step, a round of local updates, a gossip step, one asynchronous arrival.
Minibatches are drawn inside ``step`` from device-resident data, so ``step`` takes no batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simsgd.network import Compute, Link, Traffic
from simsgd.types import Key, Params, PyTree

MAX_BYTES = 2**31 - 1


class Info(NamedTuple):
    """What one step measured. Byte counts are exact per worker (``[N]`` int32)."""
    loss: jax.Array         # mean training loss of the minibatches this step used
    clock: jax.Array        # simulated seconds since the start, after this step
    compute_s: jax.Array    # seconds of this step spent computing (slowest participant)
    comm_s: jax.Array       # seconds of this step spent communicating
    idle_s: jax.Array       # mean seconds participants waited for the slowest one
    sent_bytes: jax.Array   # [N] bytes each worker sent this step
    recv_bytes: jax.Array   # [N] bytes each worker received this step
    extra: dict             # method-specific measurements (staleness, consensus distance, ...)


class Algorithm(NamedTuple):
    init: Callable[[Key, Params], PyTree]
    step: Callable[[Key, PyTree], tuple[PyTree, Info]]
    params: Callable[[PyTree], Params]
    name: str
    num_workers: int


class System(NamedTuple):
    """The simulated hardware: one link type, a compute-time model, and the collective to use."""
    link: Link = Link(latency_s=1e-4, bandwidth_bps=1e9)
    compute: Compute = Compute(seconds_per_step=0.01)
    collective: str = "auto"   # "auto" | "allreduce" | "rabenseifner" | "tree" | "hierarchical" | "allgather" | "ps"
    server_link: Link | None = None
    per_node: int = 1                # workers per node (hierarchical: ``link`` is then each node's NIC)
    intra_link: Link | None = None   # the link between workers of one node (hierarchical)
    bucket_bytes: int | None = None  # overlap communication with backward in buckets of this size (DDP); None: off
    backward_fraction: float = 2 / 3 # share of a step's compute spent in the backward pass (overlap)


def byte_counts(bits: np.ndarray, what: str) -> jax.Array:
    """Exact per-worker bit counts (multiples of 8) as an int32 byte array for ``Info``."""
    bits = np.asarray(bits, np.int64)
    if np.any(bits % 8):
        raise ValueError(f"{what}: messages must be whole bytes, got {bits.tolist()[:4]} bits")
    if np.any(bits // 8 > MAX_BYTES):
        raise ValueError(f"{what}: {int(bits.max() // 8)} bytes per worker per step exceeds the 2 GiB a step can record")
    return jnp.asarray(bits // 8, jnp.int32)


def scatter_bytes(n: int, workers: jax.Array, per_worker: jax.Array) -> jax.Array:
    """Bytes ``per_worker`` [m] placed at the rows ``workers`` of an [n] vector of zeros."""
    return jnp.zeros((n,), jnp.int32).at[workers].add(per_worker)


def collective_kind(system: System, summable: bool, preferred: str = "auto") -> str:
    """The collective ``system`` uses. ``auto`` takes the compressor's ``preferred`` one (its
    ``Props.collective``) if it names one, else a ring all-reduce for summable payloads and an
    all-gather otherwise."""
    kind = system.collective
    if kind == "auto":
        if preferred != "auto":
            return preferred
        return "allreduce" if summable else "allgather"
    if kind in ("allreduce", "rabenseifner", "tree", "hierarchical") and not summable:
        raise ValueError(f"collective {kind!r} needs a summable payload (dense); this compressor's payloads "
                         "are not: use 'allgather' or 'ps'")
    return kind


def exchange(system: System, n: int, up_bits: int, summable: bool, down_bits: int, preferred: str = "auto"):
    """The collective that carries one message of ``up_bits`` per worker, and its traffic.

    ``auto`` picks a ring all-reduce for payloads that can be summed in place (dense, same
    support) and a ring all-gather otherwise; ``ps`` pushes ``up_bits`` to a parameter server and
    pulls ``down_bits`` (the aggregated update) back. Returns ``(name, Traffic)``.
    """
    from simsgd import collectives, network

    kind = collective_kind(system, summable, preferred)
    if kind == "allreduce":
        return kind, network.ring_allreduce(n, up_bits, system.link)
    if kind == "rabenseifner":
        return kind, collectives.rabenseifner_allreduce(n, up_bits, system.link)
    if kind == "tree":
        return kind, collectives.double_binary_tree_allreduce(n, up_bits, system.link)
    if kind == "hierarchical":
        g = system.per_node
        if n % g:
            raise ValueError(f"hierarchical all-reduce: {n} participants do not fill nodes of {g}")
        return kind, collectives.hierarchical_allreduce(n // g, g, up_bits, system.intra_link or system.link,
                                                        system.link)
    if kind == "allgather":
        return kind, network.allgather(n, up_bits, system.link)
    if kind == "ps":
        return kind, network.parameter_server(n, up_bits, down_bits, system.link, system.server_link)
    raise ValueError(f"collective must be one of 'auto', 'allreduce', 'rabenseifner', 'tree', 'hierarchical', "
                     f"'allgather', 'ps', got {kind!r}")


def add_traffic(parts) -> Traffic:
    """Collectives run one after the other: bits add up per worker, and so do the seconds."""
    parts = list(parts)
    return Traffic(sum(t.sent_bits for t in parts), sum(t.recv_bits for t in parts), sum(t.seconds for t in parts))


def compressor_exchange(system: System, n: int, compressor, shapes, down: int | None = None):
    """``exchange`` for one step's messages of ``compressor`` among ``n`` workers: ``(name, Traffic)``.

    A method with its own collective (``Compressor.traffic``: qgZ's two all-to-all hops) is priced by
    it, and only under ``collective: auto`` (its numerics ARE that collective). A multi-round method
    (``round_bits``: PowerSGD's P then Q) runs one collective per round, one after the other; under a
    parameter server each round is answered with the reduced round message, and ``down`` (if given)
    replaces the last answer. Otherwise one ``exchange`` of ``payload_bits`` with ``down`` (default: the
    compressor's ``down_bits``) coming back from a parameter server.
    """
    from simsgd.compress.base import down_bits, up_rounds

    c = compressor
    if c.traffic is not None:
        if system.collective != "auto":
            raise ValueError(f"network.collective: this compressor runs its own collective "
                             f"({c.props.collective!r}); set 'auto', got {system.collective!r}")
        return c.props.collective, c.traffic(shapes, n, system.link, system.intra_link)
    rounds = up_rounds(c, shapes)
    if len(rounds) == 1:
        return exchange(system, n, rounds[0], c.props.summable,
                        down_bits(c, shapes, n) if down is None else down, c.props.collective)
    answers = rounds[:-1] + (rounds[-1] if down is None else down,)
    parts = [exchange(system, n, up, c.props.summable, back, c.props.collective) for up, back in zip(rounds, answers)]
    return parts[0][0], add_traffic(t for _, t in parts)


def overlapped_comm(system: System, n: int, compressor, shapes):
    """``(ready fractions, seconds per bucket)`` of the compressor's message cut into ``system.bucket_bytes``
    buckets, each carried by the system's collective (see ``simsgd.overlap``); collectives among the
    workers only. A multi-round method runs its rounds on each bucket one after the other (PyTorch's
    PowerSGD hook works per bucket), each round carrying its share of the bucket in proportion to its
    share of the whole message."""
    from simsgd import overlap
    from simsgd.compress.base import up_rounds

    c = compressor
    if c.traffic is not None:
        raise ValueError("overlap (bucket_bytes) models DDP's bucketed collectives; this compressor runs its own "
                         f"({c.props.collective!r}) and cannot be bucketed")
    if collective_kind(system, c.props.summable, c.props.collective) == "ps":
        raise ValueError("overlap (bucket_bytes) models DDP's bucketed all-reduce among workers; it does not apply "
                         "to a parameter server")
    rounds = np.asarray(up_rounds(c, shapes), np.int64) // 8
    total = int(rounds.sum())
    ends = np.cumsum(rounds)

    def seconds(nbytes):
        shares = np.diff(np.concatenate([[0], (nbytes * ends + total // 2) // max(total, 1)]))   # whole bytes
        return sum(exchange(system, n, 8 * int(b), c.props.summable, 0, c.props.collective)[1].seconds
                   for b in shares if b)

    return overlap.bucket_plan(total, system.bucket_bytes, seconds)


def step_time(compute_s: jax.Array, comm_s: float):
    """A synchronous step: everyone waits for the slowest participant, then communicates.

    Returns ``(duration, slowest compute, mean idle)`` for per-participant compute seconds [m].
    """
    slowest = jnp.max(compute_s)
    return slowest + comm_s, slowest, jnp.mean(slowest - compute_s)
