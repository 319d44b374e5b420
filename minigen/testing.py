"""Gradient checking by central differences, for tests of ops and for extenders.

``gradcheck(fn, inputs)`` compares the engine's gradient of a scalar probe
``L(x) = sum(w * fn(x))`` (w a fixed random upstream gradient) with central
differences  (L(x + eps e) - L(x - eps e)) / (2 eps):

* element by element for small inputs (every entry of every input), and
* along a few random unit directions v for large ones, comparing the directional
  derivative with <grad, v> (Chainer's ``check_backward`` trick: one number per
  direction instead of one per element).

It runs in float64 (pass float64 arrays); tolerances are relative (1e-6 by
default).  Two guards keep it honest:
* the analytical gradient must not be negligibly small, or a backward that
  returns zeros would pass;
* a mismatch raises ``GradcheckError`` naming the input, the element and both
  values.

``gradgradcheck`` applies the same check to the gradient itself (the backward
run with ``create_graph=True``), which is what gradient penalties rely on.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import Tensor, enable_grad, grad, no_grad

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """The analytical and numerical gradients disagree (or the check is vacuous)."""


def _as_tensors(inputs, device):
    out = []
    for x in inputs:
        array = x.data if isinstance(x, Tensor) else x
        array = backend.to_device(np.asarray(backend.to_numpy(array)), device)
        out.append(Tensor(array.copy(), requires_grad=array.dtype.kind == "f"))
    return out


def _outputs(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def _rounding_error(lp, lm, eps):
    """Bound on the float64 rounding error of (lp - lm) / (2 eps).

    Each probe value carries a relative rounding error of a few machine epsilons
    (it is a sum of many products); the difference divides that by 2 eps.  With
    |L| ~ 10 and eps = 1e-6 this is ~1e-8, far below what a wrong backward
    changes, but above ``atol`` when the probe is large and the gradient small.
    """
    return 8 * np.finfo(np.float64).eps * max(abs(lp), abs(lm)) / (2 * eps)


def gradcheck(fn, inputs, *, eps=1e-6, rtol=1e-6, atol=1e-9, max_elementwise=64, n_directions=3,
              min_grad=1e-7, seed=0, device="cpu", upstream=None):
    """Check the gradients of ``fn(*inputs)`` against central differences.

    Parameters
    ----------
    fn : callable taking Tensors and returning a Tensor or a tuple of Tensors.
    inputs : arrays (float64 for a tight check) or Tensors; integer arrays are
        passed through without being checked (indices, labels).
    eps, rtol, atol : finite-difference step and tolerances;
        a gradient entry passes when |num - ana| <= atol + rtol * max(|num|, |ana|).
    max_elementwise : inputs with at most this many entries are checked entry by
        entry, larger ones along ``n_directions`` random directions.
    min_grad : the largest analytical gradient entry over all checked inputs must
        exceed this, else the check could not tell a wrong backward from a right one.
    upstream : optional list of upstream gradients (one per output), else random.
    Returns True, or raises GradcheckError.
    """
    rng = np.random.default_rng(seed)
    xs = _as_tensors(inputs, device)
    ys = _outputs(fn(*xs))
    if upstream is None:
        ws = [Tensor(backend.to_device(rng.standard_normal(y.shape).astype(y.dtype), device)) for y in ys]
    else:
        ws = [w if isinstance(w, Tensor) else Tensor(backend.to_device(np.asarray(w, dtype=y.dtype), device))
              for w, y in zip(upstream, ys)]

    def probe(arrays):
        """L(x) = sum_k <w_k, y_k(x)>, computed without a graph, as a float."""
        with no_grad():
            outs = _outputs(fn(*[Tensor(a) for a in arrays]))
            return float(sum(float((o.data * w.data).sum()) for o, w in zip(outs, ws)))

    checked = [i for i, x in enumerate(xs) if x.requires_grad]
    if not checked:
        raise GradcheckError("gradcheck: no floating input to check")
    ys_req = [y for y in ys if y.requires_grad]
    if not ys_req:
        raise GradcheckError("gradcheck: the output does not depend on any input through the graph")
    grads = grad([y for y in ys if y.requires_grad], [xs[i] for i in checked],
                 grad_outputs=[w for y, w in zip(ys, ws) if y.requires_grad], allow_unused=True)
    ana = {i: (np.zeros(xs[i].shape) if g is None else backend.to_numpy(g.data).astype(np.float64))
           for i, g in zip(checked, grads)}
    for i, g in zip(checked, grads):
        if g is not None and g.shape != xs[i].shape:
            raise GradcheckError(f"gradcheck: gradient of input {i} has shape {g.shape}, input has {xs[i].shape}")

    biggest = max(float(np.abs(a).max()) if a.size else 0.0 for a in ana.values())
    if biggest <= min_grad:
        raise GradcheckError(f"gradcheck: the analytical gradient is negligible (max |g| = {biggest:.3g}); "
                             "choose inputs where the function is not flat, or the check proves nothing")

    base = [x.data for x in xs]
    xp = backend.xp_of(base[0])
    for i in checked:
        x0 = base[i]
        if x0.size <= max_elementwise:
            flat_num = np.empty(x0.size)
            noise = np.empty(x0.size)
            for k in range(x0.size):
                plus, minus = x0.copy(), x0.copy()
                plus.reshape(-1)[k] += eps
                minus.reshape(-1)[k] -= eps
                args_p = base[:i] + [plus] + base[i + 1:]
                args_m = base[:i] + [minus] + base[i + 1:]
                lp, lm = probe(args_p), probe(args_m)
                flat_num[k] = (lp - lm) / (2 * eps)
                noise[k] = _rounding_error(lp, lm, eps)
            num = flat_num.reshape(x0.shape)
            bad = (np.abs(num - ana[i])
                   > atol + noise.reshape(x0.shape) + rtol * np.maximum(np.abs(num), np.abs(ana[i])))
            if bad.any():
                k = np.unravel_index(np.argmax(np.abs(num - ana[i]) * bad), x0.shape)
                raise GradcheckError(
                    f"gradcheck: input {i} (shape {x0.shape}) element {tuple(int(j) for j in k)}: "
                    f"numerical {num[k]:.10g} vs analytical {ana[i][k]:.10g} "
                    f"({int(bad.sum())} of {bad.size} entries off)")
        else:
            for _ in range(n_directions):
                v = rng.standard_normal(x0.shape)
                v /= np.linalg.norm(v)
                vd = xp.asarray(v, dtype=x0.dtype)
                args_p = base[:i] + [x0 + eps * vd] + base[i + 1:]
                args_m = base[:i] + [x0 - eps * vd] + base[i + 1:]
                lp, lm = probe(args_p), probe(args_m)
                num = (lp - lm) / (2 * eps)
                an = float((ana[i] * v).sum())
                scale = max(abs(num), abs(an), float(np.linalg.norm(ana[i])) * 1e-3)
                if abs(num - an) > atol + _rounding_error(lp, lm, eps) + rtol * scale:
                    raise GradcheckError(
                        f"gradcheck: input {i} (shape {x0.shape}) directional derivative: "
                        f"numerical {num:.10g} vs analytical {an:.10g}")
    return True


def gradgradcheck(fn, inputs, *, seed=1, **kwargs):
    """Check second derivatives: gradcheck of x -> <w, d<u, fn(x)>/dx> with create_graph=True."""
    rng = np.random.default_rng(seed)
    device = kwargs.get("device", "cpu")
    probe_xs = _as_tensors(inputs, device)
    ys = _outputs(fn(*probe_xs))
    us = [Tensor(backend.to_device(rng.standard_normal(y.shape).astype(y.dtype), device)) for y in ys]
    float_idx = [i for i, x in enumerate(probe_xs) if x.requires_grad]
    ws = [Tensor(backend.to_device(rng.standard_normal(probe_xs[i].shape).astype(probe_xs[i].dtype), device))
          for i in float_idx]

    def first_derivative(*xs):
        # The numerical probe calls this under no_grad with plain tensors; the
        # first derivative still needs its own graph, so switch it back on.
        xs = [x if x.requires_grad or x.dtype.kind != "f" else Tensor(x.data, requires_grad=True)
              for x in xs]
        with enable_grad():
            return _contract(xs)

    def _contract(xs):
        outs = _outputs(fn(*xs))
        gs = grad([o for o in outs if o.requires_grad], [xs[i] for i in float_idx],
                  grad_outputs=[u for o, u in zip(outs, us) if o.requires_grad],
                  create_graph=True, allow_unused=True)
        total = None
        for g, w in zip(gs, ws):
            if g is None:
                continue
            term = (g * w).sum()
            total = term if total is None else total + term
        if total is None:
            raise GradcheckError("gradgradcheck: no input has a gradient")
        return total

    return gradcheck(first_derivative, inputs, seed=seed + 1, **kwargs)
