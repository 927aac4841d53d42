"""Synchronous data-parallel SGD with a pluggable compressor.

Each step every worker i draws a minibatch from its own data and computes g_i = grad f_i(x);
the compressor encodes each g_i, the collective aggregates ``g = (1/N) sum_i decode(C(g_i))``,
and one optax update is applied to the shared model: ``x <- x + optimizer(g)``. With the
identity compressor and plain SGD this is minibatch SGD on the fused batch of N*B examples
(Dean et al. 2012; Goyal et al. 2017), which the engine uses as a fast path.

Workers dropping out and rejoining (``system.compute.dropout`` > 0, ``network.next_availability``):
at the start of each step the availability chain moves one step with the step key, and only the
workers that are up take part. They compute, encode and send; the aggregate is the mean over the
participants (the compressor's ``aggregate`` gets the up-mask as weights), the collective runs
among the m participants in index order (a ring of m, a server with m clients; priced exactly for
every m, see ``participant_traffic``), and the step waits for the slowest participant. Down workers
send and receive 0 bytes and keep their compressor state (error-feedback memory) untouched. If
nobody is up the step is skipped: no update, no traffic, the clock advances by ``seconds_per_step``
(its reported loss is then the mean over all workers' draws at the unchanged model, never NaN).
The mask is the state's ``up`` field (None without dropout: the state, the draws and the compiled
step are then exactly those of the always-up algorithm). With availability the fused fast path is
off (the mean over participants is taken from per-worker gradients). ``Info.extra["participants"]``
is the number of workers that took part (present only with dropout).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simsgd import batches as B
from simsgd import network
from simsgd import overlap
from simsgd.algorithms import fsdp
from simsgd.algorithms.base import (Algorithm, Info, System, byte_counts, collective_kind, compressor_exchange,
                                    overlapped_comm, step_time)
from simsgd.compress import Compressor, identity
from simsgd.compress.base import down_bits
from simsgd.task import Task
from simsgd.tree import broadcast_workers
from simsgd.workers import map_workers


class SyncState(NamedTuple):
    params: object
    opt_state: object
    worker_state: object   # compressor state, stacked [N, ...]
    server_state: object
    clock: jax.Array
    up: object = None      # [N] bool availability of the last step (None: no dropout, always up)


class ParticipantTables(NamedTuple):
    """Traffic of one collective among m = 0..N participants: row m holds the m participants' values."""
    sent: jax.Array      # [N+1, N] int32 bytes, entry [m, r] for the participant of rank r
    recv: jax.Array      # [N+1, N] int32
    seconds: jax.Array   # [N+1] float32


def participant_tables(system: System, n: int, compressor: Compressor, shapes, down_of_m=None) -> ParticipantTables:
    """``compressor_exchange`` priced for every participant count m in 1..n (static; m = 0 moves nothing).

    ``down_of_m(m)``: the bits a parameter server sends back after aggregating m payloads (default:
    the compressor's ``down_bits``). A hierarchical all-reduce needs whole nodes, which a subset of
    workers does not give: refused.
    """
    if collective_kind(system, compressor.props.summable, compressor.props.collective) == "hierarchical":
        raise ValueError("collective 'hierarchical' cannot run among a varying subset of workers (dropout > 0): "
                         "use 'allreduce', 'rabenseifner', 'tree', 'allgather' or 'ps'")
    sent, recv = np.zeros((n + 1, n), np.int64), np.zeros((n + 1, n), np.int64)
    seconds = np.zeros(n + 1, np.float64)
    for m in range(1, n + 1):
        _, t = compressor_exchange(system, m, compressor, shapes, None if down_of_m is None else down_of_m(m))
        sent[m, :m], recv[m, :m], seconds[m] = t.sent_bits, t.recv_bits, t.seconds
    return ParticipantTables(byte_counts(sent, "sent"), byte_counts(recv, "received"),
                             jnp.asarray(seconds, jnp.float32))


