"""ZeRO++ quantized communication: qwZ (int8 blocks) and qgZ (int4, hierarchical two-hop reduce).

Wang, Rajbhandari, He et al., "ZeRO++: Extremely Efficient Collective Communication for Giant Model
Training", arXiv 2306.10209 (2023). Numerics follow the released implementation, microsoft/DeepSpeed:
``runtime/zero/partition_parameters.py::CUDAQuantizer`` (qwZ), ``runtime/comm/coalesced_collectives.py::
all_to_all_quant_reduce`` (qgZ), ``csrc/includes/quantization_utils.h`` and ``csrc/quantization/
{swizzled_quantize,quant_reduce}.cu`` (the kernels).

Block quantizer (DeepSpeed ``Params<Symmetric, b>``), per block B of a flattened leaf:
    m = max_{x in B} |x|;  inv = 2^b / (2 m)  (inv = 1 when m = 0);  scale = 1 / inv = m / 2^(b-1)
    q = clip(round_half_even(x inv), -2^(b-1), 2^(b-1) - 1);   Q(x) = q scale
so |x - Q(x)| <= scale / 2, except the entries that round to +2^(b-1) and are clipped to
2^(b-1) - 1 (those within scale/2 of +m), where the error is at most scale. (The levels are
asymmetric: -2^(b-1)..2^(b-1)-1, and the scale is m / 2^(b-1), not m / (2^(b-1) - 1).) Values
and scales are computed in the leaf's dtype promoted to float32 (DeepSpeed quantizes fp16 data).

zeropp_qwz -- the quantized weight all-gather. Its place in ZeRO++ is the WEIGHTS of a sharded model:
  ``sync_sgd(weights=Weights(zeropp_qwz()))`` (YAML ``algorithm.weights.compressor``,
  ``simsgd.algorithms.fsdp``) all-gathers them through it, so gradients are taken at the dequantized
  weights. It is also usable as a compressor on any message (a gradient, a pseudo-gradient): every
  worker sends its message as int8 blocks of ``block_size`` consecutive entries (the last block of
  a leaf may be shorter) with one float32 scale per block; the receivers dequantize and average.
  DeepSpeed picks, per tensor, an equal group size near ``target_group_size = 8000`` (hard limit
  16000) that divides the tensor; fixed blocks of 8000 with a shorter tail are used here (at most
  one extra scale per leaf). Wire, per leaf in ``jax.tree.leaves`` order: n values at b bits
  (two's complement), then ceil(n / block_size) float32 scales; one stream, padded to whole
  bytes at the end. Props: biased, not summable (per-worker scales): all-gather; aggregate = mean.

zeropp_qgz -- quantized gradients, hierarchical: N = M nodes x D ``gpus_per_node`` workers (worker
  i on node i // D, as DeepSpeed's ranks). For a leaf of 2+ dimensions, DeepSpeed uses
  ``max(d0, d1, W)`` quantization groups of equal size; here G = max(d0, d1) groups of n / G
  entries (``group_size=0``), or fixed groups of ``group_size`` entries (last one shorter).
  1. Every worker quantizes its gradient to int4 per group (hop-1 message: the payload).
  2. Intra-node all-to-all: each worker receives its share of the groups from its D - 1 peers,
     dequantizes, and sums over the node (weighted: c_i = w_i / sum w, or 1/N).
  3. Re-quantizes the node sums to int4 with groups of the same size and alignment
     (``inter_quant_group = intra_quant_group // local_world_size`` in the code).
  4. Inter-node all-to-all; dequantizes and adds the M node sums.
  So ``aggregate = sum_m Q(sum_{i in m} c_i Q(g_i))``: quantization error twice. (DeepSpeed sums
  the unweighted dequantized values and divides by M at the end; the quantizer is scale-invariant,
  so this differs only by float rounding.) Leaves of 0 or 1 dimensions travel as float16 through
  DeepSpeed's plain reduce-scatter fallback (averaged here in float32). Not modelled: the
  fallback for tensors whose size is not a multiple of 2W, and the LoCo error-feedback variant.
  Wire (payload = hop-1 message), per leaf: quantized leaves n values at b bits then G float32
  scales; fallback leaves n float16 values; one stream padded to whole bytes.
  Bits and time: ``payload_bits`` is the hop-1 message (what ``pack`` writes). The engine prices a
  step with ``traffic`` (``qgz_collective``): the two all-to-all hops as pairwise-exchange schedules,
  hop 1 on the intra-node links (``network.intra_link``), hop 2 on each node's NIC shared by its D
  workers, then the float16 fallback's ring reduce-scatter; each worker's bits are its exact peer
  messages (``qgz_traffic``). ``down_bits(params, n)`` is the most any worker receives over both hops
  and the fallback (what ``simsgd compressors`` lists as "down"). qgZ runs only under
  ``collective: auto``: its numerics are this collective.
  Props: biased, not summable, aggregation "two_hop" (not the mean of the decodes), collective
  "two_hop_alltoall" (its own, ``Compressor.traffic``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values", "scales"],
                   meta_fields=["shape", "dtype", "group", "bits"])
@dataclasses.dataclass(frozen=True)
class BlockQuant:
    """One leaf quantized in blocks: ``values`` int8 [n] (levels in -2^(b-1)..2^(b-1)-1), ``scales``
    float32 [G]. Static metadata (never sent): the leaf's shape and dtype name, the block size, b."""
    values: jax.Array
    scales: jax.Array
    shape: tuple
    dtype: str
    group: int
    bits: int


