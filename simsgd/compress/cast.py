"""Casts: fp16 / bf16 values on the wire, and natural compression (random rounding to a power of two).

- ``fp16`` / ``bf16`` (research/compressors.md §1.1): each worker sends ``cast_b(g_i)`` (round to
  nearest even); the all-reduce runs in the wire dtype. PyTorch's DDP ``fp16_compress_hook`` /
  ``bf16_compress_hook`` cast the bucket first, then divide by the world size in the wire dtype
  (``buffer.to(torch.float16).div_(world_size)``), all-reduce, and cast the result back. Summable
  (dense, same support), biased (deterministic rounding), 16 bits per entry.
- ``natural`` (Horvath, Ho, Horvath, Sahu, Canini & Richtarik, "Natural Compression for Distributed
  Deep Learning", arXiv 1905.10988, MSML 2022): ``C_nat(t) = sign(t) 2^a`` with probability
  ``1 - q`` and ``sign(t) 2^(a+1)`` with probability ``q``, ``a = floor(log2 |t|)``, ``q = |t|/2^a - 1``.
  Unbiased, ``E(C_nat(t) - t)^2 = 4^a q (1 - q) <= t^2 / 8`` (omega = 1/8, equality at q = 1/3).
  The result is a float32 with a zero mantissa: 1 sign bit + 8 exponent bits = 9 bits per entry
  (32/9 = 3.56x for binary32, as the paper's abstract states). Not summable (a sum of powers of
  two is not one): all-gather or a parameter server.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import payload as wire
from simsgd.compress.base import Compressor, Props
from simsgd.compress.quantize import random_bits

WIRE_DTYPES = {"fp16": jnp.float16, "bf16": jnp.bfloat16}


@functools.partial(jax.tree_util.register_dataclass, data_fields=["data"], meta_fields=["dtype"])
@dataclasses.dataclass(frozen=True)
class CastLeaf:
    """One leaf's message: ``data`` (the leaf's shape) in the wire format, and ``dtype`` (static
    metadata, never sent): the name of the leaf's own dtype, which decoding returns to."""
    data: jax.Array
    dtype: str


def _is_cast(x) -> bool:
    return isinstance(x, CastLeaf)


def _leaves(payload):
    return jax.tree.leaves(payload, is_leaf=_is_cast)


# ---- fp16 / bf16 ------------------------------------------------------------------------------------

def _cast(name: str, wire_sum: bool) -> Compressor:
    wdt = WIRE_DTYPES[name]
    wbits = jnp.dtype(wdt).itemsize * 8

    def init(params):
        del params
        return (), ()

    def encode(key, grads, worker_state, server_state):
        del key, server_state
        return jax.tree.map(lambda g: CastLeaf(g.astype(wdt), jnp.dtype(g.dtype).name), grads), worker_state

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(lambda p: p.data.astype(p.dtype), payload, is_leaf=_is_cast)

    def ring_mean(data, weights):
        """The all-reduce in the wire dtype: each worker's contribution ``c_i = cast(p_i / N)`` (or
        ``cast(p_i w_i / sum w)``), then ``s = c_0; s = cast(s + c_i)`` for i = 1..N-1."""
        n = data.shape[0]
        if weights is None:
            contrib = (data / n).astype(wdt)
        else:
            w = (weights / jnp.sum(weights)).astype(jnp.float32)
            contrib = (data.astype(jnp.float32) * w.reshape((n,) + (1,) * (data.ndim - 1))).astype(wdt)
        total, _ = jax.lax.scan(lambda s, c: ((s + c).astype(wdt), None), contrib[0], contrib[1:])
        return total

    def aggregate(payloads, server_state, weights=None):
        if wire_sum:
            out = jax.tree.map(lambda p: ring_mean(p.data, weights).astype(p.dtype), payloads, is_leaf=_is_cast)
        else:
            out = tree.wmean(decode(payloads, server_state), weights)
            out = jax.tree.map(lambda o, p: o.astype(p.dtype), out, payloads, is_leaf=_is_cast)
        return out, server_state

    def payload_bits(params) -> int:
        return wire.stream_bits([(math.prod(x.shape), wbits) for x in jax.tree.leaves(params)])

    def pack(payload) -> bytes:
        return wire.pack_fields([wire.float_bits(np.asarray(p.data)) for p in _leaves(payload)])

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, [(math.prod(x.shape), wbits) for x in leaves])
        out = [CastLeaf(wire.bits_float(f, jnp.dtype(wdt)).reshape(x.shape), jnp.dtype(x.dtype).name)
               for f, x in zip(fields, leaves)]
        return jax.tree.unflatten(treedef, out)

    # A parameter server replies with the mean in the wire dtype when it sums there, else dense.
    down = (lambda params, n: payload_bits(params)) if wire_sum else None
    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="biased", summable=True, linear_exact=False,
                            aggregation="wire_mean" if wire_sum else "mean"),
                      down_bits=down)


