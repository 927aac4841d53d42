"""More collectives, priced step by step: recursive halving/doubling, reduce-scatter, hierarchical.

Each collective here is written as its actual schedule: a list of synchronous steps, and in each
step the exact bytes every rank sends and receives. A step costs ``alpha + 8 * max_i max(sent_i,
recv_i) / B`` (full-duplex links, the slowest rank ends the step), so both the per-worker bits
and the time follow from the schedule, not from a closed form; the closed forms of the sources
are what the tests check the schedules against (research/network_perf.md A1.1):

- reduce-scatter, ring: ``(n-1) alpha + (n-1)/n S/B`` (MPICH ``reduce_scatter`` ring variant);
- all-gather, recursive doubling: ``lg n alpha + (n-1)/n S/B`` (MPICH
  ``allgather_intra_recursive_doubling.c``), S the gathered total;
- all-reduce, Rabenseifner (recursive-halving reduce-scatter, recursive-doubling all-gather):
  ``2 lg n alpha + 2 (n-1)/n S/B`` for a power of two n (MPICH
  ``allreduce_intra_reduce_scatter_allgather.c``; Thakur, Rabenseifner & Gropp, IJHPCA 2005).
  Other n: the ``n - p`` ranks above the largest power of two p first hand their whole vector to a
  partner and get the result back at the end (two extra steps of S), as MPICH folds them;
- hierarchical all-reduce (g ranks per node, m nodes): ring reduce-scatter inside each node, ring
  all-reduce of each rank's 1/g shard across nodes (the node's g shards share its NIC), ring
  all-gather inside the node (phase order as Huawei HCCL's hierarchical algorithm; NCCL splits
  intra- and inter-node ring steps the same way).

Bytes, not bits, are the unit of the schedules (messages are whole bytes); ``Traffic`` reports bits.
"""
from __future__ import annotations

import numpy as np

from simsgd.network import Link, Traffic

Step = tuple[np.ndarray, np.ndarray]   # (sent bytes [n], received bytes [n]) in one synchronous step


