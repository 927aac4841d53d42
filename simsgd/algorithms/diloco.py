"""DiLoCo and its overlapped variants: Streaming DiLoCo, eager / delayed outer updates, CO2.

All of them run N workers (every worker takes part, uniform weights). One ``step`` is one round of
H = ``local_steps`` inner steps of ``inner_optimizer`` on every worker (minibatches of ``batch_size``
drawn with replacement from the worker's own data), plus the outer communication of that round.
The inner optimizer state (e.g. AdamW's moments and step count) of every worker is KEPT across rounds,
never reset or averaged (OpenDiLoCo keeps it; research catalog 0.1 item 3). Pseudo-gradients use the
DiLoCo sign, old minus new: Delta_i = theta - theta_i, fed to a minimising optax ``outer_optimizer``
(theta <- theta + outer(Delta)). The default outer optimizer is PyTorch's SGD(nesterov=True),
``optax.sgd(0.7, momentum=0.9, nesterov=True)``: b <- mu b + Delta; theta <- theta - lr (Delta + mu b).

* DiLoCo (Douillard et al. 2023, Alg. 1): each worker starts the round from theta^(t-1), takes H inner
  steps, Delta = mean_i (theta^(t-1) - theta_i) (one all-reduce; optionally every Delta_i goes through
  any mean-aggregating simsgd compressor and Delta is the compressor's aggregate), then
  theta^(t) = OuterOpt(theta^(t-1), Delta). Outer SGD with lr 1 and no momentum is plain parameter
  averaging (Local SGD that keeps its inner state).
* Delayed outer gradients (Kale, Douillard, Donchev 2025, Sec. 2 "naive delayed"): the all-reduce of
  round t runs during the inner phase of round t+1; at the end of round t the outer step uses the
  average of round t-1: theta^(t) = OuterOpt(theta^(t-1), Delta-bar^(t-1)) (Delta-bar^(0) = 0).
* Eager updates (same paper): every worker applies its own outer step to
      Delta~_i^(t) = (1/N) Delta_i^(t) + (1/N) sum_{j != i} Delta_j^(t-1)
                   = Delta-bar^(t-1) - (1/N) Delta_i^(t-1) + (1/N) Delta_i^(t),
  its fresh local outer gradient standing in for its own share of the still-travelling average. Outer
  parameters and outer optimizer states become worker-specific; ``params(state)`` is their mean. With a
  compressor, Delta-bar is the aggregate of the compressed messages and the subtracted own share is the
  worker's own decoded message, so sum_{j != i} is exactly the others' part of what arrived.
* CO2 (Sun et al., ICLR 2024): local updating plus an asynchronous all-reduce that overlaps fully with
  the next local phase, so the outer momentum step of round t uses the one-round-stale average:
  m <- beta m + g, theta <- theta - lr m with g = Delta-bar^(t-1) (heavy-ball outer momentum,
  ``co2_outer``). Its two stabilisers are implemented in a form we could NOT confirm against the paper
  (the text of its Sec. 3 / Alg. 1 was not retrievable here): the staleness gap penalty scales the stale
  g by 1 / (1 + lambda ||theta^(t-1) - theta^(t-2)|| / ||g||) (the outer parameters moved since g's base),
  and outer momentum clipping rescales m to global L2 norm <= ``momentum_clip``. Both are off by
  default (lambda = 0, no clip), where CO2 is exactly the delayed variant with heavy-ball momentum.
  CO2 all-reduces the parameters rather than Delta: the same d values, so the same bytes.

Simulated clock: the slowest worker's H steps (``system.compute``), plus the collective of the
round's message (``simsgd.algorithms.base.exchange``; the compressor's exact ``payload_bits``).
DiLoCo blocks: a round costs compute + comm. The overlapped variants (delayed, eager, CO2) hide the
all-reduce behind the next inner phase: a round costs max(compute, comm). ``Info.comm_s`` is the
exposed communication, ``extra["overlapped_s"]`` the hidden part, ``extra["peak_bytes"]`` the largest
message one worker sends at any single inner step (the whole Delta here; Streaming DiLoCo cuts it by P).

Streaming DiLoCo (``streaming_diloco``; Douillard et al. 2025; schedule as torchft's
``_StreamingDiLoCoFragment``): the parameter leaves are split into P fragments, ``pattern="strided"``
(leaf l in fragment l mod P, the paper's preferred pattern: fragment p holds layers p, p+P, ...) or
``"contiguous"`` (P consecutive runs of leaves, ``np.array_split``). Every fragment has its own global
copy theta_p, outer optimizer state and compressor state. Fragment p is sent at inner step
o_p = floor(H (p+1) / P) of every round (torchft's ``fragment_sync_offset``; o_{P-1} = H):
Delta_{i,p} = theta_p - theta_{i,p}, all-reduced (optionally compressed, e.g. fp16 or a 4-bit qsdp);
tau = ``overlap_steps`` inner steps later (the last fragment's apply falls in the next round) the
workers apply theta_p <- OuterOpt_p(theta_p, Delta-bar_p) and merge with their CURRENT local fragment:
theta_{i,p} <- alpha theta_{i,p} + (1 - alpha) theta_p (``alpha`` = torchft's ``fragment_update_alpha``;
alpha = 0 replaces the local fragment by the global one). torchft requires tau < H / P and H >= P
(one fragment in flight at a time); so does this. P = 1, tau = 0, alpha = 0 is DiLoCo. A fragment's
all-reduce overlaps the tau inner steps after its send: the round costs
compute + sum_p max(0, comm_p - tau * compute / H). ``peak_bytes`` is the largest fragment's message.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simsgd import batches as B
from simsgd import network
from simsgd.algorithms.base import Algorithm, Info, System, byte_counts, compressor_exchange, step_time
from simsgd.compress import Compressor, identity
from simsgd.task import Task
from simsgd.tree import broadcast_workers, sq_norm, wmean
from simsgd.workers import map_workers

MODES = ("sync", "delayed", "eager", "co2")
PATTERNS = ("strided", "contiguous")


def nesterov(lr: float = 0.7, momentum: float = 0.9) -> optax.GradientTransformation:
    """DiLoCo's outer optimizer: PyTorch SGD(nesterov=True), b <- mu b + g; update = -lr (g + mu b)."""
    return optax.sgd(lr, momentum=momentum, nesterov=True)


