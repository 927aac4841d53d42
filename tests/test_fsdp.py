"""Sharded data parallelism with quantized weights (``sync_sgd(weights=...)``, simsgd.algorithms.fsdp)."""
import jax
import numpy as np
import optax
import pytest

from simsgd import collectives, network
from simsgd.algorithms.base import System
from simsgd.algorithms.fsdp import Weights
from simsgd.algorithms.sync import sync_sgd
from simsgd.compress import with_error_feedback
from simsgd.compress.lowrank import powersgd
from simsgd.compress.quantize import qsdp
from simsgd.compress.sparsify import topk
from simsgd.compress.zeropp import zeropp_qgz, zeropp_qwz
from tests.helpers import close, np_params, run_steps, shapes, tiny
from tests.reference import fsdp as ref

LINK = network.Link(latency_s=1e-3, bandwidth_bps=1e8)
SYSTEM = System(link=LINK, compute=network.Compute(seconds_per_step=0.0))


def test_all_to_all_and_shard_allgather_by_hand():
    # 10 bytes over 4 ranks: chunks 3, 3, 2, 2; rank i keeps chunk i and sends the other three
    t = collectives.all_to_all(4, 80, LINK)
    np.testing.assert_array_equal(t.sent_bits, 8 * np.array([7, 7, 8, 8]))
    np.testing.assert_array_equal(t.recv_bits, 8 * np.array([9, 9, 6, 6]))
    assert t.seconds == pytest.approx(3 * LINK.latency_s + 8 * (3 + 3 + 3) / LINK.bandwidth_bps)
    g = collectives.shard_allgather(4, 80, LINK)
    # rank i owns chunk (i + 1) mod 4 (sizes 3, 2, 2, 3) and receives all the others
    np.testing.assert_array_equal(g.recv_bits, 8 * (10 - np.array([3, 2, 2, 3])))
    np.testing.assert_array_equal(g.sent_bits.sum(), g.recv_bits.sum())


def test_float32_shards_are_ddp_numerics_and_allreduce_bytes():
    _, _, _, data, task, params = tiny(n_workers=4)
    algs = [sync_sgd(task, data, optimizer=optax.sgd(0.5), batch_size=1, system=SYSTEM, weights=w)
            for w in (None, Weights())]
    outs = [run_steps(a, a.init(jax.random.key(0), params), 3) for a in algs]
    for x, y in zip(jax.tree.leaves(outs[0][0].params), jax.tree.leaves(outs[1][0].params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a ring all-reduce is a reduce-scatter then an all-gather: the same bytes per worker
    np.testing.assert_array_equal(np.asarray(outs[0][1][0].sent_bytes), np.asarray(outs[1][1][0].sent_bytes))


def test_qwz_weights_match_the_reference():
    x, y, parts, data, task, params = tiny(n_workers=4)
    alg = sync_sgd(task, data, optimizer=optax.sgd(0.5), batch_size=1, system=SYSTEM,
                   weights=Weights(zeropp_qwz()))
    state, infos = run_steps(alg, alg.init(jax.random.key(0), params), 4)
    want = ref.sgd_qwz(np_params(params), [(x[p], y[p]) for p in parts], 0.5, 4)
    close(state.params, want, rtol=1e-5, atol=1e-6)
    # traffic: float32 gradients reduce-scattered, int8 weights + one float32 scale per leaf all-gathered
    p = shapes(params)
    want_t = collectives.reduce_scatter(4, 18 * 32, LINK).sent_bits + \
        collectives.shard_allgather(4, zeropp_qwz().payload_bits(p), LINK).sent_bits
    assert zeropp_qwz().payload_bits(p) == 8 * (18 + 2 * 4)
    np.testing.assert_array_equal(np.asarray(infos[0].sent_bytes) * 8, want_t)


def test_quantized_update_keeps_weights_on_the_lattice():
    _, _, _, data, task, params = tiny(n_workers=4)
    wq = qsdp(bits=4, rounding="shift")
    alg = sync_sgd(task, data, optimizer=optax.sgd(0.5), batch_size=1, compressor=qsdp(), system=SYSTEM,
                   weights=Weights(wq, "quantized"))
    state, _ = run_steps(alg, alg.init(jax.random.key(0), params), 3)
    for leaf in jax.tree.leaves(state.params):
        v = np.asarray(leaf, np.float64).reshape(-1)             # one bucket: min + delta * integer codes
        lo, hi = v.min(), v.max()
        codes = (v - lo) / ((hi - lo) / 15)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


def test_sharded_qgz_is_priced_by_its_own_collective():
    _, _, _, data, task, params = tiny(n_workers=4)
    intra = network.Link(latency_s=1e-5, bandwidth_bps=1e10)
    system = SYSTEM._replace(intra_link=intra)
    alg = sync_sgd(task, data, optimizer=optax.sgd(0.5), batch_size=1, compressor=zeropp_qgz(gpus_per_node=2),
                   system=system, weights=Weights(zeropp_qwz()))
    _, infos = run_steps(alg, alg.init(jax.random.key(0), params), 1)
    p = shapes(params)
    t = zeropp_qgz(gpus_per_node=2).traffic(p, 4, LINK, intra)
    g = collectives.shard_allgather(4, zeropp_qwz().payload_bits(p), LINK)
    assert float(infos[0].comm_s) == pytest.approx(t.seconds + g.seconds, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(compressor=powersgd()), "multi-round"),
    (dict(weights=Weights(with_error_feedback(topk(ratio=0.1)))), "stateless"),
    (dict(weights=Weights(None, "quantized")), "needs a weights.compressor"),
    (dict(weights=Weights(zeropp_qwz(), "sometimes")), "weights.update"),
    (dict(system=SYSTEM._replace(collective="allgather")), "network.collective"),
    (dict(system=SYSTEM._replace(compute=network.Compute(seconds_per_step=0.0, dropout=0.1, rejoin=0.5))),
     "dropping out"),
])
def test_bad_settings_are_refused(kwargs, match):
    _, _, _, data, task, _ = tiny(n_workers=4)
    args = dict(optimizer=optax.sgd(0.5), batch_size=1, system=SYSTEM, weights=Weights(zeropp_qwz()))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sync_sgd(task, data, **args)