def _chunks(size: int, parts: int) -> np.ndarray:
    """Split ``size`` bytes into ``parts`` chunks as evenly as possible (the first ones one byte larger)."""
    return np.array([size // parts + (j < size % parts) for j in range(parts)], np.int64)


def price(steps: list[Step], n: int, link: Link) -> Traffic:
    """Per-rank bits and the time of a schedule of synchronous steps over identical links."""
    sent, recv, seconds = np.zeros(n, np.int64), np.zeros(n, np.int64), 0.0
    for s, r in steps:
        if not (s.any() or r.any()):
            continue
        sent, recv = sent + s, recv + r
        seconds += link.latency_s + 8.0 * float(max(s.max(), r.max())) / link.bandwidth_bps
    return Traffic(8 * sent, 8 * recv, seconds)


def _whole_bytes(message_bits: int) -> int:
    if int(message_bits) != message_bits or message_bits < 0 or message_bits % 8:
        raise ValueError(f"message_bits must be a non-negative multiple of 8, got {message_bits}")
    return int(message_bits) // 8


def ring_reduce_scatter_steps(n: int, size: int) -> list[Step]:
    """Ring reduce-scatter of ``size`` bytes: in step s rank i sends chunk (i - s) mod n to i + 1."""
    c, i = _chunks(size, n), np.arange(n)
    return [(c[(i - s) % n], c[(i - 1 - s) % n]) for s in range(n - 1)]


def ring_allgather_steps(n: int, size: int) -> list[Step]:
    """Ring all-gather completing the reduce-scatter above: rank i starts owning chunk (i + 1) mod n."""
    c, i = _chunks(size, n), np.arange(n)
    return [(c[(i + 1 - s) % n], c[(i - s) % n]) for s in range(n - 1)]


def reduce_scatter(n: int, message_bits: int, link: Link) -> Traffic:
    """Ring reduce-scatter of one ``message_bits`` vector per rank; each ends with the sum of one 1/n shard."""
    size = _whole_bytes(message_bits)
    return price(ring_reduce_scatter_steps(n, size) if n > 1 and size else [], n, link)


def _halving_doubling(p: int, size: int) -> tuple[list[Step], list[Step]]:
    """Recursive-halving reduce-scatter and recursive-doubling all-gather among p = 2^k ranks."""
    c = _chunks(size, p)
    prefix = np.concatenate([[0], np.cumsum(c)])
    ranks = np.arange(p)
    lo, hi = np.zeros(p, np.int64), np.full(p, p, np.int64)      # chunk range each rank is responsible for
    halving = []
    span = p
    while span > 1:
        span //= 2
        keep_upper = (ranks // span) % 2 == 1                      # the half holding the rank's own chunk
        mid = lo + span
        send = np.where(keep_upper, prefix[mid] - prefix[lo], prefix[hi] - prefix[mid])
        partner = ranks ^ span
        halving.append((send, send[partner]))
        lo, hi = np.where(keep_upper, mid, lo), np.where(keep_upper, hi, mid)
    doubling = []
    span = 1
    while span < p:
        partner = ranks ^ span
        send = prefix[hi] - prefix[lo]
        doubling.append((send, send[partner]))
        lo, hi = np.minimum(lo, lo[partner]), np.maximum(hi, hi[partner])
        span *= 2
    return halving, doubling


def _fold(n: int, size: int, phases: list[Step]) -> list[Step]:
    """Run ``phases`` (scheduled for the largest power of two p <= n) with the n - p extra ranks folded in."""
    p = 1 << (n.bit_length() - 1)
    if p == n:
        return phases
    extra = np.arange(p, n)
    give = np.zeros(n, np.int64)
    take = np.zeros(n, np.int64)
    give[extra], take[extra - p] = size, size                      # extra rank r hands S to r - p ...
    pad = lambda a: np.concatenate([a, np.zeros(n - p, np.int64)])
    inner = [(pad(s), pad(r)) for s, r in phases]
    return [(give, take)] + inner + [(take, give)]                 # ... and gets the result back


def rabenseifner_allreduce(n: int, message_bits: int, link: Link) -> Traffic:
    """All-reduce by recursive halving then recursive doubling (Rabenseifner), any n (folded extras)."""
    size = _whole_bytes(message_bits)
    if n <= 1 or size == 0:
        return price([], n, link)
    p = 1 << (n.bit_length() - 1)
    halving, doubling = _halving_doubling(p, size)
    return price(_fold(n, size, halving + doubling), n, link)


def recursive_doubling_allgather(n: int, message_bits: int, link: Link) -> Traffic:
    """All-gather of one ``message_bits`` piece per rank by recursive doubling (n a power of two)."""
    size = _whole_bytes(message_bits)
    if n & (n - 1):
        raise ValueError(f"recursive doubling all-gather needs a power-of-two number of ranks, got {n}")
    if n <= 1 or size == 0:
        return price([], n, link)
    _, doubling = _halving_doubling(n, size * n)
    return price(doubling, n, link)


def hierarchical_allreduce(nodes: int, per_node: int, message_bits: int, intra: Link, inter: Link) -> Traffic:
    """Hierarchical all-reduce over ``nodes`` x ``per_node`` ranks (rank = node * per_node + local).

    Phases: ring reduce-scatter inside every node on ``intra`` links; ring all-reduce across nodes
    of each rank's shard (S / g bytes), the g concurrent inter-node rings of a node sharing its NIC
    ``inter`` (so each gets inter.bandwidth / g); ring all-gather inside every node. Per-rank bits
    add up the traffic of all three phases; time is their sum.
    """
    size = _whole_bytes(message_bits)
    g, m = int(per_node), int(nodes)
    n = g * m
    if n <= 1 or size == 0:
        return price([], n, intra)
    sent, recv, seconds = np.zeros(n, np.int64), np.zeros(n, np.int64), 0.0
    if g > 1:
        rs, ag = ring_reduce_scatter_steps(g, size), ring_allgather_steps(g, size)
        for phase in (rs, ag):
            t = price(phase, g, intra)
            sent, recv, seconds = sent + np.tile(t.sent_bits, m), recv + np.tile(t.recv_bits, m), seconds + t.seconds
    if m > 1:
        shards = _chunks(size, g)                      # rank with local index l owns shard (l + 1) mod g
        shared = Link(inter.latency_s, inter.bandwidth_bps / g)
        worst = 0.0
        for local in range(g):
            shard = int(shards[(local + 1) % g]) if g > 1 else size
            steps = ring_reduce_scatter_steps(m, shard) + ring_allgather_steps(m, shard)
            t = price(steps, m, shared)
            sent[local::g] += t.sent_bits
            recv[local::g] += t.recv_bits
            worst = max(worst, t.seconds)
        seconds += worst
    return Traffic(sent, recv, seconds)


def binary_tree(n: int) -> np.ndarray:
    """Parent of each rank (-1 for the root) in the in-order binary tree NCCL builds (``ncclGetBtree``):
    rank r sits at the level of its lowest set bit, so odd ranks are leaves and rank 0 is the root."""
    parent = np.full(n, -1, np.int64)
    for r in range(1, n):
        bit = r & -r
        up = (r ^ bit) | (bit << 1)
        parent[r] = up if up < n else r ^ bit
    return parent


def double_binary_tree_allreduce(n: int, message_bits: int, link: Link) -> Traffic:
    """All-reduce over two complementary binary trees (Sanders, Speck & Traeff 2009; NCCL's tree algorithm).

    Each tree reduces one half of the message to its root and broadcasts the result back; the second
    tree is the first mirrored (r -> n-1-r, n even) or shifted (r -> r+1 mod n, n odd), so a rank is
    an interior node of at most one of them (NCCL ``src/graph/trees.cc``). Every rank sends to its
    parent and children in both phases; per-rank bits are those exact counts. With the halves cut into
    small pipelined chunks (NCCL's model), the time is ``2 depth alpha + max_i max(sent_i, recv_i) / B``:
    about ``2 lg n alpha + 2 S / B`` (NCCL ``tuning.cc``: tree latency 2 lg(n) steps, algBw = busBw / 2).
    """
    size = _whole_bytes(message_bits)
    if n <= 1 or size == 0:
        return price([], n, link)
    first = binary_tree(n)
    relabel = (n - 1 - np.arange(n)) if n % 2 == 0 else (np.arange(n) + 1) % n
    second = np.full(n, -1, np.int64)
    second[relabel] = np.where(first >= 0, relabel[np.maximum(first, 0)], -1)
    sent, recv, depth = np.zeros(n, np.int64), np.zeros(n, np.int64), 0
    for parent, half in ((first, size - size // 2), (second, size // 2)):
        children = np.bincount(parent[parent >= 0], minlength=n)
        has_parent = (parent >= 0).astype(np.int64)
        # reduce: each rank receives from its children, sends to its parent; broadcast: the reverse
        sent += half * (has_parent + children)
        recv += half * (children + has_parent)
        for r in range(n):
            d, x = 0, r
            while parent[x] >= 0:
                x, d = parent[x], d + 1
            depth = max(depth, d)
    seconds = 2 * depth * link.latency_s + 8.0 * float(np.maximum(sent, recv).max()) / link.bandwidth_bps
    return Traffic(8 * sent, 8 * recv, seconds)


def all_to_all(n: int, message_bits: int, link: Link) -> Traffic:
    """Pairwise-exchange all-to-all of one ``message_bits`` vector per rank cut into n chunks (chunk j
    goes to rank j): n - 1 steps; in step s rank i sends chunk (i + s) mod n and receives its own chunk
    i from rank i - s (MPICH ``alltoall`` pairwise algorithm). Per rank (n-1)/n S each way."""
    size = _whole_bytes(message_bits)
    if n <= 1 or size == 0:
        return price([], n, link)
    c, i = _chunks(size, n), np.arange(n)
    return price([(c[(i + s) % n], c[i]) for s in range(1, n)], n, link)


def shard_allgather(n: int, total_bits: int, link: Link) -> Traffic:
    """Ring all-gather of a ``total_bits`` vector sharded over n ranks (rank i owns chunk (i + 1) mod n,
    as after ``reduce_scatter``): what FSDP / ZeRO-3 runs to rebuild the weights. n - 1 steps."""
    size = _whole_bytes(total_bits)
    return price(ring_allgather_steps(n, size) if n > 1 and size else [], n, link)