_CAST_DOC = """{name}: every value travels as {dtype} (round to nearest even), {bits} bits per entry.

    Args:
      wire_sum: True (default; what DDP's ``{name}_compress_hook`` and NCCL do): the all-reduce adds
        in the wire dtype, so ``aggregate`` rounds each worker's share ``p_i / N`` (or ``p_i w_i /
        sum w``) to {dtype}, then sums them one hop at a time in worker order, rounding after each
        of the N-1 additions (one ring order for every entry; a real ring starts each chunk at a
        different rank), and casts the result back to the leaf's dtype (Props.aggregation
        "wire_mean"; a parameter server replies with 16 bits per entry). False: decode each payload
        to the leaf's dtype and average there (aggregation "mean", dense reply), i.e. only the
        upward message is rounded.

    Decode: ``cast_back(cast_{short}(g))``; kind "biased" (deterministic rounding: within half an
    ulp of {dtype}, relative error <= {eps} for normal values{range}). Summable.
    Wire format: per leaf, row-major, the little-endian {dtype} bit patterns; no header.
    References: research/compressors.md §1.1; PyTorch ``torch/distributed/algorithms/ddp_comm_hooks/
    default_hooks.py`` (cast, then ``div_(world_size)`` in the wire dtype, then all-reduce);
    grace ``compressor/fp16.py``.
    """


def fp16(wire_sum: bool = True) -> Compressor:
    if not isinstance(wire_sum, (bool, np.bool_)):
        raise ValueError(f"fp16: wire_sum must be true or false, got {wire_sum!r}")
    return _cast("fp16", bool(wire_sum))


def bf16(wire_sum: bool = True) -> Compressor:
    if not isinstance(wire_sum, (bool, np.bool_)):
        raise ValueError(f"bf16: wire_sum must be true or false, got {wire_sum!r}")
    return _cast("bf16", bool(wire_sum))


fp16.__doc__ = _CAST_DOC.format(name="fp16", dtype="float16", bits=16, short="fp16", eps="2^-11",
                                range="; |g| > 65504 overflows to inf and |g| < 2^-25 flushes to 0")
bf16.__doc__ = _CAST_DOC.format(name="bf16", dtype="bfloat16", bits=16, short="bf16", eps="2^-8",
                                range="; float32's range")


# ---- natural compression ------------------------------------------------------------------------------

def natural_draws(key, grads):
    """The uniform integers natural compression draws: per leaf, iid uniform on [0, 2^23) (uint32,
    the leaf's shape), ``jax.random.bits(fold_in(key, leaf index), shape) >> 9`` (computed by
    ``quantize.random_bits``, the same words, fusable). Entry j rounds up iff ``r_j < m_j``, its
    23-bit float32 mantissa, i.e. with probability exactly ``q = m_j / 2^23``."""
    return [random_bits(jax.random.fold_in(key, i), x.shape) >> 9 for i, x in enumerate(jax.tree.leaves(grads))]


def _max_exponent_field(dtype) -> int:
    """The largest float32 exponent field whose power of two is finite in ``dtype``."""
    return 127 + int(math.floor(math.log2(float(jnp.finfo(dtype).max))))


