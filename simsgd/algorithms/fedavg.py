"""Federated Averaging and Local SGD: local steps on each worker, then one averaged update.

Round t (McMahan et al. 2017, Alg. 1 "FederatedAveraging"): sample a set S_t of
m = max(floor(C K), 1) of the K clients without replacement; each k in S_t starts from the server
model x_t and runs local SGD (``local_steps`` = H steps of batch B, or E epochs of its n_k
examples in batches of B: u_k = E ceil(n_k / B) steps; B = None is the full local batch). The
server forms the pseudo-gradient

    Delta_t = sum_{k in S_t} w_k (x_t - x_t^k),   w_k = n_k / sum_{j in S_t} n_j  (or 1/m)

and applies the outer optax optimizer to it: x_{t+1} = x_t + outer(Delta_t). Outer SGD with
learning rate 1 (the default) gives x_{t+1} = sum_k w_k x_t^k: plain model averaging
(Reddi et al. 2021, Alg. 1, names this the FedOpt form). The client optimizer starts fresh
every round (FedAvg clients are stateless), so no state of unsampled clients is kept.

Local SGD (Stich 2019; Lin et al. 2020) is the same round with every worker taking part,
uniform weights and H local steps; H = 1 is synchronous minibatch SGD.

FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020, Alg. 2 and Eq. (2)): client k
approximately minimises h_k(w; x_t) = F_k(w) + (mu/2) ||w - x_t||^2 from x_t, i.e. each local step
uses the gradient g + mu (w - x_t), where x_t is the round's starting (server) model, kept fixed
during the round (``prox_mu``). ``prox_mu = 0`` runs exactly the FedAvg code path. The reported
training loss is F_k alone (the proximal term is not data loss). Not implemented: FedProx's
gamma-inexact partial work for stragglers (clients returning fewer epochs); here every sampled
client does its full local work, as in FedAvg.

FedOpt (Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan, ICLR 2021, Alg. 2):
``fedopt(name, lr, beta1, beta2, tau)`` builds the server optimizer FedAdagrad / FedAdam / FedYogi
as an optax transformation to pass as ``server_optimizer`` (see its docstring).

Clients dropping out and rejoining (``system.compute.dropout`` > 0, ``network.next_availability``):
each round the availability chain moves one step with the round key, and S_t is drawn among the
available clients only: a uniform m-subset of them (the available clients in the order of the
round's random permutation of all K), or all of them when fewer than m are available (Bonawitz et
al. 2019 describe the server selecting among the devices that check in). The round then runs with
those |S_t| clients: weights over them, collective among them (priced exactly for that count, see
``sync.participant_traffic``), the round waits for the slowest of them; the other clients send and
receive 0 bytes and keep their compressor state. With no client available the round is skipped (no
update, the clock advances by one ``seconds_per_step``). The mask is the state's ``up`` field (None
without dropout, and then the round is exactly the always-available one). ``Info.extra["participants"]``
is |S_t| (only with dropout).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simsgd import batches as B
from simsgd import network
from simsgd.algorithms.base import Algorithm, Info, System, byte_counts, compressor_exchange, scatter_bytes, step_time
from simsgd.compress import Compressor, identity
from simsgd.task import Task
from simsgd.tree import broadcast_workers, sub, take_worker
from simsgd.workers import map_mean_workers, map_workers


class FedOptState(NamedTuple):
    m: object   # first moment m_t (Reddi et al. 2021, Alg. 2), initialised to 0
    v: object   # second moment v_t, initialised to v_{-1} = tau^2


FEDOPT = ("adagrad", "adam", "yogi")


def fedopt(name: str, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
           ) -> optax.GradientTransformation:
    """FedAdagrad / FedAdam / FedYogi server optimizer (Reddi et al., ICLR 2021, Alg. 2), as optax.

    With Delta_t the averaged client change (new minus old), Alg. 2 reads
        m_t = beta1 m_{t-1} + (1 - beta1) Delta_t
        v_t = v_{t-1} + Delta_t^2                                       (FedAdagrad)
        v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  (FedYogi)
        v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2                      (FedAdam)
        x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)
    with m_{-1} = 0 and v_{-1} = tau^2 (the algorithm asks v_{-1} >= tau^2; we take equality), no
    bias correction, and tau ("degree of adaptivity") added OUTSIDE the square root. ``fedavg``
    hands the server optimizer the pseudo-gradient g = x_t - avg_k x^k = -Delta_t and adds the
    returned update, so this transformation returns -lr m'/(sqrt(v) + tau) with m' built from g
    (m' = -m, v unchanged): the same step.

    optax's own ``adam`` / ``yogi`` / ``adagrad`` do not match Alg. 2: ``adam`` and ``yogi`` apply
    bias correction (and ``yogi`` starts its accumulator at 1e-6, ``adam`` at 0), ``adagrad`` has no
    first moment, puts eps inside the square root and starts at 0.1; hence this implementation.

    Defaults: beta1 = 0.9, beta2 = 0.99 (Reddi et al. Sec. 5 / App.); tau = 1e-3 is a common value
    from the paper's tuning grid (tau is tuned per task there; recalled, not re-read). ``beta2`` is
    unused by FedAdagrad. Optimizer state: m, v (2 d floats) on the server, never sent.
    """
    if name not in FEDOPT:
        raise ValueError(f"fedopt name must be one of {', '.join(FEDOPT)}, got {name!r}")
    for arg, val, lo, hi in (("beta1", beta1, 0.0, 1.0), ("beta2", beta2, 0.0, 1.0)):
        if not lo <= float(val) < hi:
            raise ValueError(f"fedopt: {arg} must be in [0, 1), got {val!r}")
    if not float(tau) > 0:
        raise ValueError(f"fedopt: tau must be > 0 (the paper's adaptivity, e.g. 1e-3), got {tau!r}")
    if not float(lr) > 0:
        raise ValueError(f"fedopt: lr must be > 0, got {lr!r}")
    lr, beta1, beta2, tau = float(lr), float(beta1), float(beta2), float(tau)

    def init(params):
        return FedOptState(jax.tree.map(jnp.zeros_like, params),
                           jax.tree.map(lambda p: jnp.full_like(p, tau * tau), params))

    def second(v, g2):
        if name == "adagrad":
            return v + g2
        if name == "yogi":
            return v - (1.0 - beta2) * g2 * jnp.sign(v - g2)
        return beta2 * v + (1.0 - beta2) * g2

    def update(grads, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: beta1 * m + (1.0 - beta1) * g, state.m, grads)
        v = jax.tree.map(lambda v, g: second(v, g * g), state.v, grads)
        updates = jax.tree.map(lambda m, v: (-lr * m / (jnp.sqrt(v) + tau)).astype(m.dtype), m, v)
        return updates, FedOptState(m, v)

    return optax.GradientTransformation(init, update)


class FedAvgState(NamedTuple):
    params: object
    opt_state: object        # outer (server) optimizer state
    worker_state: object     # compressor state of every client, stacked [K, ...]
    server_state: object
    clock: jax.Array
    up: object = None        # [K] bool client availability of the last round (None: no dropout)


def fedavg(task: Task, data: B.WorkerData, *, client_optimizer: optax.GradientTransformation,
           clients_per_round: int | None = None, local_steps: int | None = None, epochs: int | None = None,
           batch_size: int | None = 10, server_optimizer: optax.GradientTransformation | None = None,
           weighting: str = "size", compressor: Compressor | None = None, system: System = System(collective="ps"),
           worker_map: str = "auto", prox_mu: float = 0.0, name: str = "fedavg") -> Algorithm:
    """FedAvg over the K workers of ``data``; one ``step`` is one round.

    Give exactly one of ``local_steps`` (H steps of ``batch_size``, sampled with replacement)
    or ``epochs`` (E passes over the local data in shuffled batches of ``batch_size``;
    ``batch_size=None`` is one full-batch step per epoch: with E=1 that is FedSGD).
    ``prox_mu`` > 0 is FedProx: every local gradient gets the proximal term mu (w - x_t).
    """
    k_total = B.num_workers(data)
    m = k_total if clients_per_round is None else int(clients_per_round)
    if not 1 <= m <= k_total:
        raise ValueError(f"clients_per_round must be in 1..{k_total}, got {m}")
    if (local_steps is None) == (epochs is None):
        raise ValueError("give exactly one of local_steps (H) or epochs (E)")
    if weighting not in ("size", "uniform"):
        raise ValueError(f"weighting must be 'size' or 'uniform', got {weighting!r}")
    if isinstance(prox_mu, bool) or not (isinstance(prox_mu, (int, float, np.floating)) and np.isfinite(prox_mu)
                                         and prox_mu >= 0):
        raise ValueError(f"prox_mu must be a finite number >= 0 (0: FedAvg), got {prox_mu!r}")
    compressor = compressor or identity()
    server_optimizer = server_optimizer or optax.sgd(1.0)
    plan = B.local_plan(data, local_steps=local_steps, epochs=epochs, batch_size=batch_size)
    length = plan.length
    grad_fn = jax.value_and_grad(task.loss)
    avail = network.has_availability(system.compute)
    if avail:
        from simsgd.algorithms.base import collective_kind
        from simsgd.algorithms.sync import masked_step_time, participant_tables, participant_traffic

        if collective_kind(system, compressor.props.summable, compressor.props.collective) == "hierarchical":
            raise ValueError("collective 'hierarchical' cannot run among a varying subset of clients (dropout > 0): "
                             "use 'allreduce', 'rabenseifner', 'tree', 'allgather' or 'ps'")

    def local_train(key, client, params):
        """One client's local phase: returns (its new params, mean loss, number of steps)."""
        k_order, k_steps = jax.random.split(key)
        opt_state = client_optimizer.init(params)
        batch_at, n_steps = B.local_batches(plan, k_order, k_steps, data, client)

        def body(carry, s):
            p, o = carry
            batch = batch_at(s)
            loss, g = grad_fn(p, batch)
            if prox_mu:                   # FedProx: grad of (mu/2)||w - x_t||^2 is mu (w - x_t)
                g = jax.tree.map(lambda gi, w, w0: gi + prox_mu * (w - w0), g, p, params)
            updates, o2 = client_optimizer.update(g, o, p)
            p2 = optax.apply_updates(p, updates)
            if epochs is None:            # every client takes all H steps: nothing to mask
                return (p2, o2), loss
            active = s < n_steps          # clients with fewer batches idle through the busiest's steps
            keep = lambda new, old: jax.tree.map(lambda a, c: jnp.where(active, a, c), new, old)
            return (keep(p2, p), keep(o2, o)), jnp.where(active, loss, 0.0)

        (p, _), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(length))
        return p, jnp.sum(losses) / n_steps, n_steps

    def init(key, params):
        del key
        wstate, sstate = compressor.init(params)
        return FedAvgState(params, server_optimizer.init(params), broadcast_workers(wstate, k_total), sstate,
                           jnp.zeros((), jnp.float32), network.initial_availability(k_total) if avail else None)

    def step(key, state: FedAvgState):
        k_sel, k_local, k_enc, k_time = jax.random.split(key, 4)
        if avail:
            up = network.next_availability(key, state.up, system.compute)
            perm = jax.random.permutation(k_sel, k_total) if m < k_total else jnp.arange(k_total)
            clients = perm[jnp.argsort(~up[perm], stable=True)][:m]     # available first, in permutation order
            take = up[clients]                                            # [m] the slots that really take part
            anyone = jnp.any(take)
            w = data.size[clients].astype(jnp.float32) if weighting == "size" else jnp.ones((m,), jnp.float32)
            weights = jnp.where(anyone, jnp.where(take, w, 0.0), 1.0)      # nobody: any weights, update discarded
        else:
            clients = jax.random.permutation(k_sel, k_total)[:m] if m < k_total else jnp.arange(k_total)
            weights = data.size[clients].astype(jnp.float32) if weighting == "size" else None
        local_keys = jax.random.split(k_local, m)
        if compressor.props.linear_exact:
            # Exact, linear messages: sum_k w_k (x_t - x_t^k) = x_t - sum_k w_k x_t^k, accumulated
            # client by client so that the m client models are never all held at once.
            mean_params, (losses, n_steps) = map_mean_workers(
                lambda k, c: (lambda p, l, s: (p, (l, s)))(*local_train(k, c, state.params)), worker_map)(
                jnp.ones((m,)) if weights is None else weights, local_keys, clients)
            pseudo_grad, sstate = sub(state.params, mean_params), state.server_state
            wst = take_worker(state.worker_state, clients)
        else:
            new_params, losses, n_steps = map_workers(lambda k, c: local_train(k, c, state.params), worker_map)(
                local_keys, clients)
            deltas = jax.vmap(lambda p: sub(state.params, p))(new_params)            # x_t - x_t^k
            payloads, wst = jax.vmap(compressor.encode, in_axes=(0, 0, 0, None))(
                jax.random.split(k_enc, m), deltas, take_worker(state.worker_state, clients), state.server_state)
            pseudo_grad, sstate = compressor.aggregate(payloads, state.server_state, weights)
        updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if avail:
            return finish_avail(state, params, opt_state, sstate, wst, clients, take, anyone, weights, losses,
                                n_steps, k_time, up)
        worker_state = jax.tree.map(lambda a, v: a.at[clients].set(v), state.worker_state, wst)

        shapes = jax.eval_shape(lambda p: p, state.params)
        _, t = compressor_exchange(system, m, compressor, shapes)
        per_step = jax.vmap(lambda k: network.step_seconds(k, system.compute, k_total))(
            jax.random.split(k_time, length))                                   # [L, K] seconds per local step
        active = jnp.arange(length)[:, None] < n_steps[None, :]
        compute = jnp.sum(jnp.where(active, per_step[:, clients], 0.0), axis=0)  # [m]
        duration, slowest, idle = step_time(compute, t.seconds)
        clock = state.clock + duration
        loss = jnp.sum(losses * (weights if weights is not None else 1.0)) / (
            jnp.sum(weights) if weights is not None else m)
        info = Info(loss, clock, slowest, jnp.float32(t.seconds), idle,
                    scatter_bytes(k_total, clients, byte_counts(t.sent_bits, "sent")),
                    scatter_bytes(k_total, clients, byte_counts(t.recv_bits, "received")),
                    {"local_steps": jnp.mean(n_steps.astype(jnp.float32))})
        return FedAvgState(params, opt_state, worker_state, sstate, clock), info

    def finish_avail(state, params, opt_state, sstate, wst, clients, take, anyone, weights, losses, n_steps, k_time,
                     up):
        """The end of a round with availability: keep only the clients that took part (``take``)."""
        skip = lambda new, old: jax.tree.map(lambda a, b: jnp.where(anyone, a, b), new, old)   # nobody: no update
        params, opt_state, sstate = (skip(params, state.params), skip(opt_state, state.opt_state),
                                     skip(sstate, state.server_state))
        old = take_worker(state.worker_state, clients)
        wst = jax.tree.map(lambda new, o: jnp.where(take.reshape((m,) + (1,) * (new.ndim - 1)), new, o), wst, old)
        worker_state = jax.tree.map(lambda a, v: a.at[clients].set(v), state.worker_state, wst)
        shapes = jax.eval_shape(lambda p: p, state.params)
        tables = participant_tables(system, m, compressor, shapes)
        sent, recv, comm_s = participant_traffic(tables, take)
        per_step = jax.vmap(lambda k: network.step_seconds(k, system.compute, k_total))(
            jax.random.split(k_time, length))                                   # [L, K] seconds per local step
        active = jnp.arange(length)[:, None] < n_steps[None, :]
        compute = jnp.sum(jnp.where(active, per_step[:, clients], 0.0), axis=0)  # [m]
        duration, slowest, idle = masked_step_time(compute, take, comm_s, system.compute.seconds_per_step)
        comm_s = jnp.where(anyone, comm_s, 0.0).astype(jnp.float32)
        clock = state.clock + duration
        tw = jnp.where(take, weights, 0.0)
        loss = jnp.where(anyone, jnp.sum(losses * tw) / jnp.maximum(jnp.sum(tw), 1e-30), jnp.mean(losses))
        steps_mean = jnp.sum(jnp.where(take, n_steps, 0).astype(jnp.float32)) / jnp.maximum(jnp.sum(take), 1)
        info = Info(loss, clock, slowest, comm_s, idle, scatter_bytes(k_total, clients, sent),
                    scatter_bytes(k_total, clients, recv),
                    {"local_steps": steps_mean, "participants": jnp.sum(take.astype(jnp.int32))})
        return FedAvgState(params, opt_state, worker_state, sstate, clock, up), info

    return Algorithm(init, step, lambda s: s.params, name, k_total)