@functools.partial(jax.tree_util.register_dataclass, data_fields=["values"], meta_fields=["dtype"])
@dataclasses.dataclass(frozen=True)
class Half:
    """One leaf sent as float16 (qgZ's reduce-scatter fallback for 0-D and 1-D leaves)."""
    values: jax.Array
    dtype: str


def _is_msg(x) -> bool:
    return isinstance(x, (BlockQuant, Half))


def _ngroups(n: int, group: int) -> int:
    return max(1, math.ceil(n / group)) if n else 0


def quantize_blocks(flat: jax.Array, group: int, bits: int):
    """``(q int8 [n], scales float32 [G])`` of a flat vector in blocks of ``group`` (last shorter)."""
    n = flat.shape[0]
    g = _ngroups(n, group)
    x = jnp.pad(flat.astype(jnp.float32), (0, g * group - n)).reshape(g, group)
    amax = jnp.max(jnp.abs(x), axis=1)
    inv = jnp.where(amax > 0, jnp.float32(2 ** bits) / (2 * amax), jnp.float32(1.0))
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = jnp.clip(jnp.round(x * inv[:, None]), lo, hi).astype(jnp.int8)
    return q.reshape(-1)[:n], 1.0 / inv


def dequantize_blocks(q: jax.Array, scales: jax.Array, group: int) -> jax.Array:
    """Q(x) as float32 [..., n] from ``q`` [..., n] and ``scales`` [..., G] (leading axes broadcast)."""
    n = q.shape[-1]
    g = scales.shape[-1]
    lead = q.shape[:-1]
    qp = jnp.pad(q.astype(jnp.float32), [(0, 0)] * len(lead) + [(0, g * group - n)])
    x = qp.reshape(lead + (g, group)) * scales[..., None]
    return x.reshape(lead + (g * group,))[..., :n]


def _encode_leaf(x, group: int, bits: int) -> BlockQuant:
    q, s = quantize_blocks(jnp.asarray(x).reshape(-1), group, bits)
    return BlockQuant(q, s, tuple(x.shape), jnp.dtype(x.dtype).name, group, bits)


def _decode_leaf(p):
    if isinstance(p, Half):
        return p.values.astype(p.dtype)
    return dequantize_blocks(p.values, p.scales, p.group).reshape(p.shape).astype(p.dtype)


def _weights(n: int, weights):
    return jnp.full((n,), 1.0 / n, jnp.float32) if weights is None else \
        (weights / jnp.sum(weights)).astype(jnp.float32)


def _leaf_fields(p, bits: int):
    """Wire fields of one leaf message: values (two's complement) then scales, or float16 values."""
    if isinstance(p, Half):
        return [wire.float_bits(np.asarray(p.values, np.float16))]
    q = np.asarray(p.values).astype(np.int64).reshape(-1) & ((1 << bits) - 1)
    return [(q.astype(np.uint64), bits), wire.float_bits(np.asarray(p.scales, np.float32))]


def _signed(u: np.ndarray, bits: int) -> np.ndarray:
    u = u.astype(np.int64)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int8)


def _check_bits(name: str, bits: int):
    if bits not in (4, 8):
        raise ValueError(f"{name}: bits must be 4 or 8 (DeepSpeed's int4/int8 kernels), got {bits}")


# ---- qwZ ---------------------------------------------------------------------------------------

