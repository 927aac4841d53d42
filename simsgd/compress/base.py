"""The Compressor protocol: how one worker's gradient becomes a message, and back.

A compressor is a NamedTuple of pure functions (optax's ``GradientTransformation`` shape). Worker
state (error-feedback memory, ...) is written for ONE worker; the engine stacks it over ``N`` and
vmaps ``encode``. Server state is shared and never stacked. Anything that fixes a shape (k, bit
widths) is closed over by the factory, so ``payload_bits`` is a static Python int.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from simsgd.types import Grads, Key, Params

Payload = Any       # a pytree of fixed-shape arrays; one worker's message (stacked [N, ...] in aggregate)
WorkerState = Any   # one worker's compressor state (the engine stacks it over N)
ServerState = Any   # shared state, never stacked


class Props(NamedTuple):
    """Static facts about a compressor that the engine and the network model rely on.

    kind: "exact" (decode(encode(g)) == g), "unbiased" (E[C(g)] = g), "contractive"
      (||C(g) - g||^2 <= (1 - alpha) ||g||^2), or "biased" (none of these promises).
    summable: payloads of different workers can be summed in place inside an all-reduce (dense,
      same support, same scale); False needs an all-gather or a parameter server.
    linear_exact: only for the identity: decode(encode(g)) == g exactly and linearly, so the
      engine may fuse the workers' batches into one gradient computation.
    aggregation: "mean" when ``aggregate`` is the (weighted) mean of the decoded payloads;
      otherwise a word for what it is instead (e.g. "majority" for a sign vote).
    replaces_optimizer: True for methods that carry their own momentum or adaptive scaling in their
      state (DGC's momentum correction, 1-bit Adam, DeMo, Dion, FetchSGD): ``aggregate`` returns
      the update direction, and the outer optimizer must be plain SGD (it only applies the
      learning rate). Scenarios reject any other optimizer for them.
    collective: the collective the method's paper uses, taken when the scenario says ``auto``:
      "auto" (an all-reduce if summable, else an all-gather) or "ps" (a parameter server, e.g.
      a majority vote whose 1-bit answer is all that comes back down).
    """
    kind: str
    summable: bool
    linear_exact: bool
    aggregation: str = "mean"
    replaces_optimizer: bool = False
    collective: str = "auto"


class Compressor(NamedTuple):
    """init(params) -> (worker_state, server_state): ONE worker's state and the shared state.
    encode(key, grads, worker_state, server_state) -> (payload, worker_state): one worker, jittable.
    decode(payload, server_state) -> grads: a dense estimate with the grads' tree, shapes, dtypes.
    aggregate(payloads [N, ...], server_state, weights [N] | None) -> (mean estimate, server_state):
      ``sum_i w_i decode(p_i) / sum_i w_i`` (plain mean when weights is None).
    payload_bits(params) -> int: exact bits of one worker's message for a tree of these shapes
      (works on ``jax.ShapeDtypeStruct`` trees), equal to ``8 * len(pack(payload))``.
    pack(payload) -> bytes / unpack(bytes, params) -> payload: the real wire format (NumPy, host).
    props: static facts (``Props``).
    down_bits(params, n) -> int: exact bits of the message a parameter server sends back to each
      worker after aggregating n payloads (e.g. 1 bit per entry for a majority vote; more levels
      than the upward message for summed ternary values). None: the dense aggregate, each leaf
      in its own dtype. All-reduce and all-gather traffic follows from ``payload_bits`` alone.
    message_bytes(payload) -> int32 scalar: for VARIABLE-length wire formats only (threshold
      sparsification, Elias-coded levels, a warm-up phase sent dense): the exact bytes of this one
      message, jittable, equal to ``len(pack(payload))``. ``payload_bits`` is then the largest
      message the format can produce (its buffer size), and the engine prices each step with the
      bytes actually sent. None: every message is exactly ``payload_bits``.
    down_message_bytes(server_state) -> int32 scalar: the same for the parameter server's answer
      when its size varies by phase (e.g. dense during a warm-up); ``server_state`` is the state
      ``aggregate`` returned this step. None: ``down_bits`` every step.
    init_workers(params, n) -> (stacked worker states [n, ...], server state): for compressors whose
      workers differ from the start (EF21-W's per-worker weights). None: ``init`` broadcast to n.
    round_bits(params) -> tuple[int, ...]: for methods whose step is several SEQUENTIAL collectives,
      because a later message depends on the reduced earlier one (PowerSGD and Dion: round 1 all-reduces
      P, round 2 sends M_i^T orth(P)): the exact bits of each round's message, summing to
      ``payload_bits``. Each round is its own collective and pays its own latency; under a parameter
      server the server answers each round with the reduced round message (same size). None: one round.
    round_message_bytes(payload) -> int32 [R]: the same per message for variable-length multi-round
      formats (L-GreCo: its dense phase is one round, a second round of 0 bytes), summing to
      ``message_bytes(payload)``.
    traffic(params, n, link, intra_link) -> network.Traffic: for methods that run their own
      collective, which no generic one prices (ZeRO++ qgZ's two all-to-all hops, the first inside
      each node on ``intra_link``, the second across nodes on ``link``, each node's NIC). The
      engine then uses it instead of ``payload_bits`` + a collective. None: a generic collective.
    """
    init: Callable[[Params], tuple[WorkerState, ServerState]]
    encode: Callable[[Key, Grads, WorkerState, ServerState], tuple[Payload, WorkerState]]
    decode: Callable[[Payload, ServerState], Grads]
    aggregate: Callable[[Payload, ServerState, jax.Array | None], tuple[Grads, ServerState]]
    payload_bits: Callable[[Params], int]
    pack: Callable[[Payload], bytes]
    unpack: Callable[[bytes, Params], Payload]
    props: Props
    down_bits: Callable[[Params, int], int] | None = None
    message_bytes: Callable[[Payload], jax.Array] | None = None
    down_message_bytes: Callable[[ServerState], jax.Array] | None = None
    init_workers: Callable[[Params, int], tuple[WorkerState, ServerState]] | None = None
    round_bits: Callable[[Params], tuple[int, ...]] | None = None
    round_message_bytes: Callable[[Payload], jax.Array] | None = None
    traffic: Callable[..., Any] | None = None


def down_bits(c: Compressor, params: Params, n: int) -> int:
    """Bits a parameter server sends each worker after aggregating ``n`` payloads of ``c``."""
    if c.down_bits is not None:
        return int(c.down_bits(params, n))
    from simsgd.tree import tree_bits

    return tree_bits(params)


def message_bytes(c: Compressor, payloads: Payload, params: Params) -> jax.Array:
    """Exact bytes of each of the stacked messages ``payloads`` [N, ...] as int32 [N] (jittable)."""
    import jax.numpy as jnp

    if c.message_bytes is None:
        n = jax.tree.leaves(payloads)[0].shape[0] if jax.tree.leaves(payloads) else 1
        return jnp.full((n,), c.payload_bits(params) // 8, jnp.int32)
    return jax.vmap(c.message_bytes)(payloads).astype(jnp.int32)


def up_rounds(c: Compressor, params: Params) -> tuple[int, ...]:
    """Bits of one worker's message in each sequential round of a step (one round for most methods)."""
    if c.round_bits is None:
        return (int(c.payload_bits(params)),)
    rounds = tuple(int(b) for b in c.round_bits(params))
    if sum(rounds) != int(c.payload_bits(params)):
        raise ValueError(f"round_bits {rounds} do not add up to payload_bits {c.payload_bits(params)}")
    return tuple(b for b in rounds if b) or (0,)   # a round with nothing to send is not run


def round_message_bytes(c: Compressor, payloads: Payload, params: Params) -> jax.Array:
    """Exact bytes of each stacked message [N, ...] in each round, as int32 [R, N] (jittable)."""
    import jax.numpy as jnp

    if c.round_message_bytes is not None:
        return jax.vmap(c.round_message_bytes)(payloads).astype(jnp.int32).T
    if c.round_bits is not None and c.message_bytes is None:
        n = jax.tree.leaves(payloads)[0].shape[0]
        return jnp.asarray([[b // 8] * n for b in up_rounds(c, params)], jnp.int32)
    return message_bytes(c, payloads, params)[None, :]
