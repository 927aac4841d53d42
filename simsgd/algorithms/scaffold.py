"""SCAFFOLD (stochastic controlled averaging) and its compressed single-uplink forms SCALLION / SCAFCOM.

SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, ICML 2020, Alg. 1). Server state: the model
x and the server control variate c; client state: a control variate c_i for EVERY one of the N
clients, kept across rounds whether or not the client is sampled (here stacked [N, ...] on the
device: N d floats of memory). All controls start at 0. One ``step`` is one round:

    sample S (|S| = m, without replacement); send (x, c) to each i in S
    client i:  y <- x;  K times  y <- y - eta_l (g_i(y) - c_i + c)          (Eq. (3))
               c_i+ = g_i(x)                             Option I: one more minibatch gradient at x
                    = c_i - c + (x - y) / (K eta_l)      Option II
               send dy_i = y - x and dc_i = c_i+ - c_i;  c_i <- c_i+
    server:    x <- x + (eta_g / |S|) sum_S dy_i;   c <- c + (1/N) sum_S dc_i   (Eq. (5), N = ALL clients)

(x - y)/(K eta_l) is computed as the mean of the K corrected directions (g - c_i + c), which equals it
exactly in real arithmetic (plain-SGD local steps) and avoids float32 cancellation in x - y. The local
optimizer is plain SGD with learning rate eta_l (``lr``): Option II's formula assumes it. Nothing but
c_i (and the compressor's state) persists on a client. Traffic per sampled client and round: 2 d
down (x, c) and 2 d up (dy, dc), each leaf in its dtype, through the system's collective (a
parameter server by default). ``local_steps`` = K steps of ``batch_size`` drawn with replacement, or
``epochs`` E passes in shuffled batches (K_i = E ceil(n_i / B), each client's own K_i in Option II).

Huang, Li & Li (ICLR 2024, "Stochastic Controlled Averaging for Federated Learning with Communication
Compression", arXiv 2308.08165) observe that both SCAFFOLD messages are functions of ONE vector: with
gbar_i = (x - y)/(K eta_l) + c_i - c (the mean local gradient) and delta_i = gbar_i - c_i,
    dc_i = delta_i,   dy_i = -eta_l K (c + delta_i),
so the client may send delta_i alone and the server apply
    x <- x - eta_g eta_l K (c + (1/|S|) sum_S delta_i),   c <- c + (1/N) sum_S delta_i,   c_i <- c_i + delta_i,
which is SCAFFOLD Option II exactly, with half the uplink (tested: ``scallion`` with the identity
compressor and alpha = 1 equals ``scaffold`` Option II). On top of it:

* SCALLION (unbiased compressors): send C(delta_i) and damp the control updates by alpha in [0, 1]:
  c_i <- c_i + alpha C(delta_i), c <- c + (alpha/N) sum_S C(delta_i); the model update uses the
  undamped messages, x <- x - eta_g eta_l K (c + mean_S C(delta_i)) (a DIANA-style shift). The paper's
  analysis asks alpha <= 1/(1 + omega) for omega-unbiased compressors (e.g. random-k scaled by d/k,
  omega = d/k - 1).
* SCAFCOM (biased / contractive compressors): a client momentum v_i (persistent, all clients, starts
  at 0) replaces gbar_i: v_i <- (1 - beta) v_i + beta gbar_i, delta_i = v_i - c_i, send C(delta_i),
  c_i <- c_i + C(delta_i), and the same server update with alpha = 1. beta = 1 with the identity is
  SCAFFOLD Option II again (tested).

What could be confirmed: the single-vector reformulation (derived above and tested against
Karimireddy et al.'s Alg. 1), the names, the split "SCALLION: unbiased, SCAFCOM: biased with local
momentum", the scaling factor alpha and the momentum beta (abstract, ICLR reviews). What could NOT be
read in the paper text here (only its first pages were reachable): whether SCALLION's model update
uses the undamped C(delta_i) (implemented, as in DIANA) or alpha C(delta_i) (a third-party Flower
implementation puts alpha inside the message), and whether SCAFCOM also damps by alpha (not
implemented). The uplink message is any mean-aggregating ``simsgd`` compressor (``randk``, ``topk``,
``qsgd``, error-feedback wrappers...): its exact ``payload_bits`` (or ``message_bytes`` for
variable-length formats) prices the uplink; the downlink is x and c at full precision (2 d).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import batches as B
from simsgd import network
from simsgd.algorithms.base import (Algorithm, Info, System, byte_counts, compressor_exchange, exchange,
                                    scatter_bytes, step_time)
from simsgd.algorithms.sync import variable_exchange
from simsgd.compress import Compressor, identity
from simsgd.task import Task
from simsgd.tree import broadcast_workers, sq_norm, take_worker, tree_bits
from simsgd.workers import map_workers

VARIANTS = ("scaffold", "scallion", "scafcom")
MEAN_AGGREGATIONS = ("mean", "wire_mean", "shared_scale_mean")   # aggregate = mean of the decoded messages


class ScaffoldState(NamedTuple):
    params: object           # x, the server model
    control: object          # c, the server control variate
    client_control: object   # c_i of all N clients, stacked [N, ...]
    momentum: object         # SCAFCOM's v_i of all N clients [N, ...]; () otherwise
    worker_state: object     # compressor state of all N clients [N, ...]
    server_state: object     # compressor server state
    clock: jax.Array


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _build(task: Task, data: B.WorkerData, variant: str, *, lr, local_steps, epochs, batch_size, clients_per_round,
           server_lr, option, compressor, alpha, beta, system, worker_map, name) -> Algorithm:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    lr, server_lr = _positive("lr", lr), _positive("server_lr", server_lr)
    n_all = B.num_workers(data)
    m = n_all if clients_per_round is None else int(clients_per_round)
    if not 1 <= m <= n_all:
        raise ValueError(f"clients_per_round must be in 1..{n_all}, got {clients_per_round!r}")
    if option not in ("I", "II"):
        raise ValueError(f"option must be 'I' (gradient at x) or 'II' (from the local steps), got {option!r}")
    if (local_steps is None) == (epochs is None):
        raise ValueError("give exactly one of local_steps (K) or epochs (E)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not 0.0 < float(beta) <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    alpha, beta = float(alpha), float(beta)
    compressor = compressor or identity()
    if compressor.props.aggregation not in MEAN_AGGREGATIONS or compressor.props.replaces_optimizer:
        raise ValueError(f"compressor must average decoded messages (aggregation one of {MEAN_AGGREGATIONS}) and carry "
                         f"no optimizer of its "
                         f"own; got aggregation {compressor.props.aggregation!r}, replaces_optimizer "
                         f"{compressor.props.replaces_optimizer}")
    plan = B.local_plan(data, local_steps=local_steps, epochs=epochs, batch_size=batch_size)
    b, length = plan.batch_size, plan.length
    grad_fn = jax.value_and_grad(task.loss)
    extra_grad = variant == "scaffold" and option == "I"

    def local_train(key, client, x, c, ci):
        """Client ``client``'s K corrected SGD steps from x: (y, mean corrected direction u, loss, K_i, g(x))."""
        k_order, k_steps, k_fresh = jax.random.split(key, 3)
        batch_at, n_steps = B.local_batches(plan, k_order, k_steps, data, client)

        def body(carry, s):
            y, dsum = carry
            batch = batch_at(s)
            loss, g = grad_fn(y, batch)
            d = jax.tree.map(lambda gi, cii, cc: gi - cii + cc, g, ci, c)        # g_i(y) - c_i + c
            y2 = jax.tree.map(lambda a, di: a - lr * di, y, d)
            d2 = jax.tree.map(jnp.add, dsum, d)
            if epochs is None:
                return (y2, d2), loss
            active = s < n_steps
            keep = lambda new, old: jax.tree.map(lambda a, o: jnp.where(active, a, o), new, old)
            return (keep(y2, y), keep(d2, dsum)), jnp.where(active, loss, 0.0)

        zero = jax.tree.map(jnp.zeros_like, x)
        (y, dsum), losses = jax.lax.scan(body, (x, zero), jnp.arange(length))
        k = n_steps.astype(jnp.float32)
        u = jax.tree.map(lambda a: (a / k).astype(a.dtype), dsum)            # = (x - y) / (K eta_l)
        if extra_grad:                                                         # Option I: a fresh minibatch at x
            if epochs is not None:
                batch = B.epoch_batch(B.epoch_order(k_fresh, data, client), data, client, 0, b)
            else:
                batch = B.sample(k_fresh, data, client, b)
            gx = grad_fn(x, batch)[1]
        else:
            gx = zero
        return y, u, jnp.sum(losses) / k, n_steps, gx

    def init(key, params):
        del key
        wstate, sstate = compressor.init(params)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaffoldState(params, zeros, broadcast_workers(zeros, n_all),
                             broadcast_workers(zeros, n_all) if variant == "scafcom" else (),
                             broadcast_workers(wstate, n_all), sstate, jnp.zeros((), jnp.float32))

    def step(key, state: ScaffoldState):
        k_sel, k_local, k_enc, k_time = jax.random.split(key, 4)
        clients = jax.random.permutation(k_sel, n_all)[:m] if m < n_all else jnp.arange(n_all)
        x, c = state.params, state.control
        ci = take_worker(state.client_control, clients)
        y, u, losses, n_steps, gx = map_workers(lambda k, i, cc: local_train(k, i, x, c, cc), worker_map)(
            jax.random.split(k_local, m), clients, ci)
        mean = lambda t: jax.tree.map(lambda a: jnp.mean(a, axis=0), t)
        shapes = jax.eval_shape(lambda p: p, x)
        dense = tree_bits(shapes)
        momentum, wst, sstate = state.momentum, take_worker(state.worker_state, clients), state.server_state
        if variant == "scaffold":
            if option == "I":
                ci_new = gx
            else:   # c_i - c + (x - y)/(K eta_l)
                ci_new = jax.tree.map(lambda a, uu, cc: a - cc[None] + uu, ci, u, c)
            dy = jax.tree.map(lambda yy, xx: yy - xx[None], y, x)
            dc = jax.tree.map(jnp.subtract, ci_new, ci)
            params = jax.tree.map(lambda xx, d: xx + server_lr * d, x, mean(dy))
            control = jax.tree.map(lambda cc, d: cc + (m / n_all) * d, c, mean(dc))
            _, t = exchange(system, m, 2 * dense, True, 2 * dense)
            comm_s, sent, recv = jnp.float32(t.seconds), byte_counts(t.sent_bits, "sent"), \
                byte_counts(t.recv_bits, "received")
        else:
            gbar = jax.tree.map(lambda uu, a, cc: uu + a - cc[None], u, ci, c)   # mean local gradient
            if variant == "scallion":
                delta = jax.tree.map(jnp.subtract, gbar, ci)
                damp = alpha
            else:
                v = jax.tree.map(lambda vv, gg: (1.0 - beta) * vv + beta * gg, take_worker(momentum, clients), gbar)
                momentum = jax.tree.map(lambda a, vv: a.at[clients].set(vv), momentum, v)
                delta = jax.tree.map(jnp.subtract, v, ci)
                damp = 1.0
            payloads, wst = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
                jax.random.split(k_enc, m), delta, wst, state.server_state)
            sent_delta = jax.vmap(compressor.decode, in_axes=(0, None))(payloads, state.server_state)
            ci_new = jax.tree.map(lambda a, d: a + damp * d, ci, sent_delta)
            agg, sstate = compressor.aggregate(payloads, state.server_state, None)   # mean_S C(delta_i)
            step_size = server_lr * lr * float(length)                              # eta_g eta_l K
            params = jax.tree.map(lambda xx, cc, a: xx - step_size * (cc + a), x, c, agg)
            control = jax.tree.map(lambda cc, a: cc + damp * (m / n_all) * a, c, agg)
            if compressor.message_bytes is not None:    # variable-length messages: priced as sent
                sent, recv, comm_s = variable_exchange(system, compressor, payloads, shapes, sstate,
                                                       down_bytes=2 * dense // 8)
            else:
                _, t = compressor_exchange(system, m, compressor, shapes, 2 * dense)
                comm_s, sent, recv = jnp.float32(t.seconds), byte_counts(t.sent_bits, "sent"), \
                    byte_counts(t.recv_bits, "received")
        client_control = jax.tree.map(lambda a, v: a.at[clients].set(v), state.client_control, ci_new)
        worker_state = jax.tree.map(lambda a, v: a.at[clients].set(v), state.worker_state, wst)

        steps_total = length + (1 if extra_grad else 0)
        per_step = jax.vmap(lambda k: network.step_seconds(k, system.compute, n_all))(
            jax.random.split(k_time, steps_total))                                 # [L, N] seconds per step
        active = jnp.arange(steps_total)[:, None] < (n_steps + (1 if extra_grad else 0))[None, :]
        compute = jnp.sum(jnp.where(active, per_step[:, clients], 0.0), axis=0)
        duration, slowest, idle = step_time(compute, comm_s)
        clock = state.clock + duration
        info = Info(jnp.mean(losses), clock, slowest, jnp.asarray(comm_s, jnp.float32), idle,
                    scatter_bytes(n_all, clients, sent), scatter_bytes(n_all, clients, recv),
                    {"local_steps": jnp.mean(n_steps.astype(jnp.float32)), "control_norm": jnp.sqrt(sq_norm(control))})
        return ScaffoldState(params, control, client_control, momentum, worker_state, sstate, clock), info

    return Algorithm(init, step, lambda s: s.params, name or variant, n_all)


def scaffold(task: Task, data: B.WorkerData, *, lr: float, local_steps: int | None = None, epochs: int | None = None,
             batch_size: int | None = 10, clients_per_round: int | None = None, server_lr: float = 1.0,
             option: str = "II", system: System = System(collective="ps"), worker_map: str = "auto") -> Algorithm:
    """SCAFFOLD (Karimireddy et al. 2020, Alg. 1) over the N clients of ``data``; one step is one round.

    Args:
      lr: eta_l, the local (plain SGD) learning rate.
      local_steps / epochs: K local steps of ``batch_size`` (with replacement), or E epochs of shuffled
        batches (``batch_size=None``: the full local data set per step); give exactly one.
      clients_per_round: |S| (default: all N, cross-silo).
      server_lr: eta_g (the paper's default 1).
      option: "I" (c_i+ = gradient at x on a fresh minibatch: one more gradient of compute) or "II".
    """
    return _build(task, data, "scaffold", lr=lr, local_steps=local_steps, epochs=epochs, batch_size=batch_size,
                  clients_per_round=clients_per_round, server_lr=server_lr, option=option, compressor=None,
                  alpha=1.0, beta=1.0, system=system, worker_map=worker_map, name="scaffold")


def scallion(task: Task, data: B.WorkerData, *, lr: float, local_steps: int, batch_size: int = 10,
             clients_per_round: int | None = None, server_lr: float = 1.0, compressor: Compressor | None = None,
             alpha: float = 1.0, system: System = System(collective="ps"), worker_map: str = "auto") -> Algorithm:
    """SCALLION (Huang, Li & Li, ICLR 2024): SCAFFOLD's single uplink vector delta_i, compressed by an
    unbiased ``compressor`` and damped by ``alpha`` in the control updates (see the module docstring).
    With the identity and alpha = 1 this is SCAFFOLD Option II; with alpha = 0 the controls stay 0 and
    it is FedAvg (uniform weights, server lr eta_g)."""
    return _build(task, data, "scallion", lr=lr, local_steps=local_steps, epochs=None, batch_size=batch_size,
                  clients_per_round=clients_per_round, server_lr=server_lr, option="II", compressor=compressor,
                  alpha=alpha, beta=1.0, system=system, worker_map=worker_map, name="scallion")


def scafcom(task: Task, data: B.WorkerData, *, lr: float, local_steps: int, batch_size: int = 10,
            clients_per_round: int | None = None, server_lr: float = 1.0, compressor: Compressor | None = None,
            beta: float = 1.0, system: System = System(collective="ps"), worker_map: str = "auto") -> Algorithm:
    """SCAFCOM (Huang, Li & Li, ICLR 2024): SCAFFOLD's single uplink with client momentum ``beta`` for
    biased (contractive) compressors such as top-k (see the module docstring). beta = 1 with the
    identity is SCAFFOLD Option II."""
    return _build(task, data, "scafcom", lr=lr, local_steps=local_steps, epochs=None, batch_size=batch_size,
                  clients_per_round=clients_per_round, server_lr=server_lr, option="II", compressor=compressor,
                  alpha=1.0, beta=beta, system=system, worker_map=worker_map, name="scafcom")
