"""What one step costs before anything runs: compute, and each collective and compressor on the wire.

``step_costs(built)`` prices one synchronous step of a built scenario for every collective that can
carry the dense gradient, and for every registered compressor (paper defaults) on the collective it
needs, with the same network model the engine uses. So a user sees whether compute or
communication dominates, and by how much a compressor changes that, without running anything.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from simsgd.algorithms.base import System, compressor_exchange, exchange
from simsgd.network import straggler_mean
from simsgd.tree import tree_bits


class Cost(NamedTuple):
    what: str
    collective: str
    sent_bits: int      # per worker (the busiest)
    comm_s: float


def collective_costs(system: System, n: int, bits: int) -> list[Cost]:
    """The dense message of ``bits`` per worker on every collective that the system can run."""
    kinds = ["allreduce", "rabenseifner", "tree", "allgather", "ps"]
    if system.intra_link is not None and system.per_node > 1 and n % system.per_node == 0:
        kinds.insert(2, "hierarchical")
    out = []
    for kind in kinds:
        _, t = exchange(system._replace(collective=kind), n, bits, True, bits)
        out.append(Cost("dense", kind, int(t.sent_bits.max(initial=0)), float(t.seconds)))
    return out


def compressor_costs(system: System, n: int, params) -> list[Cost]:
    """Every compressor with its defaults on the collective the system picks for it (``auto``: by summability)."""
    from simsgd.compress import COMPRESSORS

    shapes = jax.eval_shape(lambda p: p, params)
    out = []
    for name, factory in COMPRESSORS.items():
        c = factory()
        try:
            kind, t = compressor_exchange(system, n, c, shapes)
        except ValueError:   # e.g. a forced all-reduce for a non-summable payload: price it as an all-gather
            kind, t = exchange(system._replace(collective="allgather"), n, c.payload_bits(shapes), False, 0)
        label = name + (" (<=)" if c.message_bytes is not None else "")
        out.append(Cost(label, kind, int(t.sent_bits.max(initial=0)), float(t.seconds)))
    return out


def format_costs(system: System, n: int, params, compute_s: float) -> str:
    bits = tree_bits(jax.eval_shape(lambda p: p, params))
    mean_compute = compute_s * straggler_mean(system.compute)
    lines = [f"{n} workers, {bits // 32:,} float32 parameters ({bits / 8e6:.3f} MB per dense message); "
             f"link {system.link.bandwidth_bps / 1e9:g} Gbit/s, {system.link.latency_s * 1e3:g} ms",
             f"compute per step: {compute_s * 1e3:.3f} ms base, {mean_compute * 1e3:.3f} ms mean with stragglers "
             f"(a synchronous step waits for the slowest)", ""]
    header = f"{'message':<22} {'collective':<13} {'MB sent/worker':>15} {'comm ms':>10} {'comm/compute':>13}"
    rule = f"{'-' * 22} {'-' * 13} {'-' * 15} {'-' * 10} {'-' * 13}"
    lines += [header, rule]
    for c in collective_costs(system, n, bits) + compressor_costs(system, n, params):
        ratio = c.comm_s / mean_compute if mean_compute else float("inf")
        lines.append(f"{c.what:<22} {c.collective:<13} {c.sent_bits / 8e6:>15.4f} {c.comm_s * 1e3:>10.3f} "
                     f"{ratio:>13.2f}")
    return "\n".join(lines)
