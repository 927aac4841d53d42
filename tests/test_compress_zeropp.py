"""Laws of ZeRO++ qwZ and qgZ: block quantization bounds, the two-hop numerics, exact bits per hop."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simsgd.compress.payload import stream_bits
from simsgd.compress.zeropp import (BlockQuant, Half, dequantize_blocks, qgz_traffic, quantize_blocks, zeropp_qgz,
                                    zeropp_qwz)
from tests.reference import compress_zeropp as ref
from tests.helpers import stack

N = 4
QWZ = zeropp_qwz(block_size=8)
QGZ = {2: zeropp_qgz(gpus_per_node=2), 4: zeropp_qgz(gpus_per_node=4), 1: zeropp_qgz(gpus_per_node=1)}


def params(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(scale * rng.normal(size=(7, 5)), jnp.float32),
            "b": jnp.asarray(scale * rng.normal(size=5), jnp.float32)}


def encode_all(c, gs):
    ws, ss = c.init(gs[0])
    keys = jax.random.split(jax.random.key(0), len(gs))
    p, _ = jax.vmap(c.encode, in_axes=(0, 0, None, None))(keys, stack(gs), ws, ss)
    return p, ss


# ---- the block quantizer -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
def test_block_quantization_error_bounds(bits):
    rng = np.random.default_rng(bits)
    x = (rng.normal(size=1000) * np.exp(rng.normal(size=1000))).astype(np.float32)
    x[:7] = [0.0, -0.0, 1e-30, -3.0, 3.0, 2.0, -2.0]
    group = 16
    q, s = jax.jit(quantize_blocks, static_argnums=(1, 2))(jnp.asarray(x), group, bits)
    q, s = np.asarray(q), np.asarray(s)
    half = 2 ** (bits - 1)
    assert q.dtype == np.int8 and q.min() >= -half and q.max() <= half - 1
    blocks = np.pad(x, (0, -x.size % group)).reshape(-1, group)
    np.testing.assert_allclose(s, np.abs(blocks).max(1) / half, rtol=1e-6)          # scale = max|x| / 2^(b-1)
    err = np.abs(np.asarray(dequantize_blocks(jnp.asarray(q), jnp.asarray(s), group)) - x)
    scale = np.repeat(s, group)[:x.size]
    clipped = x * (1.0 / scale) >= half - 0.5          # rounds up to +2^(b-1), then clipped to 2^(b-1) - 1
    slack = 1e-6 * np.abs(x)                             # float32 rounding of q * scale and of the difference
    assert np.all(err[~clipped] <= scale[~clipped] / 2 + slack[~clipped])
    assert np.all(err <= scale + slack)
    assert clipped.any()                                 # each block's positive maximum (if any) is clipped


def test_quantizer_matches_reference_and_zero_blocks():
    x = np.random.default_rng(1).normal(size=37).astype(np.float32)
    x[8:16] = 0.0                                        # an all-zero block: scale 1, all levels 0
    q, s = quantize_blocks(jnp.asarray(x), 8, 4)
    rq, rs = ref.quantize(x, 8, 4)
    np.testing.assert_array_equal(np.asarray(q), rq)
    np.testing.assert_allclose(np.asarray(s), rs, rtol=1e-6)
    assert np.asarray(s)[1] == 1.0 and not np.asarray(q)[8:16].any()


def test_int4_wire_is_twos_complement_low_nibble_first():
    c = zeropp_qwz(block_size=2, bits=4)
    g = {"x": jnp.array([1.0, -1.0], jnp.float32)}
    p, _ = c.encode(jax.random.key(0), g, *c.init(g))
    np.testing.assert_array_equal(np.asarray(p["x"].values), [7, -8])     # +max clips to 7; -max is -8
    assert c.pack(p) == bytes([0x87]) + np.float32(0.125).tobytes()      # 7 = 0b0111, -8 = 0b1000; scale 1/8


# ---- qwZ ---------------------------------------------------------------------------------------

def test_qwz_matches_reference():
    gs = [params(i) for i in range(N)]
    p, ss = encode_all(QWZ, gs)
    w = jnp.array([1.0, 3.0, 0.5, 2.0])
    for weights in (None, w):
        got, _ = QWZ.aggregate(p, ss, weights)
        for name in ("w", "b"):
            want = ref.qwz_mean([np.asarray(g[name]) for g in gs], 8, 8, None if weights is None else np.asarray(w))
            np.testing.assert_allclose(np.asarray(got[name]).reshape(-1), want, rtol=1e-5, atol=1e-6)


def test_qwz_bits_by_hand():
    p = jax.eval_shape(lambda: params(0))
    # default block 8000: w 35 int8 + 1 scale, b 5 int8 + 1 scale
    assert zeropp_qwz().payload_bits(p) == (35 * 8 + 32) + (5 * 8 + 32) == 384
    # block 8: w 35 entries -> 5 blocks, b -> 1 block
    assert QWZ.payload_bits(p) == (35 * 8 + 5 * 32) + (5 * 8 + 32) == 512
    # int4, block 3: w 12 blocks, b 2 blocks: 140 + 384 + 20 + 64 = 608
    assert zeropp_qwz(block_size=3, bits=4).payload_bits(p) == 35 * 4 + 12 * 32 + 5 * 4 + 2 * 32
    assert QWZ.down_bits is None and not QWZ.props.summable and QWZ.props.aggregation == "mean"


# ---- qgZ ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dpn", [1, 2, 4])
def test_qgz_matches_the_two_hop_reference(dpn):
    c = QGZ[dpn]
    w = jnp.array([2.0, 1.0, 0.5, 4.0])
    for step in range(3):                                # stateless: three different sets of gradients
        gs = [params(10 * step + i, scale=10.0 ** (i - 2)) for i in range(N)]   # mixed magnitudes
        p, ss = encode_all(c, gs)
        for weights in (None, w):
            got, _ = c.aggregate(p, ss, weights)
            wn = None if weights is None else np.asarray(w)
            want_w = ref.qgz(np.stack([np.asarray(g["w"]).reshape(-1) for g in gs]), 5, dpn, 4, wn)  # 7 groups of 5
            np.testing.assert_allclose(np.asarray(got["w"]).reshape(-1), want_w, rtol=1e-5, atol=1e-7)
            # 1-D leaves: DeepSpeed's float16 reduce-scatter fallback
            bs = np.stack([np.asarray(g["b"]).astype(np.float16).astype(np.float64) for g in gs])
            cw = np.full(N, 1 / N) if wn is None else wn / wn.sum()
            np.testing.assert_allclose(np.asarray(got["b"]), cw @ bs, rtol=1e-6, atol=1e-9)


def test_qgz_quantizes_twice_within_the_two_bounds():
    gs = [params(i) for i in range(N)]
    c = QGZ[2]
    p, ss = encode_all(c, gs)
    got = np.asarray(c.aggregate(p, ss, None)[0]["w"]).reshape(-1)
    xs = np.stack([np.asarray(g["w"], np.float64).reshape(-1) for g in gs])
    once = np.mean([ref.qdq(x, 5, 4) for x in xs], axis=0)           # what one quantization would give
    assert np.abs(got - once).max() > 1e-4                          # the second hop changes the result
    # |agg - mean| <= sum_i (1/N) scale1_i + sum_m scale2_m  (every level within one scale, clipped ones included)
    s1 = sum(np.repeat(ref.quantize(x, 5, 4)[1], 5) / N for x in xs)
    node_sums = [sum(ref.qdq(xs[i], 5, 4) / N for i in range(2 * m, 2 * m + 2)) for m in range(2)]
    s2 = sum(np.repeat(ref.quantize(s, 5, 4)[1], 5) for s in node_sums)
    assert np.all(np.abs(got - xs.mean(0)) <= (s1 + s2) * (1 + 1e-6))


def test_qgz_with_exactly_representable_values_is_exact():
    # worker i sends (i + 1) * b per row, b on the int4 grid of its own max (-8, -4, 0, 4, 7) / 8: hop 1 is
    # lossless, every node sum is a positive multiple of b (lossless again), so qgZ returns the exact mean
    b = np.array([-8, -4, 0, 4, 7], np.float32) / 8
    gs = [{"w": jnp.asarray(np.tile(b, (7, 1)) * (i + 1)), "b": jnp.zeros(5)} for i in range(N)]
    p, ss = encode_all(QGZ[2], gs)
    got = np.asarray(QGZ[2].aggregate(p, ss, None)[0]["w"])
    np.testing.assert_allclose(got, np.tile(b, (7, 1)) * 2.5, rtol=1e-6)


def test_qgz_needs_whole_nodes():
    p, ss = encode_all(zeropp_qgz(gpus_per_node=3), [params(i) for i in range(N)])
    with pytest.raises(ValueError, match="gpus_per_node=3 must divide"):
        zeropp_qgz(gpus_per_node=3).aggregate(p, ss, None)
    with pytest.raises(ValueError, match="must divide"):
        qgz_traffic(jax.eval_shape(lambda: params(0)), 4, 3)


def test_qgz_payload_is_the_hop1_message():
    c = QGZ[2]
    p, _ = c.encode(jax.random.key(0), params(0), *c.init(params(0)))
    assert isinstance(p["w"], BlockQuant) and p["w"].scales.shape == (7,) and p["w"].bits == 4
    assert isinstance(p["b"], Half) and p["b"].values.dtype == jnp.float16
    assert c.props.aggregation == "two_hop" and not c.props.summable and c.props.collective == "two_hop_alltoall"


def test_qgz_bits_by_hand():
    p = jax.eval_shape(lambda: params(0))
    # w (7, 5): max(7, 5) = 7 groups of 5 -> 35 int4 + 7 float32 scales; b (5,): 5 float16 (fallback)
    assert QGZ[2].payload_bits(p) == 8 * math.ceil((35 * 4 + 7 * 32 + 5 * 16) / 8) == 448
    # group_size 6 for w: 6 groups (last one of 5 entries)
    assert zeropp_qgz(gpus_per_node=4, group_size=6).payload_bits(p) == 8 * math.ceil((35 * 4 + 6 * 32 + 5 * 16) / 8)
    # D = 2: local rank 0 holds groups 0, 2, 4, 6 (20 entries, 4 scales), rank 1 groups 1, 3, 5 (15, 3)
    share0, share1 = stream_bits([(20, 4), (4, 32)]), stream_bits([(15, 4), (3, 32)])
    assert (share0, share1) == (208, 160)
    t = qgz_traffic(p, 4, 2)
    np.testing.assert_array_equal(t["intra_sent"], [share1, share0, share1, share0])
    np.testing.assert_array_equal(t["intra_recv"], [share0, share1, share0, share1])
    # hop 2, M = 2 nodes: rank 0's groups 0, 4 stay on node 0 and 2, 6 go to node 1 (10 entries + 2 scales each);
    # rank 1's groups 1, 5 -> node 0, group 3 -> node 1 (5 entries + 1 scale = 52 -> 56 bits)
    two, one = stream_bits([(10, 4), (2, 32)]), stream_bits([(5, 4), (1, 32)])
    assert (two, one) == (104, 56)
    np.testing.assert_array_equal(t["inter_sent"], [two, one, two, two])
    np.testing.assert_array_equal(t["inter_recv"], [two, two, two, one])
    np.testing.assert_array_equal(t["fallback_bits"], [80] * 4)
    # down_bits: the most a worker receives over both hops, 208 + 104, plus the float16 ring reduce-scatter of
    # the 10-byte b leaf (chunks of 3, 3, 2, 2 bytes: a worker receives all but its own, at most 10 - 2 bytes)
    assert QGZ[2].down_bits(p, 4) == share0 + two + 8 * (10 - 2) == 376
    # one node (D = N): no inter-node traffic; one GPU per node: no intra-node traffic
    t4, t1 = qgz_traffic(p, 4, 4), qgz_traffic(p, 4, 1)
    assert not t4["inter_sent"].any() and not t1["intra_sent"].any()
    # per worker, hop 1 + hop 2 moves less than the ring all-gather of the payload would: (N - 1) * 448
    assert (t["intra_sent"] + t["inter_sent"]).max() < 3 * 448


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        zeropp_qwz(block_size=0)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        zeropp_qwz(bits=2)
    with pytest.raises(ValueError, match="gpus_per_node"):
        zeropp_qgz(gpus_per_node=0)
    with pytest.raises(ValueError, match="group_size"):
        zeropp_qgz(group_size=-1)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        zeropp_qgz(bits=16)