def participant_traffic(tables: ParticipantTables, up: jax.Array):
    """``(sent [N], recv [N], seconds)`` of the collective among the workers with ``up`` (jittable).

    The participants keep their index order (rank r = number of up workers before them); down
    workers move 0 bytes.
    """
    m = jnp.sum(up.astype(jnp.int32))
    rank = jnp.clip(jnp.cumsum(up.astype(jnp.int32)) - 1, 0)
    sent = jnp.where(up, tables.sent[m, rank], 0)
    recv = jnp.where(up, tables.recv[m, rank], 0)
    return sent, recv, tables.seconds[m]


def masked_dynamic_exchange(kind: str, message_bytes: jax.Array, up: jax.Array, down_bytes, link, server_link=None):
    """``network.dynamic_exchange`` among the participants ``up`` only (traced sizes, traced m).

    Same models with n replaced by m = sum(up) and the ring formed by the participants in index order:
      allreduce: S = max over participants, chunks c_j = S // m + (j < S % m), the participant of rank
        r sends 2S - c_{(r+1)%m} - c_{(r+2)%m} and receives 2S - c_r - c_{(r+1)%m} (its predecessor's);
        time = 2 (m-1) alpha + 8 max sent / B.
      allgather: sent_r = sum b - b_{succ(r)}, recv_r = sum b - b_r; time = (m-1) (alpha + 8 max b / B).
      ps: sent = b, recv = down_bytes for participants; m pushes then m pulls (as ``dynamic_exchange``).
    Down workers move 0 bytes; m <= 1 among workers (all-reduce, all-gather) moves nothing.
    """
    up = up.astype(bool)
    b = jnp.where(up, message_bytes.astype(jnp.int32), 0)
    m = jnp.sum(up.astype(jnp.int32))
    mm = jnp.maximum(m, 1)
    rank = jnp.clip(jnp.cumsum(up.astype(jnp.int32)) - 1, 0)
    big = jnp.max(b)
    zero = jnp.zeros_like(b)
    if kind == "allreduce":
        chunk = lambda j: big // mm + (j < big % mm).astype(jnp.int32)
        on = up & (m > 1) & (big > 0)
        sent = jnp.where(on, 2 * big - chunk((rank + 1) % mm) - chunk((rank + 2) % mm), 0)
        recv = jnp.where(on, 2 * big - chunk(rank % mm) - chunk((rank + 1) % mm), 0)
        seconds = 2 * (m - 1) * link.latency_s + 8.0 * jnp.max(sent).astype(jnp.float32) / link.bandwidth_bps
        return sent, recv, jnp.where((m > 1) & (big > 0), seconds, 0.0).astype(jnp.float32)
    if kind == "allgather":
        order = jnp.argsort(~up, stable=True)              # participants first, in index order
        succ = b[order][(rank + 1) % mm]
        total = jnp.sum(b)
        on = up & (m > 1)
        seconds = (m - 1) * (link.latency_s + 8.0 * big.astype(jnp.float32) / link.bandwidth_bps)
        return (jnp.where(on, total - succ, 0), jnp.where(on, total - b, 0),
                jnp.where((m > 1) & (big > 0), seconds, 0.0).astype(jnp.float32))
    if kind == "ps":
        server = server_link or link
        alpha = max(link.latency_s, server.latency_s)
        push = alpha + jnp.maximum(8.0 * big / link.bandwidth_bps,
                                   8.0 * jnp.sum(b).astype(jnp.float32) / server.bandwidth_bps)
        d = jnp.asarray(down_bytes, jnp.int32)
        pull = alpha + jnp.maximum(8.0 * d / link.bandwidth_bps, m * 8.0 * d.astype(jnp.float32) / server.bandwidth_bps)
        seconds = jnp.where(big > 0, push, 0.0) + jnp.where((d > 0) & (m > 0), pull, 0.0)
        return b, jnp.where(up, d, zero), seconds.astype(jnp.float32)
    raise ValueError(f"collective must be one of 'allreduce', 'allgather', 'ps', got {kind!r}")


