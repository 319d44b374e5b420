"""``--floor``: how fast could a workload be, if its matrix products were all it did?

A step of a minigen workload is, at bottom, a list of matrix products (linear layers,
the convolutions as im2col products, attention) plus elementwise passes, copies and
Python.  This mode records that list during one minigen step, then times each product
alone on operands built beforehand -- ``numpy.matmul`` (the OpenBLAS that minigen runs on),
the faster of one call and the chunked two-thread split minigen's convolutions use, and
``torch.matmul`` on the same shapes -- and sets the sum beside the PyTorch twin's whole step:

    floor_ratio = (the step's products alone, NumPy) / (PyTorch's whole step)

A ratio target below ``floor_ratio`` cannot be met by any NumPy code that computes these
products this way, however little else it does.  A second, tighter estimate keeps PyTorch's own
time for everything else (its step less the same products timed by ``torch.matmul``):

    parity_ratio = (NumPy's products + PyTorch's step - torch.matmul's products) / (PyTorch's step)
                 = 1 + (NumPy's products - torch.matmul's products) / (PyTorch's step)

the ratio of a minigen step whose norms, activations, copies, optimizer and Python took exactly
as long as PyTorch's fused kernels do.  It is an estimate: where PyTorch's step does not run
its products through the same matmul (oneDNN convolutions), its "everything else" is its step
less a stand-in.  For linear layers and attention (W1, W5), PyTorch calls the same MKL products.
The products recorded are those the
engine computes, with the convolutions in their im2col form:

    forward          (N OH OW, C kh kw) @ (C kh kw, F)
    input gradient   stride 1: (N H W, F kh kw) @ (F kh kw, C)     (the gather form)
                     stride > 1: (N OH OW, F) @ (F, C kh kw)       (then col2im)
    weight gradient  (F, N OH OW) @ (N OH OW, C kh kw)
    linear           (rows, in) @ (in, out); backward (rows, out) @ (out, in), (out, rows) @ (rows, in)
    attention, matmul    the batched products as called

This is a bound for this formulation, not for every algorithm: a convolution kernel that
never forms the im2col product (PyTorch's oneDNN kernels) is not bound by it.
"""
from __future__ import annotations

import collections
import contextlib
import sys
import time

import numpy as np

from .common import emit, measure, settings_for

Product = collections.namedtuple("Product", "batch m k n")


