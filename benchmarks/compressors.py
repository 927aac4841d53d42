"""Compressor speed against one memory pass.

For every registered compressor (paper defaults), times one jitted encode of N workers' gradients
(vmapped over the worker axis) followed by ``aggregate``, against (a) one memory pass over the same
[N, d] gradients (negation: read all, write all) and (b) for low-rank compressors, their matmul
cost at their OWN default rank r (the [N, m, m] x [m, r] product of one power iteration; r read
from the factory's defaults: ``rank`` for PowerSGD and L-GreCo, ``int(rank_fraction * m)`` for
Dion, see ``default_rank``). Gradients are one [m, m] matrix per worker (low-rank methods need a
matrix), d = m^2. A name that is not registered, or a compressor that fails to build or run, is
reported as a failed row; the others still run.

Cases (issue 3): N=64, d=1,000,000 (m=1000) and the large case N=16, d=25,000,000 (m=5000).
Target on a GPU: elementwise and sparsifying compressors within 3x a memory pass; low-rank ones
within 3x their matmul cost at their own rank (column "rank"; compressors without one leave it blank).

    python benchmarks/compressors.py [--cases 64x1000 16x5000] [--repeats 5] [--only qsgd topk]
"""
from __future__ import annotations

import argparse
import inspect
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from simsgd import tree
from simsgd.compress import COMPRESSORS


def median_seconds(f, *args, repeats=5):
    jax.block_until_ready(f(*args))   # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def default_rank(name: str, m: int) -> int | None:
    """Rank a low-rank compressor runs at on an m x m matrix with its factory's defaults, None for
    the others: ``rank`` (PowerSGD, L-GreCo's base rank) capped at m, or ``max(1, int(rank_fraction
    * m))`` (Dion). Read from the signature, so a changed default changes the baseline with it."""
    try:
        params = inspect.signature(COMPRESSORS[name]).parameters
    except (KeyError, TypeError, ValueError):
        return None
    frac = params.get("rank_fraction")
    if frac is not None and isinstance(frac.default, (int, float)):
        return max(1, min(m, int(frac.default * m)))
    rank = params.get("rank")
    if rank is not None and isinstance(rank.default, int) and not isinstance(rank.default, bool):
        return max(1, min(m, rank.default))
    return None


def case(n, m, names, repeats):
    grads = {"w": jax.random.normal(jax.random.key(0), (n, m, m), jnp.float32)}
    one = tree.take_worker(grads, 0)
    memory = median_seconds(jax.jit(lambda g: jax.tree.map(jnp.negative, g)), grads, repeats=repeats)
    matmul = {}     # rank -> seconds of the [n, m, m] x [m, rank] product

    def matmul_seconds(r):
        if r not in matmul:
            q = jax.random.normal(jax.random.key(1), (m, r), jnp.float32)
            matmul[r] = median_seconds(jax.jit(lambda g, q: jnp.einsum("nij,jr->nir", g["w"], q)), grads, q,
                                       repeats=repeats)
        return matmul[r]

    keys = jax.random.split(jax.random.key(2), n)
    rows = []
    for name in names:
        try:
            if name not in COMPRESSORS:
                raise KeyError(f"not a registered compressor (known: {len(COMPRESSORS)} names, see simsgd list)")
            c = COMPRESSORS[name]()
            ws, ss = c.init(one)
            ws_n = tree.broadcast_workers(ws, n)

            def step(keys, grads, ws_n, ss, c=c):
                payloads, ws_n = jax.vmap(c.encode, in_axes=(0, 0, 0, None))(keys, grads, ws_n, ss)
                mean, ss = c.aggregate(payloads, ss, None)
                return mean, ws_n, ss

            s = median_seconds(jax.jit(step), keys, grads, ws_n, ss, repeats=repeats)
            row = {"name": name, "seconds": s, "x_memory": s / memory}
            r = default_rank(name, m)
            if r is not None:
                row.update(rank=r, matmul_s=matmul_seconds(r), x_matmul=s / matmul_seconds(r))
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            rows.append({"name": name, "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        rows.append(row)
    return {"n": n, "d": m * m, "memory_pass_s": memory, "matmul_s_by_rank": matmul, "rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=["64x1000", "16x5000"], help="NxM: N workers, one MxM matrix each")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", nargs="+", default=None, help="compressor names (default: all)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    names = args.only or list(COMPRESSORS)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    out = []
    for spec in args.cases:
        n, m = map(int, spec.split("x"))
        r = case(n, m, names, args.repeats)
        out.append(r)
        print(f"\nN={n}, d={m * m:,}: memory pass {r['memory_pass_s'] * 1e3:.2f} ms; matmul [N,m,m]x[m,rank]: "
              + (", ".join(f"rank {k} {v * 1e3:.2f} ms" for k, v in sorted(r["matmul_s_by_rank"].items())) or "none"))
        print(f"{'compressor':<16} {'ms':>10} {'x memory':>9} {'rank':>5} {'x matmul':>9}")
        for row in r["rows"]:
            if "error" in row:
                print(f"{row['name']:<16} failed: {row['error']}")
            elif "rank" in row:
                print(f"{row['name']:<16} {row['seconds'] * 1e3:>10.2f} {row['x_memory']:>9.2f} {row['rank']:>5} "
                      f"{row['x_matmul']:>9.2f}")
            else:
                print(f"{row['name']:<16} {row['seconds'] * 1e3:>10.2f} {row['x_memory']:>9.2f} {'':>5} {'':>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
