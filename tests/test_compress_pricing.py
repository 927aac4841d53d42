"""How the engine prices a compressor's step: multi-round methods (PowerSGD, Dion, L-GreCo) pay one
collective per round, and qgZ runs its own two-hop all-to-all (``Compressor.traffic``)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simsgd import collectives, network
from simsgd.algorithms.base import System, compressor_exchange, exchange, overlapped_comm
from simsgd.algorithms.sync import sync_sgd
from simsgd.compress import identity
from simsgd.compress.base import message_bytes, round_message_bytes, up_rounds
from simsgd.compress.lgreco import lgreco
from simsgd.compress.lowrank import dion, powersgd, wire_rounds
from simsgd.compress.zeropp import qgz_collective, qgz_traffic, zeropp_qgz
from tests.helpers import run_steps, shapes, small_tree, stack, tiny

LINK = network.Link(latency_s=1e-3, bandwidth_bps=1e8)
INTRA = network.Link(latency_s=1e-5, bandwidth_bps=1e10)


def test_powersgd_rounds_by_hand():
    p = shapes(small_tree(0))
    # w (7, 5) is the matrix [out 5, in 7]: rank 2 -> P 5 x 2 in round 1 with the dense b (5,); Q 7 x 2 in round 2
    assert up_rounds(powersgd(rank=2), p) == ((5 * 2 + 5) * 32, 7 * 2 * 32) == (480, 448)
    # Dion at rank_fraction 0.5: working orientation rows 7, cols 5, r = 2: P 7 x 2 (+ b), R 5 x 2
    assert up_rounds(dion(), p) == ((7 * 2 + 5) * 32, 5 * 2 * 32)
    assert up_rounds(identity(), p) == (40 * 32,)


def test_powersgd_round_bytes_are_the_wire_rounds():
    c = powersgd(rank=2)
    grads = [small_tree(i) for i in range(3)]
    ws, ss = c.init(grads[0])
    payloads, _ = jax.vmap(c.encode, in_axes=(0, 0, None, None))(jax.random.split(jax.random.key(0), 3),
                                                                   stack(grads), ws, ss)
    _, after = c.aggregate(payloads, ss, None)
    first, second = up_rounds(c, shapes(grads[0]))
    for msg in wire_rounds(payloads, after):           # the bytes each worker really sends, round 1 then 2
        assert 8 * len(msg) == first + second
    np.testing.assert_array_equal(np.asarray(round_message_bytes(c, payloads, shapes(grads[0]))),
                                  [[first // 8] * 3, [second // 8] * 3])


@pytest.mark.parametrize("kind", ["allreduce", "tree", "allgather", "ps"])
def test_two_rounds_cost_two_collectives(kind):
    c, p, n = powersgd(rank=2), shapes(small_tree(0)), 6
    system = System(link=LINK, collective=kind)
    _, t = compressor_exchange(system, n, c, p)
    parts = [exchange(system, n, b, True, b)[1] for b in (480, 448)]
    np.testing.assert_array_equal(t.sent_bits, parts[0].sent_bits + parts[1].sent_bits)
    np.testing.assert_array_equal(t.recv_bits, parts[0].recv_bits + parts[1].recv_bits)
    assert t.seconds == pytest.approx(parts[0].seconds + parts[1].seconds, rel=1e-12)
    one = exchange(system, n, 928, True, 928)[1]
    assert t.seconds > one.seconds                        # the second round's latency is paid
    if kind == "allreduce":                               # one more 2 (n - 1) alpha, bandwidth terms alike
        assert t.seconds - one.seconds == pytest.approx(2 * (n - 1) * LINK.latency_s, rel=1e-3)


def test_scaffold_style_final_answer_replaces_the_last_round():
    c, p = powersgd(rank=2), shapes(small_tree(0))
    system = System(link=LINK, collective="ps")
    _, t = compressor_exchange(system, 4, c, p, down=9000)
    np.testing.assert_array_equal(t.recv_bits, [480 + 9000] * 4)


def test_sync_step_prices_both_rounds():
    _, _, _, data, task, params = tiny(n_workers=4)
    system = System(link=LINK, compute=network.Compute(seconds_per_step=0.0))
    alg = sync_sgd(task, data, optimizer=optax.sgd(0.1), batch_size=1, compressor=powersgd(rank=2), system=system)
    _, infos = run_steps(alg, alg.init(jax.random.key(0), params), 1)
    # logistic (5 -> 3): w is [3, 5] -> P 3 x 2 + b (3,) in round 1, Q 5 x 2 in round 2
    want = sum(network.ring_allreduce(4, b, LINK).seconds for b in ((3 * 2 + 3) * 32, 5 * 2 * 32))
    assert float(infos[0].comm_s) == pytest.approx(want, rel=1e-6)
    assert int(infos[0].sent_bytes[0]) * 8 == sum(network.ring_allreduce(4, b, LINK).sent_bits[0]
                                                  for b in (288, 320))


def test_lgreco_rounds_split_its_variable_message():
    c = lgreco(rank=1, start_iter=1, adjust_every=2, acc_steps=1, min_compression_rate=1.0)
    grads = [small_tree(i) for i in range(3)]
    p = shapes(grads[0])
    ws, ss = c.init(grads[0])
    ws = jax.tree.map(lambda x: jnp.stack([x] * 3), ws)
    for step in range(2):                                # step 0: dense phase (one round); step 1: compressed
        payloads, ws = jax.vmap(c.encode, in_axes=(0, 0, 0, None))(jax.random.split(jax.random.key(step), 3),
                                                                    stack(grads), ws, ss)
        rounds = np.asarray(round_message_bytes(c, payloads, p))
        np.testing.assert_array_equal(rounds.sum(axis=0), np.asarray(message_bytes(c, payloads, p)))
        if step == 0:
            assert not rounds[1].any()
        else:                                            # rank 1 on w: Q is 7 x 1 float32
            np.testing.assert_array_equal(rounds[1], [7 * 4] * 3)
        _, ss = c.aggregate(payloads, ss, None)


def test_bucketed_overlap_splits_each_bucket_into_rounds():
    c, p, n = powersgd(rank=2), shapes(small_tree(0)), 4
    system = System(link=LINK, bucket_bytes=10 ** 6)         # one bucket holds the whole message
    ready, secs = overlapped_comm(system, n, c, p)
    assert list(ready) == [1.0]
    assert secs[0] == pytest.approx(compressor_exchange(System(link=LINK), n, c, p)[1].seconds, rel=1e-6)


def test_qgz_collective_by_hand():
    p = shapes(small_tree(0))
    t = qgz_collective(p, 4, LINK, INTRA, gpus_per_node=2)
    bits = qgz_traffic(p, 4, 2)
    rs = collectives.reduce_scatter(4, 80, LINK)          # the 10-byte float16 fallback of b (5,)
    np.testing.assert_array_equal(t.sent_bits, bits["intra_sent"] + bits["inter_sent"] + rs.sent_bits)
    np.testing.assert_array_equal(t.recv_bits, bits["intra_recv"] + bits["inter_recv"] + rs.recv_bits)
    # hop 1 (one pairwise step inside a node): rank 0 sends 20 B and receives 26 B (shares of 160 and 208 bits)
    hop1 = INTRA.latency_s + 8 * 26 / INTRA.bandwidth_bps
    # hop 2 (one step across 2 nodes, the node NIC shared by its 2 ranks): the largest peer message is 13 B
    hop2 = LINK.latency_s + 8 * 13 / (LINK.bandwidth_bps / 2)
    assert t.seconds == pytest.approx(hop1 + hop2 + rs.seconds, rel=1e-9)


def test_qgz_runs_its_own_collective_only_under_auto():
    c, p = zeropp_qgz(gpus_per_node=2), shapes(small_tree(0))
    kind, t = compressor_exchange(System(link=LINK, intra_link=INTRA), 4, c, p)
    assert kind == "two_hop_alltoall"
    assert t.seconds == qgz_collective(p, 4, LINK, INTRA, gpus_per_node=2).seconds
    with pytest.raises(ValueError, match="runs its own collective"):
        compressor_exchange(System(link=LINK, collective="allgather"), 4, c, p)
    with pytest.raises(ValueError, match="cannot be bucketed"):
        overlapped_comm(System(link=LINK, bucket_bytes=1000), 4, c, p)


def test_sync_step_with_qgz_uses_the_two_hop_time():
    _, _, _, data, task, params = tiny(n_workers=4)
    system = System(link=LINK, intra_link=INTRA, compute=network.Compute(seconds_per_step=0.0))
    alg = sync_sgd(task, data, optimizer=optax.sgd(0.1), batch_size=1, compressor=zeropp_qgz(gpus_per_node=2),
                   system=system)
    _, infos = run_steps(alg, alg.init(jax.random.key(0), params), 1)
    want = qgz_collective(shapes(params), 4, LINK, INTRA, gpus_per_node=2)
    assert float(infos[0].comm_s) == pytest.approx(want.seconds, rel=1e-6)
    np.testing.assert_array_equal(np.asarray(infos[0].sent_bytes) * 8, want.sent_bits)