def zeropp_qwz(block_size: int = 8000, bits: int = 8) -> Compressor:
    """ZeRO++ qwZ: block-wise symmetric int8 quantization (one float32 scale per block).

    Args:
      block_size: entries per block (DeepSpeed's target group size 8000, at most 16000).
      bits: 8 (qwZ) or 4.
    """
    if int(block_size) != block_size or block_size < 1:
        raise ValueError(f"zeropp_qwz: block_size must be a positive integer, got {block_size}")
    _check_bits("zeropp_qwz", bits)
    group, bits = int(block_size), int(bits)

    def init(params):
        del params
        return (), ()

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        return jax.tree.map(lambda x: _encode_leaf(x, group, bits), grads), worker_state

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(_decode_leaf, payload, is_leaf=_is_msg)

    def aggregate(payloads, server_state, weights=None):
        def leaf(p):
            n = p.values.shape[0]
            deq = dequantize_blocks(p.values, p.scales, p.group)            # [N, size]
            mean = jnp.tensordot(_weights(n, weights), deq, axes=1, precision=_HIGHEST)
            return mean.reshape(p.shape).astype(p.dtype)
        return jax.tree.map(leaf, payloads, is_leaf=_is_msg), server_state

    def specs(params):
        out = []
        for x in jax.tree.leaves(params):
            n = math.prod(x.shape)
            out += [(n, bits), (_ngroups(n, group), 32)]
        return out

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def pack(payload) -> bytes:
        return wire.pack_fields([f for p in jax.tree.leaves(payload, is_leaf=_is_msg) for f in _leaf_fields(p, bits)])

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, specs(params))
        out = [BlockQuant(jnp.asarray(_signed(fields[2 * i], bits)),
                          jnp.asarray(wire.bits_float(fields[2 * i + 1], np.float32)),
                          tuple(x.shape), jnp.dtype(x.dtype).name, group, bits)
               for i, x in enumerate(leaves)]
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=False, linear_exact=False))


# ---- qgZ ---------------------------------------------------------------------------------------

def qgz_group(shape: tuple, group_size: int) -> int | None:
    """Entries per quantization group of a leaf, or None for the float16 fallback (0-D / 1-D)."""
    if len(shape) < 2:
        return None
    n = math.prod(shape)
    if group_size:
        return int(group_size)
    return n // max(shape[0], shape[1]) if n else 1


def _qgz_groups(params, group_size: int):
    """Static per-leaf layout: list of (n, group or None)."""
    return [(math.prod(x.shape), qgz_group(tuple(x.shape), group_size)) for x in jax.tree.leaves(params)]


def _group_sizes(n: int, group: int) -> np.ndarray:
    g = _ngroups(n, group)
    sizes = np.full(g, group, np.int64)
    if g:
        sizes[-1] = n - group * (g - 1)
    return sizes