def local_sgd(task: Task, data: B.WorkerData, *, optimizer: optax.GradientTransformation, local_steps: int,
              batch_size: int, outer_optimizer: optax.GradientTransformation | None = None,
              compressor: Compressor | None = None, system: System = System(), worker_map: str = "auto") -> Algorithm:
    """Local SGD (Stich 2019): every worker runs H steps of ``optimizer``, then the models are averaged
    (uniform weights, all workers, an all-reduce by default). The local optimizer state is reset
    at each synchronization here; keeping it is a per-method option of the local-update family."""
    return fedavg(task, data, client_optimizer=optimizer, clients_per_round=None, local_steps=local_steps,
                  batch_size=batch_size, server_optimizer=outer_optimizer, weighting="uniform",
                  compressor=compressor, system=system, worker_map=worker_map, name="local_sgd")


def fedsgd(task: Task, data: B.WorkerData, *, lr: float, clients_per_round: int | None = None,
           weighting: str = "size", system: System = System(collective="ps"), worker_map: str = "auto") -> Algorithm:
    """FedSGD (McMahan et al. 2017, Sec. 2, the baseline of Table 2): each sampled client computes the
    gradient g_k of its loss on all n_k local examples at x_t, and the server steps
    x_{t+1} = x_t - lr sum_k w_k g_k. This is FedAvg with E = 1 and B = infinity (one full-batch local
    step, the client's lr applied, server SGD with lr 1), which is how it is run here."""
    return fedavg(task, data, client_optimizer=optax.sgd(lr), clients_per_round=clients_per_round, epochs=1,
                  batch_size=None, weighting=weighting, system=system, worker_map=worker_map, name="fedsgd")