def natural() -> Compressor:
    """Natural compression C_nat: each entry randomly rounded to one of the two powers of two around it.

    Per entry t (computed on its float32 value, sign s, exponent field E, mantissa m, 23 bits):
    the result has exponent field ``E' = E + 1{r < m}`` with r uniform on [0, 2^23) and mantissa 0,
    i.e. ``2^a`` or ``2^(a+1)`` with ``P(up) = q = m / 2^23 = |t|/2^a - 1``: the paper's rule, exact
    (no float rounding in q). Unbiased with ``E(C(t) - t)^2 = 4^a q (1 - q) <= t^2/8``.

    Edge cases (stated; the paper does not treat them): t = 0 stays 0. Float32 subnormals (|t| <
    2^-126, exponent field 0) round to 0 or 2^-126 with ``P(2^-126) = |t| / 2^-126``: still
    unbiased, but their variance is not bounded by t^2/8. Rounding up past the largest power of two
    finite in the leaf's dtype (2^127 for float32/bf16, 2^15 for float16) is clamped to it
    (biased only there). Inputs must be finite.

    Wire format: per entry 9 bits, ``sign << 8 | E'`` (E' = 0 means zero), leaves in
    ``jax.tree.leaves`` order, one stream padded to whole bytes: ``payload_bits = 8 * ceil(9 D /
    8)``. Deviation from grace (``compressor/natural.py``), which fits the code into one byte by
    clamping the exponent to [-110, 17] (lossy): here the full 8-bit exponent is kept, as in the
    paper's 9-bit count. Decoding returns the leaf's dtype (exact: every power of two produced is
    representable there). Props: kind "unbiased" (omega = 1/8), not summable (mean of decodes).
    Randomness: independent per worker (the engine's per-worker key), see ``natural_draws``.
    """

    def init(params):
        del params
        return (), ()

    def encode_leaf(g, r):
        bits = jax.lax.bitcast_convert_type(g.astype(jnp.float32), jnp.uint32)
        sign = bits >> 31
        e = (bits >> 23) & 0xFF
        m = bits & 0x7FFFFF
        e_new = jnp.minimum(e + (r < m).astype(jnp.uint32), _max_exponent_field(g.dtype))
        return CastLeaf(((sign << 8) | e_new).astype(jnp.uint16), jnp.dtype(g.dtype).name)

    def encode(key, grads, worker_state, server_state):
        del server_state
        leaves, treedef = jax.tree.flatten(grads)
        out = [encode_leaf(g, r) for g, r in zip(leaves, natural_draws(key, grads))]
        return jax.tree.unflatten(treedef, out), worker_state

    def decode_leaf(p):
        code = p.data.astype(jnp.uint32)
        value = jax.lax.bitcast_convert_type(((code >> 8) << 31) | ((code & 0xFF) << 23), jnp.float32)
        return value.astype(p.dtype)

    def decode(payload, server_state):
        del server_state
        return jax.tree.map(decode_leaf, payload, is_leaf=_is_cast)

    def aggregate(payloads, server_state, weights=None):
        out = tree.wmean(jax.tree.map(lambda p: decode_leaf(p).astype(jnp.float32), payloads, is_leaf=_is_cast),
                         weights)
        return jax.tree.map(lambda o, p: o.astype(p.dtype), out, payloads, is_leaf=_is_cast), server_state

    def payload_bits(params) -> int:
        return wire.stream_bits([(math.prod(x.shape), 9) for x in jax.tree.leaves(params)])

    def pack(payload) -> bytes:
        return wire.pack_fields([(np.asarray(p.data).reshape(-1).astype(np.uint64), 9) for p in _leaves(payload)])

    def unpack(data: bytes, params):
        leaves, treedef = jax.tree.flatten(params)
        fields = wire.unpack_fields(data, [(math.prod(x.shape), 9) for x in leaves])
        out = [CastLeaf(f.astype(np.uint16).reshape(x.shape), jnp.dtype(x.dtype).name) for f, x in zip(fields, leaves)]
        return jax.tree.unflatten(treedef, out)

    return Compressor(init, encode, decode, aggregate, payload_bits, pack, unpack,
                      Props(kind="unbiased", summable=False, linear_exact=False))


COMPRESSORS = {"fp16": fp16, "bf16": bf16, "natural": natural}
DESCRIPTIONS = {
    "fp16": "float16 values on the wire, all-reduce summed in float16 "
            "(PyTorch DDP fp16_compress_hook, ddp_comm_hooks/default_hooks.py)",
    "bf16": "bfloat16 values on the wire, all-reduce summed in bfloat16 "
            "(PyTorch DDP bf16_compress_hook, ddp_comm_hooks/default_hooks.py)",
    "natural": "natural compression: unbiased random rounding to a power of two, 9 bits per entry "
               "(Horvath et al., arXiv 1905.10988, 2019)",
}
