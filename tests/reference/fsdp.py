"""Sharded SGD with quantized weights (ZeRO++ qwZ, QSDP), float64: the gradient is taken at the
dequantized weights D(Q_w(x)) that every worker receives from the all-gather; the master weights
stay full precision (``master``) or are themselves quantized after each update (``quantized``:
x_{t+1} = Q_w(x_t - lr g_t), QSDP's analysed update)."""
from tests.reference.compress_zeropp import qdq
from tests.reference.linear import grad


def sgd_qwz(p, data, lr, steps, group=8000, bits=8):
    """Plain SGD, N workers (``data``: list of (x_i, y_i)), gradients at qwZ-dequantized weights."""
    for _ in range(steps):
        at = {k: qdq(v, group, bits).reshape(v.shape) for k, v in p.items()}
        gs = [grad(at, x, y) for x, y in data]
        p = {k: p[k] - lr * sum(g[k] for g in gs) / len(gs) for k in p}
    return p