@contextlib.contextmanager
def recording():
    """Inside the block, every matrix product of minigen's linear, convolution, attention and
    matmul ops is counted into the yielded Counter (Product -> calls)."""
    from minigen.functional import attention, conv, linalg
    seen = collections.Counter()
    saved = []

    def wrap(owner, name, shapes):
        original = getattr(owner, name)

        def hooked(*args, **kwargs):
            for p in shapes(*args, **kwargs):
                seen[p] += 1
            return original(*args, **kwargs)
        saved.append((owner, name, original))
        setattr(owner, name, hooked)

    def conv_forward(x, w, b, geo, out_hw):
        N, C = x.shape[:2]
        F, _, kh, kw = w.shape
        return [Product(1, N * out_hw[0] * out_hw[1], C * kh * kw, F)]

    def conv_input_grad(gy, w, geo, x_shape, rows=None):
        N, F, OH, OW = gy.shape
        _, C, kh, kw = w.shape
        if tuple(geo.stride) == (1, 1):
            return [Product(1, N * x_shape[2] * x_shape[3], F * kh * kw, C)]
        return [Product(1, N * OH * OW, F, C * kh * kw)]

    def conv_weight_grad(x, gy, geo, w_shape, cols=None, rows=None):
        F, C, kh, kw = w_shape
        return [Product(1, F, gy.shape[0] * gy.shape[2] * gy.shape[3], C * kh * kw)]

    def linear_forward(self, x, W, b=None):
        return [Product(1, x.size // x.shape[-1], W.shape[1], W.shape[0])]

    def linear_backward(self, gy):
        x, W = self.inputs[0], self.inputs[1]
        rows, (out, inp) = gy.size // gy.shape[-1], W.shape
        return ([Product(1, rows, out, inp)] if x.requires_grad else []) + \
               ([Product(1, out, rows, inp)] if W.requires_grad else [])

    def batched(a_shape, b_shape):
        lead = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
        return Product(int(np.prod(lead)) if lead else 1, a_shape[-2], a_shape[-1], b_shape[-1])

    def attention_forward(self, q, k, v, bias=None):
        (L, E), (S, _), Ev = q.shape[-2:], k.shape[-2:], v.shape[-1]
        return [batched(q.shape, k.shape[:-2] + (E, S)),                  # Q K^T
                batched(q.shape[:-2] + (L, S), v.shape)]                  # P V

    def attention_backward(self, gy):
        q, k, v = (t.shape for t in self.inputs[:3])
        (L, E), (S, _), Ev, lead = q[-2:], k[-2:], v[-1], gy.shape[:-2]
        ps = [batched(lead + (S, L), gy.shape)]                           # dV = P^T dY
        if self.inputs[0].requires_grad or self.inputs[1].requires_grad:
            ps += [batched(gy.shape, v[:-2] + (Ev, S)),                   # dP = dY V^T
                   batched(lead + (L, S), k),                             # dQ = dS K
                   batched(lead + (S, L), q)]                             # dK = dS^T Q
        return ps

    def matmul_forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2:
            return []
        return [batched(a.shape, b.shape)]

    wrap(conv, "_forward", conv_forward)
    wrap(conv, "_input_grad", conv_input_grad)
    wrap(conv, "_weight_grad", conv_weight_grad)
    wrap(linalg.Linear, "forward", linear_forward)
    wrap(linalg.Linear, "_backward_arrays", linear_backward)
    wrap(attention.ScaledDotProductAttention, "forward", attention_forward)
    wrap(attention.ScaledDotProductAttention, "_backward_arrays", attention_backward)
    wrap(linalg.MatMul, "forward", matmul_forward)
    try:
        yield seen
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def _median_ms(fn, calls):
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _chunked_split(a, b, out, chunk_bytes=1 << 20):
    """a @ b the way minigen's convolution kernels run their products: the long dimension cut into
    one range per thread (``split_batch``, one-thread BLAS each), each range in chunks of about
    ``chunk_bytes`` of a; a long inner dimension (a weight gradient) is cut instead, and the
    ranges' partial products added."""
    from minigen.functional.parallel import split_batch, sum_parts
    (m, k), n = a.shape, b.shape[1]
    if m >= k:
        step = max(1, chunk_bytes // (k * a.itemsize))

        def rows(lo, hi):
            for r in range(lo, hi, step):
                np.matmul(a[r:min(r + step, hi)], b, out=out[r:min(r + step, hi)])
        split_batch(rows, m, a.size)
    else:
        step = max(1, chunk_bytes // (m * a.itemsize))

        def inner(lo, hi):
            part = np.zeros((m, n), dtype=out.dtype)
            for r in range(lo, hi, step):
                part += a[:, r:min(r + step, hi)] @ b[r:min(r + step, hi)]
            return part
        out[...] = sum_parts(split_batch(inner, k, a.size))


def time_products(products, torch=None, calls=5):
    """(NumPy ms, PyTorch ms or None) for one step's products: each distinct shape timed alone
    (median of ``calls``), times how often the step makes it, summed.  NumPy's time for a
    product is the faster of one ``matmul`` call (BLAS threads) and ``_chunked_split``."""
    rng = np.random.default_rng(0)
    total_np, total_torch = 0.0, 0.0
    for p, count in products.items():
        a = rng.standard_normal((p.batch, p.m, p.k), dtype=np.float32)
        b = rng.standard_normal((p.batch, p.k, p.n), dtype=np.float32)
        if p.batch == 1:
            a, b = a[0], b[0]
        out = np.empty(a.shape[:-1] + (p.n,), dtype=np.float32)
        best = _median_ms(lambda: np.matmul(a, b, out=out), calls)
        if p.batch == 1:
            best = min(best, _median_ms(lambda: _chunked_split(a, b, out), calls))
        total_np += count * best
        if torch is not None:
            ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            total_torch += count * _median_ms(lambda: torch.matmul(ta, tb, out=tout), calls)
    return total_np, (total_torch if torch is not None else None)


def run_floor(names, settings, twins, torch_device):
    """One JSON line per workload: its products' count, GFLOP and times, the twin's step, the ratio."""
    if settings.device != "cpu":
        print("--floor: it times NumPy's products on the CPU only; leave out --device gpu", file=sys.stderr)
        return 2
    from .run import workload_module                   # run.py imports this module when --floor is asked
    for name in names:
        if name == "W0":
            continue                                    # W0 is one product already
        mod = workload_module(name)
        case = mod.build(settings, twins, torch_device)
        done = {}                                       # minigen engine -> (products, times)
        for row in case.rows:
            if row.minigen not in done:
                step = case.engines[row.minigen]
                step()                                  # warm-up outside the recording
                with recording() as products:
                    step()
                done[row.minigen] = products, time_products(products, twins.torch if twins is not None else None)
            products, (numpy_ms, torch_ms) = done[row.minigen]
            flop = sum(2 * p.batch * p.m * p.k * p.n * c for p, c in products.items())
            rec = {"floor": name, "variant": row.variant, "products": sum(products.values()),
                   "shapes": len(products), "gflop": flop / 1e9, "numpy_products_ms": numpy_ms}
            if torch_ms is not None:
                rec["torch_products_ms"] = torch_ms
            if twins is not None and row.torch is not None:
                res = measure({row.torch: case.engines[row.torch]}, settings_for(case, settings))
                step_ms = res[row.torch]["ms"]
                rec["torch_step_ms"] = step_ms
                rec["floor_ratio"] = numpy_ms / step_ms
                if torch_ms is not None:
                    rec["parity_ratio"] = 1 + (numpy_ms - torch_ms) / step_ms
                if row.target is not None:
                    rec["target"] = row.target
                    rec["target_below_floor"] = row.target < rec["floor_ratio"]
                    if "parity_ratio" in rec:
                        rec["target_below_parity"] = row.target < rec["parity_ratio"]
            emit(rec)
    return 0