class CO2OuterState(NamedTuple):
    m: object   # outer momentum


def co2_outer(lr: float = 0.7, momentum: float = 0.9, clip: float | None = None) -> optax.GradientTransformation:
    """CO2's outer step: m <- beta m + g; m <- m min(1, clip / ||m||) (global L2 norm, if ``clip``);
    update = -lr m. The clipped momentum is what is kept (clipping form unverified, module docstring)."""
    if not float(lr) > 0:
        raise ValueError(f"co2 outer lr must be > 0, got {lr!r}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"co2 outer momentum must be in [0, 1), got {momentum!r}")
    if clip is not None and not float(clip) > 0:
        raise ValueError(f"momentum_clip must be > 0 or None, got {clip!r}")

    def init(params):
        return CO2OuterState(jax.tree.map(jnp.zeros_like, params))

    def update(g, state, params=None):
        del params
        m = jax.tree.map(lambda a, b: momentum * a + b, state.m, g)
        if clip is not None:
            norm = jnp.sqrt(sq_norm(m))
            s = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
            m = jax.tree.map(lambda a: (a * s).astype(a.dtype), m)
        return jax.tree.map(lambda a: (-lr * a).astype(a.dtype), m), CO2OuterState(m)

    return optax.GradientTransformation(init, update)


# ---- shared pieces -------------------------------------------------------------------------------------

def _check(local_steps, batch_size, compressor: Compressor):
    if isinstance(local_steps, bool) or int(local_steps) != local_steps or int(local_steps) < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if compressor.props.aggregation not in ("mean", "wire_mean") or compressor.props.replaces_optimizer:
        raise ValueError(f"compressor: DiLoCo needs a mean-aggregating compressor that leaves the outer optimizer "
                         f"alone (aggregation 'mean' or 'wire_mean'), got {compressor.props.aggregation!r}")
    if compressor.message_bytes is not None or compressor.down_message_bytes is not None:
        raise ValueError("compressor: variable-length messages are not supported by the DiLoCo family; use a "
                         "fixed-size compressor (identity, fp16, bf16, qsdp, qsgd, topk, ...)")
    return int(local_steps), int(batch_size)


def _local_runner(task: Task, data: B.WorkerData, inner_optimizer, batch_size: int, worker_map: str):
    """``run(key, x [N], o [N], start, length) -> (x, o, summed loss)``: ``length`` inner steps of every
    worker, the s-th drawing its minibatch with fold_in(fold_in(key, s), worker)."""
    grad_fn = jax.value_and_grad(task.loss)
    n = B.num_workers(data)

    def run(key, x, o, start: int, length: int):
        if length == 0:
            return x, o, jnp.zeros((), jnp.float32)

        def one(p, st, w):
            def body(carry, s):
                p, st = carry
                batch = B.sample(jax.random.fold_in(jax.random.fold_in(key, s), w), data, w, batch_size)
                loss, g = grad_fn(p, batch)
                u, st = inner_optimizer.update(g, st, p)
                return (optax.apply_updates(p, u), st), loss

            (p, st), losses = jax.lax.scan(body, (p, st), start + jnp.arange(length))
            return p, st, jnp.sum(losses)

        x, o, sums = map_workers(one, worker_map)(x, o, jnp.arange(n))
        return x, o, jnp.sum(sums)

    return run


def _traffic(system: System, n: int, compressor: Compressor, shapes):
    return compressor_exchange(system, n, compressor, shapes)[1]


def _shapes(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


# ---- DiLoCo, delayed, eager, CO2 -----------------------------------------------------------------------

class DiLoCoState(NamedTuple):
    theta: object         # [N] each worker's outer parameters (identical across workers except for eager)
    inner: object         # [N] inner optimizer states, kept across rounds
    outer: object         # [N] outer optimizer states (identical across workers except for eager)
    pending: object       # the in-flight mean pseudo-gradient Delta-bar^(t-1) (overlapped modes), else ()
    own_prev: object      # [N] each worker's own decoded Delta_i^(t-1) (eager), else ()
    theta_prev: object    # [N] outer parameters of the previous round (CO2 staleness penalty), else ()
    worker_state: object  # [N] compressor states
    server_state: object
    round: jax.Array
    clock: jax.Array


def _diloco_engine(task, data, *, inner_optimizer, outer_optimizer, local_steps, batch_size, compressor, system,
                   worker_map, mode, staleness_penalty=0.0, name):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    compressor = compressor or identity()
    h, bs = _check(local_steps, batch_size, compressor)
    if not (np.isfinite(staleness_penalty) and staleness_penalty >= 0):
        raise ValueError(f"staleness_penalty must be a finite number >= 0, got {staleness_penalty!r}")
    n = B.num_workers(data)
    run_local = _local_runner(task, data, inner_optimizer, bs, worker_map)
    overlapped = mode != "sync"

    def init(key, params):
        del key
        wstate, sstate = compressor.init(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return DiLoCoState(
            broadcast_workers(params, n), broadcast_workers(inner_optimizer.init(params), n),
            broadcast_workers(outer_optimizer.init(params), n), zeros if overlapped else (),
            broadcast_workers(zeros, n) if mode == "eager" else (),
            broadcast_workers(params, n) if mode == "co2" else (),
            broadcast_workers(wstate, n), sstate, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def step(key, state: DiLoCoState):
        k_data, k_enc, k_time = jax.random.split(key, 3)
        x, inner, loss_sum = run_local(k_data, state.theta, state.inner, 0, h)
        delta = jax.tree.map(jnp.subtract, state.theta, x)                       # [N] theta - theta_i
        payloads, wstate = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
            jax.random.split(k_enc, n), delta, state.worker_state, state.server_state)
        avg, sstate = compressor.aggregate(payloads, state.server_state, None)
        pending, own_prev, theta_prev = state.pending, state.own_prev, state.theta_prev
        if mode == "sync":
            g = broadcast_workers(avg, n)
        elif mode == "eager":
            own = jax.vmap(compressor.decode, in_axes=(0, None))(payloads, state.server_state)
            g = jax.tree.map(lambda p, op, d: p[None] + (d - op) / n, state.pending, state.own_prev, delta)
            pending, own_prev = avg, own
        else:
            g = broadcast_workers(state.pending, n)
            pending = avg
            if mode == "co2" and staleness_penalty > 0:
                gap = jnp.sqrt(sq_norm(jax.tree.map(lambda a, b: a[0] - b[0], state.theta, state.theta_prev)))
                gn = jnp.sqrt(sq_norm(state.pending))
                factor = 1.0 / (1.0 + staleness_penalty * gap / jnp.maximum(gn, 1e-30))
                g = jax.tree.map(lambda a: (a * factor).astype(a.dtype), g)
            if mode == "co2":
                theta_prev = state.theta
        updates, outer = jax.vmap(outer_optimizer.update)(g, state.outer, state.theta)
        theta = optax.apply_updates(state.theta, updates)

        t = _traffic(system, n, compressor, _shapes(avg))
        compute = network.step_seconds(k_time, system.compute, n, steps=h)
        duration, slowest, idle = step_time(compute, t.seconds)
        comm = jnp.float32(t.seconds)
        if overlapped:      # hidden behind the next inner phase
            duration = jnp.maximum(slowest, comm)
            exposed = jnp.maximum(comm - slowest, 0.0)
        else:
            exposed = comm
        clock = state.clock + duration
        sent = byte_counts(t.sent_bits, "sent")
        info = Info(loss_sum / (n * h), clock, slowest, exposed, idle, sent, byte_counts(t.recv_bits, "received"),
                    {"overlapped_s": comm - exposed, "peak_bytes": jnp.max(sent).astype(jnp.float32),
                     "outer_norm": jnp.sqrt(sq_norm(avg))})
        return DiLoCoState(theta, inner, outer, pending, own_prev, theta_prev, wstate, sstate, state.round + 1,
                           clock), info

    return Algorithm(init, step, lambda s: wmean(s.theta), name, n)


def diloco(task: Task, data: B.WorkerData, *, inner_optimizer: optax.GradientTransformation,
           outer_optimizer: optax.GradientTransformation | None = None, local_steps: int, batch_size: int,
           compressor: Compressor | None = None, system: System = System(), worker_map: str = "auto") -> Algorithm:
    """DiLoCo (Douillard et al. 2023, Alg. 1); outer default: Nesterov lr 0.7, momentum 0.9 (PyTorch form)."""
    return _diloco_engine(task, data, inner_optimizer=inner_optimizer, outer_optimizer=outer_optimizer or nesterov(),
                          local_steps=local_steps, batch_size=batch_size, compressor=compressor, system=system,
                          worker_map=worker_map, mode="sync", name="diloco")


def eager_diloco(task: Task, data: B.WorkerData, *, inner_optimizer: optax.GradientTransformation,
                 outer_optimizer: optax.GradientTransformation | None = None, local_steps: int, batch_size: int,
                 variant: str = "eager", compressor: Compressor | None = None, system: System = System(),
                 worker_map: str = "auto") -> Algorithm:
    """DiLoCo with the outer all-reduce overlapped with the next inner phase (Kale et al. 2025):
    ``variant="eager"`` (worker-specific outer steps on the eager mixture) or ``"delayed"`` (the naive
    one-round-delayed average). See the module docstring."""
    if variant not in ("eager", "delayed"):
        raise ValueError(f"variant must be 'eager' or 'delayed', got {variant!r}")
    return _diloco_engine(task, data, inner_optimizer=inner_optimizer, outer_optimizer=outer_optimizer or nesterov(),
                          local_steps=local_steps, batch_size=batch_size, compressor=compressor, system=system,
                          worker_map=worker_map, mode=variant, name=f"{variant}_diloco")


def co2(task: Task, data: B.WorkerData, *, inner_optimizer: optax.GradientTransformation, local_steps: int,
        batch_size: int, outer_lr: float = 0.7, outer_momentum: float = 0.9, staleness_penalty: float = 0.0,
        momentum_clip: float | None = None, compressor: Compressor | None = None, system: System = System(),
        worker_map: str = "auto") -> Algorithm:
    """CO2 (Sun et al., ICLR 2024): one-round-stale outer momentum step, fully overlapped all-reduce; the
    staleness penalty and momentum clipping in the (unverified) form of the module docstring."""
    return _diloco_engine(task, data, inner_optimizer=inner_optimizer,
                          outer_optimizer=co2_outer(outer_lr, outer_momentum, momentum_clip), local_steps=local_steps,
                          batch_size=batch_size, compressor=compressor, system=system, worker_map=worker_map,
                          mode="co2", staleness_penalty=float(staleness_penalty), name="co2")


# ---- Streaming DiLoCo ------------------------------------------------------------------------------------

def fragment_leaves(num_leaves: int, fragments: int, pattern: str = "strided") -> list[list[int]]:
    """Leaf indices of each fragment: strided (leaf l -> l mod P) or contiguous runs."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if isinstance(fragments, bool) or int(fragments) != fragments or not 1 <= int(fragments) <= num_leaves:
        raise ValueError(f"fragments must be an integer in 1..{num_leaves} (the model's parameter leaves), "
                         f"got {fragments!r}")
    p = int(fragments)
    if pattern == "strided":
        return [list(range(f, num_leaves, p)) for f in range(p)]
    return [a.tolist() for a in np.array_split(np.arange(num_leaves), p)]


def fragment_offsets(local_steps: int, fragments: int) -> list[int]:
    """o_p = floor(H (p+1) / P): the inner step of the round at which fragment p is sent (torchft)."""
    return [int(np.floor(local_steps / fragments * (p + 1))) for p in range(fragments)]


class StreamingState(NamedTuple):
    x: object             # [N] local parameters
    inner: object         # [N] inner optimizer states
    glob: object          # global parameters theta (one copy; each fragment updated at its own apply)
    outer: tuple          # P outer optimizer states, each on its fragment's list of leaves
    pending: tuple        # P in-flight mean pseudo-gradients (lists of leaves)
    worker_state: tuple   # P compressor worker states, each [N]
    server_state: tuple   # P compressor server states
    round: jax.Array
    clock: jax.Array


def streaming_diloco(task: Task, data: B.WorkerData, *, inner_optimizer: optax.GradientTransformation,
                     outer_optimizer: optax.GradientTransformation | None = None, local_steps: int, batch_size: int,
                     fragments: int = 2, overlap_steps: int = 0, alpha: float = 0.0, pattern: str = "strided",
                     compressor: Compressor | None = None, system: System = System(),
                     worker_map: str = "auto") -> Algorithm:
    """Streaming DiLoCo (Douillard et al. 2025); see the module docstring for the schedule and the clock."""
    compressor = compressor or identity()
    outer_optimizer = outer_optimizer or nesterov()
    h, bs = _check(local_steps, batch_size, compressor)
    if isinstance(overlap_steps, bool) or int(overlap_steps) != overlap_steps or int(overlap_steps) < 0:
        raise ValueError(f"overlap_steps must be an integer >= 0, got {overlap_steps!r}")
    tau = int(overlap_steps)
    if not (np.isfinite(alpha) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if isinstance(fragments, bool) or int(fragments) != fragments or int(fragments) < 1:
        raise ValueError(f"fragments must be an integer >= 1, got {fragments!r}")
    P = int(fragments)
    if h < P:
        raise ValueError(f"local_steps ({h}) must be >= fragments ({P}): one fragment is sent at a time")
    if tau >= h // P:
        raise ValueError(f"overlap_steps must be < local_steps // fragments = {h // P} (a fragment must be applied "
                         f"before the next one is sent), got {tau}")
    n = B.num_workers(data)
    run_local = _local_runner(task, data, inner_optimizer, bs, worker_map)
    offsets = fragment_offsets(h, P)
    # the round's events (step, order, kind, fragment): sends before applies at the same step
    events = []
    for p, o in enumerate(offsets):
        events.append((o, 0, "send", p))
        if o + tau <= h:
            events.append((o + tau, 1, "apply", p))
        else:                       # the last fragment's apply falls tau steps into the next round
            events.append((o + tau - h, 1, "apply_prev", p))
    events.sort()

    def frags(tree):
        leaves = jax.tree.leaves(tree)
        return [[leaves[i] for i in f] for f in fragment_leaves(len(leaves), P, pattern)]

    def init(key, params):
        del key
        parts = frags(params)
        wst, sst = zip(*[compressor.init(f) for f in parts])
        return StreamingState(broadcast_workers(params, n), broadcast_workers(inner_optimizer.init(params), n), params,
                              tuple(outer_optimizer.init(f) for f in parts),
                              tuple(jax.tree.map(jnp.zeros_like, f) for f in parts),
                              tuple(broadcast_workers(w, n) for w in wst), tuple(sst), jnp.zeros((), jnp.int32),
                              jnp.zeros((), jnp.float32))

    def step(key, state: StreamingState):
        k_data, k_enc, k_time = jax.random.split(key, 3)
        xl, treedef = jax.tree.flatten(state.x)
        gl = jax.tree.leaves(state.glob)
        idx = fragment_leaves(len(gl), P, pattern)
        inner = state.inner
        outer, pending = list(state.outer), list(state.pending)
        wstate, sstate = list(state.worker_state), list(state.server_state)
        loss_sum = jnp.zeros((), jnp.float32)
        cur = 0
        for s, _, kind, p in events:
            if s > cur:
                x, inner, ls = run_local(k_data, jax.tree.unflatten(treedef, xl), inner, cur, s - cur)
                xl, loss_sum, cur = jax.tree.leaves(x), loss_sum + ls, s
            if kind == "send":
                delta = [gl[i][None] - xl[i] for i in idx[p]]                     # [N] theta_p - theta_{i,p}
                payloads, wstate[p] = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
                    jax.random.split(jax.random.fold_in(k_enc, p), n), delta, wstate[p], sstate[p])
                pending[p], sstate[p] = compressor.aggregate(payloads, sstate[p], None)
            else:
                sub = [gl[i] for i in idx[p]]
                upd, new_outer = outer_optimizer.update(pending[p], outer[p], sub)
                new_sub = optax.apply_updates(sub, upd)
                new_x = [alpha * xl[i] + (1.0 - alpha) * g[None] for i, g in zip(idx[p], new_sub)]
                if kind == "apply_prev":       # nothing was sent before the first round
                    live = state.round > 0
                    new_sub = [jnp.where(live, a, b) for a, b in zip(new_sub, sub)]
                    new_x = [jnp.where(live, a, xl[i]) for a, i in zip(new_x, idx[p])]
                    new_outer = jax.tree.map(lambda a, b: jnp.where(live, a, b), new_outer, outer[p])
                outer[p] = new_outer
                for j, i in enumerate(idx[p]):
                    gl[i] = new_sub[j].astype(gl[i].dtype)
                    xl[i] = new_x[j].astype(xl[i].dtype)
        if cur < h:
            x, inner, ls = run_local(k_data, jax.tree.unflatten(treedef, xl), inner, cur, h - cur)
            xl, loss_sum = jax.tree.leaves(x), loss_sum + ls

        traffic = [_traffic(system, n, compressor, _shapes(pending[p])) for p in range(P)]
        sent_bits = sum(t.sent_bits for t in traffic)
        recv_bits = sum(t.recv_bits for t in traffic)
        compute = network.step_seconds(k_time, system.compute, n, steps=h)
        _, slowest, idle = step_time(compute, 0.0)
        window = tau * slowest / h
        comms = [jnp.float32(t.seconds) for t in traffic]
        exposed = sum(jnp.maximum(c - window, 0.0) for c in comms)
        total = sum(comms)
        duration = slowest + exposed
        clock = state.clock + duration
        peak = max(int(t.sent_bits.max()) // 8 for t in traffic)
        info = Info(loss_sum / (n * h), clock, slowest, exposed, idle, byte_counts(sent_bits, "sent"),
                    byte_counts(recv_bits, "received"),
                    {"overlapped_s": total - exposed, "peak_bytes": jnp.float32(peak)})
        return StreamingState(jax.tree.unflatten(treedef, xl), inner, jax.tree.unflatten(treedef, gl), tuple(outer),
                              tuple(pending), tuple(wstate), tuple(sstate), state.round + 1, clock), info

    return Algorithm(init, step, lambda s: wmean(s.x), "streaming_diloco", n)