def _qgz_messages(params, n_workers: int, gpus_per_node: int, group_size: int, bits: int):
    """Bits of every peer message of qgZ's two hops: ``share`` [D] (hop 1: the message any worker sends
    to local rank j), ``part`` [D, M] (hop 2: local rank j's message to node k), and the float16
    fallback message of the 0-D/1-D leaves."""
    n, d = int(n_workers), int(gpus_per_node)
    if d < 1 or n % d:
        raise ValueError(f"qgz_traffic: gpus_per_node={gpus_per_node} must divide the {n_workers} workers")
    m_nodes = n // d
    elems = np.zeros((d, m_nodes), np.int64)    # per (local rank, node part): element and group counts
    groups = np.zeros((d, m_nodes), np.int64)
    fallback = 0
    for size, group in _qgz_groups(params, group_size):
        if group is None:
            fallback += size
            continue
        sizes = _group_sizes(size, group)
        g = np.arange(sizes.size)
        np.add.at(elems, (g % d, (g // d) % m_nodes), sizes)
        np.add.at(groups, (g % d, (g // d) % m_nodes), 1)

    def msg(e, c):
        return wire.stream_bits([(int(e), bits), (int(c), 32)]) if (e or c) else 0

    share = np.array([msg(elems[j].sum(), groups[j].sum()) for j in range(d)], np.int64)
    part = np.array([[msg(elems[j, k], groups[j, k]) for k in range(m_nodes)] for j in range(d)], np.int64)
    return share, part, wire.stream_bits([(fallback, 16)])


def qgz_traffic(params, n_workers: int, gpus_per_node: int = 8, group_size: int = 0, bits: int = 4) -> dict:
    """Exact per-worker bits of qgZ's two all-to-all hops (each peer message padded to whole bytes).

    Group g of a quantized leaf belongs to local rank ``g % D`` after hop 1 and to node
    ``(g // D) % M`` after hop 2 (DeepSpeed's swizzled partitions give the same counts whenever W
    divides the number of groups). Worker i = (node m, local rank j) sends, in hop 1, to each local
    peer j' the groups with g % D == j' (values at b bits + float32 scales, all leaves in one
    message) and receives D - 1 messages of its own share; in hop 2 it sends to each other node
    m' its re-quantized groups with (g // D) % M == m' and receives M - 1 messages of its own.

    Returns int64 arrays [N]: ``intra_sent``, ``intra_recv``, ``inter_sent``, ``inter_recv``, and
    ``fallback_bits``, the float16 message of the 0-D/1-D leaves each worker reduce-scatters.
    """
    n, d = int(n_workers), int(gpus_per_node)
    share, part, fallback = _qgz_messages(params, n, d, group_size, bits)
    out = {key: np.zeros(n, np.int64) for key in ("intra_sent", "intra_recv", "inter_sent", "inter_recv")}
    for i in range(n):
        node, j = divmod(i, d)
        out["intra_sent"][i] = share.sum() - share[j]
        out["intra_recv"][i] = (d - 1) * share[j]
        out["inter_sent"][i] = part[j].sum() - part[j, node]
        out["inter_recv"][i] = (n // d - 1) * part[j, node]
    out["fallback_bits"] = np.full(n, fallback, np.int64)
    return out


def qgz_collective(params, n_workers: int, link, intra_link=None, gpus_per_node: int = 8, group_size: int = 0,
                   bits: int = 4):
    """qgZ's collective priced step by step (``simsgd.collectives.price``): a ``network.Traffic``.

    1. Hop 1, inside every node on ``intra_link`` (default ``link``): an all-to-all by pairwise
       exchange, D - 1 synchronous steps; in step s local rank j sends its message for rank j + s
       and receives its own share from rank j - s (all nodes at once, so the node's time is one
       node's schedule).
    2. Hop 2, across nodes on ``link`` (each node's NIC): D all-to-alls run at once, one among the
       workers of each local rank, M - 1 pairwise steps each; the D of a node share its NIC, so each
       gets ``link`` bandwidth / D (as ``collectives.hierarchical_allreduce``); the hop lasts as
       long as the slowest.
    3. The float16 fallback message of the 0-D/1-D leaves: a ring reduce-scatter over all N on ``link``
       (DeepSpeed's plain ``reduce_scatter`` path).
    The hops run one after the other; per-worker bits are the exact message sizes of ``qgz_traffic``
    (the same totals), and a step lasts ``alpha + 8 max(sent, recv) / B`` over its ranks.
    """
    from simsgd import collectives
    from simsgd.network import Link, Traffic

    n, d = int(n_workers), int(gpus_per_node)
    share, part, fallback = _qgz_messages(params, n, d, group_size, bits)
    share, part = share // 8, part // 8          # whole bytes per peer message
    m_nodes = n // d
    ranks = np.arange(d)
    hop1 = collectives.price([(share[(ranks + s) % d], share[ranks]) for s in range(1, d)], d, intra_link or link)
    sent, recv = np.tile(hop1.sent_bits, m_nodes), np.tile(hop1.recv_bits, m_nodes)
    seconds = hop1.seconds
    shared = Link(link.latency_s, link.bandwidth_bps / d)
    nodes, worst = np.arange(m_nodes), 0.0
    for j in range(d):
        hop2 = collectives.price([(part[j, (nodes + s) % m_nodes], part[j, nodes]) for s in range(1, m_nodes)],
                                 m_nodes, shared)
        sent[j::d] += hop2.sent_bits
        recv[j::d] += hop2.recv_bits
        worst = max(worst, hop2.seconds)
    rs = collectives.reduce_scatter(n, int(fallback), link)
    return Traffic(sent + rs.sent_bits, recv + rs.recv_bits, seconds + worst + rs.seconds)


def zeropp_qgz(gpus_per_node: int = 8, group_size: int = 0, bits: int = 4) -> Compressor:
    """ZeRO++ qgZ: int4 block gradient quantization with the hierarchical two-hop reduction.

    Args:
      gpus_per_node: D, workers per node; the number of workers must be a multiple of it.
      group_size: 0 = DeepSpeed's rule (max(d0, d1) groups per leaf), else entries per group.
      bits: 4 (qgZ) or 8.
    """
    if int(gpus_per_node) != gpus_per_node or gpus_per_node < 1:
        raise ValueError(f"zeropp_qgz: gpus_per_node must be a positive integer, got {gpus_per_node}")
    if int(group_size) != group_size or group_size < 0:
        raise ValueError(f"zeropp_qgz: group_size must be 0 (DeepSpeed's rule) or a positive integer, got {group_size}")
    _check_bits("zeropp_qgz", bits)
    dpn, gsize, bits = int(gpus_per_node), int(group_size), int(bits)

    def init(params):
        del params
        return (), ()

    def encode_leaf(x):
        group = qgz_group(tuple(x.shape), gsize)
        if group is None:
            return Half(jnp.asarray(x).astype(jnp.float16), jnp.dtype(x.dtype).name)
        return _encode_leaf(x, group, bits)

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        return jax.tree.map(encode_leaf, grads), worker_state

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(_decode_leaf, payload, is_leaf=_is_msg)

    def aggregate(payloads, server_state, weights=None):
        def leaf(p):
            n = p.values.shape[0]
            if n % dpn:
                raise ValueError(f"zeropp_qgz: gpus_per_node={dpn} must divide the number of workers, got {n}")
            c = _weights(n, weights)
            if isinstance(p, Half):
                return jnp.tensordot(c, p.values.astype(jnp.float32), axes=1, precision=_HIGHEST).astype(p.dtype)
            m_nodes = n // dpn
            deq = dequantize_blocks(p.values, p.scales, p.group)                       # [N, size]
            node_sum = jnp.einsum("mds,md->ms", deq.reshape(m_nodes, dpn, -1), c.reshape(m_nodes, dpn),
                                  precision=_HIGHEST)                                   # hop 1 + reduce
            q2, s2 = jax.vmap(lambda v: quantize_blocks(v, p.group, p.bits))(node_sum)  # re-quantize
            out = jnp.sum(dequantize_blocks(q2, s2, p.group), axis=0)                  # hop 2 + reduce
            return out.reshape(p.shape).astype(p.dtype)
        return jax.tree.map(leaf, payloads, is_leaf=_is_msg), server_state

    def specs(params):
        out = []
        for size, group in _qgz_groups(params, gsize):
            out += [(size, 16)] if group is None else [(size, bits), (_ngroups(size, group), 32)]
        return out

    def payload_bits(params) -> int:
        return wire.stream_bits(specs(params))

    def down_bits(params, n) -> int:
        t = qgz_traffic(params, n, dpn, gsize, bits)
        fallback = int(t["fallback_bits"][0]) // 8          # bytes of the float16 message, ring reduce-scattered
        return int((t["intra_recv"] + t["inter_recv"]).max()) + 8 * (fallback - fallback // int(n))

    def pack(payload) -> bytes:
        return wire.pack_fields([f for p in jax.tree.leaves(payload, is_leaf=_is_msg) for f in _leaf_fields(p, bits)])

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, specs(params))
        out, f = [], 0
        for x, (size, group) in zip(leaves, _qgz_groups(params, gsize)):
            name = jnp.dtype(x.dtype).name
            if group is None:
                out.append(Half(jnp.asarray(wire.bits_float(fields[f], np.float16).reshape(x.shape)), name))
                f += 1
            else:
                out.append(BlockQuant(jnp.asarray(_signed(fields[f], bits)),
                                      jnp.asarray(wire.bits_float(fields[f + 1], np.float32)),
                                      tuple(x.shape), name, group, bits))
                f += 2
        return jax.tree.unflatten(treedef, out)

    def traffic(params, n, link, intra_link=None):
        return qgz_collective(params, n, link, intra_link, dpn, gsize, bits)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=False, linear_exact=False, aggregation="two_hop",
                            collective="two_hop_alltoall"),
                      down_bits=down_bits, traffic=traffic)


COMPRESSORS = {"zeropp_qwz": zeropp_qwz, "zeropp_qgz": zeropp_qgz}
DESCRIPTIONS = {
    "zeropp_qwz": "ZeRO++ qwZ: block-wise symmetric int8 quantization, one float32 scale per block of 8000 "
                  "(Wang et al., arXiv 2306.10209, 2023)",
    "zeropp_qgz": "ZeRO++ qgZ: int4 block quantization, intra-node all-to-all reduce, re-quantize, inter-node "
                  "all-to-all (quantized twice) (Wang et al., arXiv 2306.10209, 2023)",
}
