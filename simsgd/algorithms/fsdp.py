"""Sharded data parallelism (FSDP / ZeRO-3) with quantized weights, for ``sync_sgd(weights=...)``.

Each of the N workers owns 1/N of the model (and of its optimizer state). A step, as ZeRO-3 and
PyTorch FSDP run it (Rajbhandari et al., SC 2020, section 5; Zhao et al., VLDB 2023):

1. all-gather the weights from their owners, each owner sending its shard through a weight
   compressor Q_w (ZeRO++ qwZ: int8 blocks, Wang et al. 2023 section 3.1; QSDP: a random-shift
   lattice quantizer, Markov et al., ICML 2023, section 3), so every worker computes its gradient at
   the SAME dequantized point D(Q_w(x)), not at x;
2. every worker's gradient goes through the gradient compressor Q_g and is reduce-scattered to the
   owners (a ring reduce-scatter for summable payloads; an all-to-all of the quantized chunks, each
   owner dequantizing and summing, for the others, as QSDP and qgZ do);
3. each owner applies the optimizer to its shard. ``update="master"`` keeps full-precision master
   weights (what ZeRO++ and QSDP's implementation do); ``update="quantized"`` keeps only quantized
   weights, x_{t+1} = Q_w(x_t - eta Q_g(g_t)) (the update QSDP analyses, section 4), so step 1 sends
   x_t itself.

The numerics of one quantization per step: every owner quantizes its shard once and everyone
receives the same values, so one shared ``Q_w`` draw (from the step key) stands for all owners.
Deviation: Q_w's blocks/buckets run over each whole leaf, where a real owner quantizes its own
shard (block boundaries can differ at the shard edges; the bit count differs by at most one
block's scales per shard and is counted from the whole-leaf payload).

Traffic, per step: the gradient collective (``collectives.reduce_scatter`` of ``payload_bits`` or
``collectives.all_to_all``; a compressor with its own collective, qgZ, already ends reduce-scattered
and is priced by its ``traffic``), then ``collectives.shard_allgather`` of the weights' payload
(dense float32 without a weight compressor). Multi-round gradient compressors (PowerSGD, Dion)
and variable-length messages are refused here: their protocols need every worker's full factors.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from simsgd import collectives
from simsgd.algorithms.base import System, add_traffic
from simsgd.compress.base import Compressor, up_rounds
from simsgd.network import Traffic
from simsgd.tree import tree_bits

UPDATES = ("master", "quantized")
KEY_TAG = 0x5D0   # fold_in tag of the weight-quantization key (keeps the other draws of a step unchanged)


class Weights(NamedTuple):
    """The sharded-weights setting: ``compressor`` Q_w (None: float32 weights) and the ``update`` rule."""
    compressor: Compressor | None = None
    update: str = "master"


def check(weights: Weights, compressor: Compressor, system: System) -> None:
    """Raise ValueError for settings this model cannot price or run."""
    if weights.update not in UPDATES:
        raise ValueError(f"weights.update must be one of {', '.join(UPDATES)}, got {weights.update!r}")
    w = weights.compressor
    if w is not None:
        state = jax.eval_shape(w.init, {"w": jax.ShapeDtypeStruct((4, 4), "float32")})
        if jax.tree.leaves(state) or w.message_bytes is not None or w.round_bits is not None or w.traffic is not None:
            raise ValueError("weights.compressor must be a stateless, fixed-size, one-message compressor (a cast or a "
                             "quantizer: fp16, bf16, zeropp_qwz, qsdp, qsgd, natural)")
    elif weights.update == "quantized":
        raise ValueError("weights.update 'quantized' needs a weights.compressor")
    if compressor.message_bytes is not None or compressor.down_message_bytes is not None:
        raise ValueError("sharded weights: the gradient compressor must send fixed-size messages")
    if compressor.round_bits is not None:
        raise ValueError("sharded weights: multi-round gradient compressors (PowerSGD, Dion) need every worker's full "
                         "factors, not a shard")
    if system.collective != "auto":
        raise ValueError(f"sharded weights run FSDP's reduce-scatter and all-gather: network.collective must be "
                         f"'auto', got {system.collective!r}")
    if system.bucket_bytes is not None:
        raise ValueError("sharded weights: overlap (overlap_bucket_mb) models DDP's bucketed all-reduce; unset it")


def quantize(weights: Weights, key, params):
    """D(Q_w(params)): the weights every worker computes at (``params`` itself without a compressor)."""
    w = weights.compressor
    if w is None:
        return params
    ws, ss = w.init(params)
    payload, _ = w.encode(key, params, ws, ss)
    return w.decode(payload, ss)


def traffic(system: System, n: int, compressor: Compressor, weights: Weights, shapes) -> Traffic:
    """One sharded step's traffic: the gradients to their owners, then the weights' all-gather."""
    if compressor.traffic is not None:           # its own collective, ending reduce-scattered (qgZ)
        grads = compressor.traffic(shapes, n, system.link, system.intra_link)
    else:
        bits = up_rounds(compressor, shapes)[0]
        grads = (collectives.reduce_scatter if compressor.props.summable else collectives.all_to_all)(
            n, bits, system.link)
    w = weights.compressor
    gather = collectives.shard_allgather(n, w.payload_bits(shapes) if w is not None else tree_bits(shapes),
                                         system.link)
    return add_traffic([grads, gather])
