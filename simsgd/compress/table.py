"""What each compressor costs on the wire for a given model: bits per entry up and down, and ratio.

Every compressor is built with its paper defaults (its factory called with no arguments). "Up" is
one worker's message (``payload_bits``; for variable-length formats the largest message, marked
``<=``); "down" is what a parameter server sends each worker back after aggregating ``n`` messages
(``down_bits``). The ratio is the dense float32 message over the upward one.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from simsgd.algorithms.base import System, collective_kind
from simsgd.compress.base import down_bits, up_rounds
from simsgd.tree import tree_bits, tree_size


class Row(NamedTuple):
    name: str
    kind: str
    collective: str  # what ``collective: auto`` runs it on ("x2": two collectives one after the other)
    up_bits: int
    down_bits: int
    variable: bool   # variable-length messages: up_bits is the largest one


def rows(params, workers: int) -> list[Row]:
    """One ``Row`` per registered compressor, built with defaults, for a params tree (or its shapes)."""
    from simsgd.compress import COMPRESSORS

    shapes = jax.eval_shape(lambda p: p, params)
    out = []
    for name, factory in COMPRESSORS.items():
        c = factory()
        kind = collective_kind(System(), c.props.summable, c.props.collective)
        rounds = len(up_rounds(c, shapes))
        if c.round_message_bytes is not None:     # variable-length, several rounds (L-GreCo): the most it runs
            ws, ss = jax.eval_shape(c.init, shapes)
            msg = jax.eval_shape(lambda g, w, s: c.encode(jax.random.key(0), g, w, s)[0], shapes, ws, ss)
            rounds = jax.eval_shape(c.round_message_bytes, msg).shape[0]
        out.append(Row(name, c.props.kind, kind + (f" x{rounds}" if rounds > 1 else ""),
                       int(c.payload_bits(shapes)),
                       int(down_bits(c, shapes, workers)), c.message_bytes is not None))
    return out


def format_table(params, workers: int) -> str:
    d = tree_size(params)
    dense = tree_bits(jax.eval_shape(lambda p: p, params))
    lines = [f"{d:,} parameters ({dense / d:.0f} bits each dense), {workers} workers; defaults of each method",
             "",
             f"{'compressor':<16} {'kind':<12} {'collective':<16} {'bits/entry up':>14} {'bits/entry down':>16} "
             f"{'ratio up':>9}",
             f"{'-' * 16} {'-' * 12} {'-' * 16} {'-' * 14} {'-' * 16} {'-' * 9}"]
    for r in rows(params, workers):
        le, ge = ("<=", ">=") if r.variable else ("  ", "  ")
        lines.append(f"{r.name:<16} {r.kind:<12} {r.collective:<16} "
                     f"{le}{r.up_bits / d:>12.4f} {r.down_bits / d:>16.4f} {ge}{dense / r.up_bits:>7.1f}x")
    return "\n".join(lines)