def variable_exchange(system: System, compressor: Compressor, payloads, shapes, server_state, up=None,
                      down_bytes=None):
    """``(sent [N], recv [N], seconds)`` of variable-length messages priced as sent (jittable).

    One ``network.dynamic_exchange`` (or ``masked_dynamic_exchange`` among the workers with ``up``) per
    sequential round of the method (``round_message_bytes``), one after the other. Hierarchical, tree
    and Rabenseifner all-reduces are priced as a flat ring (their schedules need static sizes). The
    parameter server answers a one-round method with ``down_bytes`` (default: the compressor's
    ``down_message_bytes`` or ``down_bits``) and each round of a multi-round one with the largest
    message of the round (the reduced round message), ``down_bytes`` replacing the last answer.
    """
    from simsgd.compress.base import round_message_bytes

    c = compressor
    if c.traffic is not None:
        raise ValueError("a compressor running its own collective needs fixed-size messages")
    kind = collective_kind(system, c.props.summable, c.props.collective)
    kind = "allreduce" if kind in ("rabenseifner", "tree", "hierarchical") else kind   # priced as a flat ring
    rounds = round_message_bytes(c, payloads, shapes)                                  # [R, N]
    n_rounds = rounds.shape[0]
    if n_rounds == 1 and down_bytes is None:
        down_bytes = (c.down_message_bytes(server_state) if c.down_message_bytes is not None
                      else down_bits(c, shapes, rounds.shape[1]) // 8)
    total = None
    for r in range(n_rounds):
        back = down_bytes if (r == n_rounds - 1 and down_bytes is not None) else jnp.max(rounds[r])
        if up is None:
            t = network.dynamic_exchange(kind, rounds[r], back, system.link, system.server_link)
            part = (t.sent_bytes, t.recv_bytes, t.seconds)
        else:
            part = masked_dynamic_exchange(kind, rounds[r], up, back, system.link, system.server_link)
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total


def masked_step_time(compute_s: jax.Array, up: jax.Array, comm_s, idle_s):
    """``step_time`` over the participants ``up``: ``(duration, slowest, mean idle)``; with nobody up,
    ``(idle_s, 0, 0)`` (the step is skipped and the clock moves by ``idle_s``)."""
    anyone = jnp.any(up)
    slowest = jnp.max(jnp.where(up, compute_s, 0.0))
    m = jnp.maximum(jnp.sum(up.astype(jnp.float32)), 1.0)
    idle = jnp.sum(jnp.where(up, slowest - compute_s, 0.0)) / m
    duration = jnp.where(anyone, slowest + comm_s, jnp.asarray(idle_s, jnp.float32))
    return duration.astype(jnp.float32), slowest, idle


def sync_sgd(task: Task, data: B.WorkerData, *, optimizer: optax.GradientTransformation, batch_size: int | None,
             compressor: Compressor | None = None, system: System = System(), worker_map: str = "auto",
             fuse: bool = True, weights: fsdp.Weights | None = None) -> Algorithm:
    """Synchronous SGD over ``N`` workers (the size of ``data``'s partition).

    Args:
      optimizer: the optax update applied to the aggregated gradient (e.g. ``optax.sgd(0.1, 0.9)``).
      batch_size: examples per worker per step, drawn with replacement; None: each worker's whole local
        data set (full local gradients: distributed gradient descent, as in the EF21 experiments).
      compressor: applied to each worker's gradient (default: identity, exact).
      fuse: with an exact linear compressor, compute one gradient on the fused N*B batch
        (mathematically equal to the mean of the workers' gradients, and as fast as it gets).
      weights: shard the model over the workers (FSDP / ZeRO-3, ``simsgd.algorithms.fsdp``): gradients
        are reduce-scattered to their owners and the weights all-gathered each step, through
        ``weights.compressor`` (ZeRO++ qwZ, QSDP): every worker computes at the dequantized weights.
        None: replicated weights (DDP), the gradients all-reduced or gathered.
    """
    compressor = compressor or identity()
    n = B.num_workers(data)
    grad_fn = jax.value_and_grad(task.loss)
    avail = network.has_availability(system.compute)
    fused = (fuse and compressor.props.linear_exact and batch_size is not None   # full batches: equal worker weights
             and not avail)                                                     # participants: per-worker path
    if avail and collective_kind(system, compressor.props.summable, compressor.props.collective) == "hierarchical":
        raise ValueError("collective 'hierarchical' cannot run among a varying subset of workers (dropout > 0): "
                         "use 'allreduce', 'rabenseifner', 'tree', 'allgather' or 'ps'")
    if weights is not None:
        fsdp.check(weights, compressor, system)
        if avail:
            raise ValueError("sharded weights cannot run with workers dropping out (dropout > 0): an owner that is "
                             "down holds the only copy of its shard")

    def init(key, params):
        if compressor.init_workers is not None:   # workers that differ from the start (EF21-W weights)
            wstates, sstate = compressor.init_workers(params, n)
        else:
            wstate, sstate = compressor.init(params)
            wstates = broadcast_workers(wstate, n)
        if weights is not None and weights.update == "quantized":   # only quantized weights exist, from the start
            params = fsdp.quantize(weights, jax.random.fold_in(key, fsdp.KEY_TAG), params)
        return SyncState(params, optimizer.init(params), wstates, sstate, jnp.zeros((), jnp.float32),
                         network.initial_availability(n) if avail else None)

    def traffic(params):
        shapes = jax.eval_shape(lambda p: p, params)
        if weights is not None:
            return fsdp.traffic(system, n, compressor, weights, shapes)
        return compressor_exchange(system, n, compressor, shapes)[1]

    if system.bucket_bytes is not None and compressor.message_bytes is not None:
        raise ValueError("overlap (bucket_bytes) needs fixed-size messages; this compressor's vary per step")

    def tables(params):
        shapes = jax.eval_shape(lambda p: p, params)
        return participant_tables(system, n, compressor, shapes)

    def bucket_tables(params):
        """(ready fractions [b], seconds [N+1, b]) of the overlapped collective among m participants."""
        shapes = jax.eval_shape(lambda p: p, params)
        rows = [overlapped_comm(system, max(m, 1), compressor, shapes) for m in range(n + 1)]
        secs = np.stack([r[1] for r in rows])
        secs[0] = 0.0
        return rows[0][0], jnp.asarray(secs, jnp.float32)

    def step(key, state: SyncState):
        if avail:
            return step_avail(key, state)
        k_data, k_enc, k_time = jax.random.split(key, 3)
        if batch_size is None:
            batches = jax.vmap(lambda i: B.full(data, i))(jnp.arange(n))
        else:
            batches = jax.vmap(lambda k, i: B.sample(k, data, i, batch_size))(jax.random.split(k_data, n),
                                                                                jnp.arange(n))
        at = state.params                  # where the gradients are taken
        if weights is not None and weights.update == "master":
            at = fsdp.quantize(weights, jax.random.fold_in(key, fsdp.KEY_TAG), state.params)
        if fused:
            loss, g = grad_fn(at, B.stack_workers(batches))
            wstate, sstate = state.worker_state, state.server_state
        else:
            losses, grads = map_workers(lambda b: grad_fn(at, b), worker_map, shared_params=True)(batches)
            payloads, wstate = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
                jax.random.split(k_enc, n), grads, state.worker_state, state.server_state)
            g, sstate = compressor.aggregate(payloads, state.server_state, None)
            loss = jnp.mean(losses)
        updates, opt_state = optimizer.update(g, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if weights is not None and weights.update == "quantized":   # QSDP's analysed update: x <- Q_w(x - eta g)
            params = fsdp.quantize(weights, jax.random.fold_in(key, fsdp.KEY_TAG), params)
        variable = compressor.message_bytes is not None or compressor.down_message_bytes is not None
        if variable and not fused:   # variable-length messages: priced as sent
            shapes = jax.eval_shape(lambda p: p, state.params)
            sent, recv, comm_s = variable_exchange(system, compressor, payloads, shapes, sstate)
        else:
            t = traffic(state.params)
            comm_s, sent, recv = jnp.float32(t.seconds), byte_counts(t.sent_bits, "sent"), \
                byte_counts(t.recv_bits, "received")
        duration, slowest, idle = step_time(network.step_seconds(k_time, system.compute, n), comm_s)
        if system.bucket_bytes is not None:   # overlapped with the backward pass: only the exposed part counts
            shapes = jax.eval_shape(lambda p: p, state.params)
            ready, seconds = overlapped_comm(system, n, compressor, shapes)
            duration = overlap.overlapped_step(slowest, ready, seconds, system.backward_fraction)
            comm_s = duration - slowest
        clock = state.clock + duration
        info = Info(loss, clock, slowest, comm_s, idle, sent, recv, {})
        return SyncState(params, opt_state, wstate, sstate, clock), info

    def step_avail(key, state: SyncState):
        """The step among the workers that are up (see the module docstring)."""
        up = network.next_availability(key, state.up, system.compute)
        anyone = jnp.any(up)
        w = up.astype(jnp.float32)
        k_data, k_enc, k_time = jax.random.split(key, 3)
        if batch_size is None:
            batches = jax.vmap(lambda i: B.full(data, i))(jnp.arange(n))
        else:
            batches = jax.vmap(lambda k, i: B.sample(k, data, i, batch_size))(jax.random.split(k_data, n),
                                                                                jnp.arange(n))
        losses, grads = map_workers(lambda b: grad_fn(state.params, b), worker_map, shared_params=True)(batches)
        payloads, wstate = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
            jax.random.split(k_enc, n), grads, state.worker_state, state.server_state)
        wstate = jax.tree.map(lambda new, old: jnp.where(up.reshape((n,) + (1,) * (new.ndim - 1)), new, old),
                              wstate, state.worker_state)                      # down workers keep their state
        g, sstate = compressor.aggregate(payloads, state.server_state, jnp.where(anyone, w, 1.0))
        loss = jnp.where(anyone, jnp.sum(w * losses) / jnp.maximum(jnp.sum(w), 1.0), jnp.mean(losses))
        updates, opt_state = optimizer.update(g, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        skip = lambda new, old: jax.tree.map(lambda a, b: jnp.where(anyone, a, b), new, old)   # nobody up: no update
        params, opt_state, sstate = skip(params, state.params), skip(opt_state, state.opt_state), \
            skip(sstate, state.server_state)
        variable = compressor.message_bytes is not None or compressor.down_message_bytes is not None
        if variable:   # variable-length messages: priced as sent, among the participants
            shapes = jax.eval_shape(lambda p: p, state.params)
            sent, recv, comm_s = variable_exchange(system, compressor, payloads, shapes, sstate, up)
        else:
            sent, recv, comm_s = participant_traffic(tables(state.params), up)
        compute = network.step_seconds(k_time, system.compute, n)
        duration, slowest, idle = masked_step_time(compute, up, comm_s, system.compute.seconds_per_step)
        if system.bucket_bytes is not None:   # overlapped with the backward pass: only the exposed part counts
            ready, secs = bucket_tables(state.params)
            m = jnp.sum(up.astype(jnp.int32))
            duration = jnp.where(anyone, overlap.overlapped_step(slowest, ready, secs[m], system.backward_fraction),
                                 duration)
            comm_s = jnp.where(anyone, duration - slowest, 0.0)
        comm_s = jnp.where(anyone, comm_s, 0.0).astype(jnp.float32)
        clock = state.clock + duration
        info = Info(loss, clock, slowest, comm_s, idle, sent, recv, {"participants": jnp.sum(up.astype(jnp.int32))})
        return SyncState(params, opt_state, wstate, sstate, clock, up), info

    return Algorithm(init, step, lambda s: s.params, "sync_sgd", n)
