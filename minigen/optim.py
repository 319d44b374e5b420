"""Optimizers (SGD, Adam, AdamW), gradient clipping, learning-rate schedules, EMA of weights.

An optimizer holds ``param_groups`` (lists of parameters with their own
hyper-parameters: ``lr``, ``betas`` ...) and a per-parameter ``state`` (momentum
buffers, Adam's moments and step count).  ``step()`` reads each parameter's
``.grad`` and changes ``param.data`` in place; it is not recorded in the
autodiff graph.  ``state_dict()`` / ``load_state_dict()`` save and restore all of
it, so a resumed run continues with exactly the same numbers.

Updates work on raw arrays with in-place ufuncs (``out=``, ``*=``): the moments
stay in the parameter's dtype and the only temporaries are two scratch buffers
per optimizer, reused for every parameter.  Adam's update is also written out as
the paper writes it (``adam_reference_step``, three lines); a test holds the
in-place version to it.  Gradients are treated as read-only: the engine may hand
the same gradient array to two parameters, so writing into one would silently
change the other.

Names, arguments and defaults follow ``torch.optim``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import numpy as np

from . import backend
from .autograd import Tensor, enable_grad
from .functional.math import split_elementwise

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "adam_reference_step", "clip_grad_norm_", "LambdaLR",
           "LinearWarmupLR", "CosineWarmupLR", "ExponentialMovingAverage"]


def _check_state(owner, state, keys):
    """Refuse a state that is not a dict or lacks one of ``keys``, in one line naming them all."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{owner}.load_state_dict: expected a dict (from state_dict()), got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner}.load_state_dict: the state lacks {', '.join(repr(k) for k in missing)} "
                         f"(it has {sorted(map(str, state)) or 'no keys'}); pass what state_dict() returned")


def _follow(arrays: dict, like) -> None:
    """Move the arrays among ``arrays``' values to ``like``'s device and dtype, in place, if they differ.

    An optimizer or EMA built before ``model.to("gpu")`` (or ``.to(np.float64)``)
    holds host float32 moments; the parameters moved in place, so the state follows
    them on the next step.  Checking costs a type and dtype comparison per array.
    """
    for key, value in arrays.items():
        if backend.is_array(value) and (type(value) is not type(like) or value.dtype != like.dtype):
            arrays[key] = backend.xp_of(like).asarray(backend.to_device(value, backend.device_of(like)),
                                                      dtype=like.dtype)


class _Scratch:
    """Reusable temporary arrays: ``get(like, slot)`` is an uninitialised array shaped like ``like``.

    One flat array per (device, dtype, slot) grows to the largest parameter seen
    and is handed out as views, so a step allocates nothing after the first.
    """

    def __init__(self):
        self._flat = {}

    def get(self, like, slot=0):
        key = (backend.device_of(like), like.dtype, slot)
        flat = self._flat.get(key)
        if flat is None or flat.size < like.size:
            flat = self._flat[key] = backend.xp_of(like).empty(like.size, dtype=like.dtype)
        return flat[:like.size].reshape(like.shape)


# ----------------------------------------------------------------------------
# the base class
# ----------------------------------------------------------------------------

class Optimizer:
    """Base class: param_groups, per-parameter state, ``step``, ``zero_grad``, state_dict.

    ``params`` is an iterable of parameters, or of dicts ``{"params": [...], "lr": ...}``
    (one per group; keys left out take the optimizer's defaults).  Subclasses
    implement ``_update(param, grad, state, group)`` on arrays.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}  # Parameter -> dict of arrays and counters (Tensors hash by identity)
        self._scratch = _Scratch()
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors "
                            "(e.g. model.parameters()), got a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters with its own hyper-parameters (e.g. a layer with a smaller lr)."""
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimize Tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: can only optimize leaf tensors (parameters), "
                                 f"got one computed by {type(p.creator).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"{type(self).__name__}: parameters must be floating, got dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError(f"{type(self).__name__}: a parameter appears twice in the parameter groups")
            seen.add(id(p))
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        if not group["lr"] >= 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {group['lr']}")
        if not group.get("weight_decay", 0.0) >= 0:
            raise ValueError(f"{type(self).__name__}: invalid weight_decay {group['weight_decay']}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget every parameter's gradient: None (default), or fresh zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad = None if set_to_none else Tensor(backend.xp_of(p.data).zeros_like(p.data))

    def step(self, closure=None):
        """Update every parameter that has a ``.grad``.  ``closure()`` (optional) recomputes the loss."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.data
                if g.shape != p.shape or type(g) is not type(p.data):
                    raise RuntimeError(f"{type(self).__name__}: gradient of shape {g.shape} on "
                                       f"{backend.device_of(g)} for a parameter of shape {p.shape} on {p.device}")
                state = self.state.setdefault(p, {})
                if state:
                    _follow(state, p.data)
                self._update(p.data, g, state, group)
        return loss

    def _update(self, w, g, state, group):  # pragma: no cover - always overridden
        raise NotImplementedError

    # --- saving and restoring ----------------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {"0": {...}, ...}, "param_groups": [{..., "params": [0, 1, ...]}]}.

        Parameters are numbered in group order (string keys, so the dict can go
        into a JSON/.npz checkpoint); arrays are copies.
        """
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[str(index[id(p)])] = {
                        k: (backend.xp_of(v).array(v, copy=True) if backend.is_array(v) else v)
                        for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters, moments and step counts saved by ``state_dict``.

        The optimizer must have been built over parameters of the same shapes in
        the same order.  Arrays may be NumPy arrays (as read from a checkpoint);
        they are copied to each parameter's device and dtype.
        """
        name = type(self).__name__
        _check_state(name, state_dict, ("state", "param_groups"))
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        params = {}
        for i, (mine, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has {len(saved['params'])} parameters "
                                 f"in the state and {len(mine['params'])} here")
            params.update(zip(saved["params"], mine["params"]))
        new_state = {}
        for key, entries in state_dict["state"].items():
            p = params.get(int(key))
            if p is None:
                raise ValueError(f"{name}.load_state_dict: state for unknown parameter index {key}")
            entry = {}
            for k, v in entries.items():
                v = v.data if isinstance(v, Tensor) else v
                if backend.is_array(v) and v.ndim == 0 and v.dtype.kind in "iu":
                    v = int(v)  # a step counter that went through a file
                if backend.is_array(v):
                    if v.shape != p.shape:
                        raise ValueError(f"{name}.load_state_dict: '{k}' of parameter {key} has shape "
                                         f"{v.shape}, the parameter has {p.shape}")
                    v = backend.xp_of(p.data).array(backend.to_device(v, p.device), dtype=p.dtype, copy=True)
                entry[k] = v
            new_state[p] = entry
        for mine, saved in zip(self.param_groups, saved_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = tuple(v) if isinstance(mine.get(k), tuple) else v  # a file turns tuples into lists
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])


# ----------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum and L2 weight decay.

        g <- g + weight_decay * w
        b <- g (first step),  then  b <- momentum * b + (1 - dampening) * g
        d <- g + momentum * b  (nesterov)  or  b   (else)
        w <- w - lr * d

    Where a gradient stays 0, b shrinks by ``momentum`` every step, as Adam's moments do; it is
    flushed the same way (``_flush_subnormal`` every ``FLUSH_EVERY`` steps, see ``Adam``), on a step
    count kept beside it.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if momentum < 0:
            raise ValueError(f"SGD: invalid momentum {momentum}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _update(self, w, g, state, group):
        xp = backend.xp_of(w)
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        tmp = self._scratch.get(w, 0)
        d = g
        if wd != 0:
            d = xp.multiply(w, wd, out=self._scratch.get(w, 1))
            d += g
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.array(d, copy=True)
            else:
                buf *= momentum
                if group["dampening"] == 0:
                    buf += d
                else:
                    buf += xp.multiply(d, 1 - group["dampening"], out=tmp)
            # the count starts with the buffer (a state saved before it existed counts from its load)
            state["step"] = state.get("step", 0) + 1
            _flush_when_due(state["step"], (buf, momentum))
            if group["nesterov"]:
                d = xp.multiply(buf, momentum, out=tmp)
                d += g if wd == 0 else self._scratch.get(w, 1)
            else:
                d = buf
        w -= xp.multiply(d, lr, out=tmp)


# ----------------------------------------------------------------------------
# Adam and AdamW
# ----------------------------------------------------------------------------

def adam_reference_step(w, g, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """One Adam step as Kingma & Ba (2015, Algorithm 1) write it; returns the new (w, m, v).

    w, g, m, v: arrays of one shape (weights, gradient, first and second moments);
    t: the step number, starting at 1.  Plain expressions, new arrays: this is the
    definition that ``Adam`` computes in place.
    """
    beta1, beta2 = betas
    m = beta1 * m + (1 - beta1) * g                                                # mean of g
    v = beta2 * v + (1 - beta2) * g * g                                            # uncentred variance of g
    w = w - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)) ** 0.5 + eps)   # bias-corrected step
    return w, m, v


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): per-coordinate steps scaled by running gradient moments.

        m <- beta1 m + (1 - beta1) g                 (first moment, the mean)
        v <- beta2 v + (1 - beta2) g^2               (second moment, uncentred)
        w <- w - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    m and v start at zero, so after t steps they are too small by the factors
    (1 - beta^t); dividing by them is the bias correction.  ``weight_decay`` adds
    weight_decay * w to the gradient (L2, coupled); AdamW decouples it.

    ``_update`` is ``adam_reference_step`` done in place (``_adam_inplace``): the
    moments are updated in their own arrays and the step is built in a reused
    scratch buffer, so a step allocates no new arrays (the reference allocates about
    six per parameter).  Large NumPy parameters are updated on two threads, half each
    (``F.math.split_elementwise``, where ``F.math.elementwise_threads()`` is 2), with the
    same numbers bit for bit.

    Where a coordinate's gradient stays 0 (a dead ReLU unit), m shrinks by beta1 every step
    and passes through the subnormal floats on its way to 0; on x86 CPUs arithmetic on those
    takes microcode assists, tens of times slower.  Every ``FLUSH_EVERY`` steps the moments'
    entries that would turn subnormal before the next flush are set to 0
    (``_flush_subnormal``): below 2e-31 in float32, they change no weight by more than
    lr * 2e-31 / eps.
    """

    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        betas = tuple(betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"{type(self).__name__}: invalid eps {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, w, g, state, group):
        xp = backend.xp_of(w)
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(w)
            state["exp_avg_sq"] = xp.zeros_like(w)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        coefs = (lr, beta1, beta2, eps, wd, self.decoupled_weight_decay, lr / bias_correction1,
                 1 / math.sqrt(bias_correction2))
        g_decayed = self._scratch.get(w, 1) if wd != 0 and not self.decoupled_weight_decay else None
        # buys: on request, large weights on two threads (measured slower by default: benchmarks/README.md)
        split_elementwise(lambda *arrays: _adam_inplace(*arrays, coefs), w, g, m, v, self._scratch.get(w, 0),
                          g_decayed)
        _flush_when_due(t, (m, beta1), (v, beta2))


FLUSH_EVERY = 16   # steps between two flushes of Adam's moments and SGD's momentum buffer


def _flush_when_due(step, *moments):
    """``_flush_subnormal(a, decay)`` for each (a, decay) of ``moments`` on every FLUSH_EVERY-th step.
    ``step`` is the count saved in the optimizer's state, so a resumed run flushes at the same steps."""
    if step % FLUSH_EVERY == 0:
        for a, decay in moments:
            _flush_subnormal(a, decay)


def _flush_subnormal(a, decay):
    """Set to 0, in place, the entries of ``a`` (state that shrinks by the factor ``decay`` per step
    where its gradient is 0) that could become subnormal within FLUSH_EVERY steps:
    |a| < tiny / decay^FLUSH_EVERY, tiny the smallest normal number, the bound capped at
    tiny * 2^24 (for decay below ~0.35).  NumPy arrays only: the slowdown measured is the CPU's.
    """
    # buys: W1's step stays at 11 ms instead of doubling to 20.7 ms once, after ~800 steps, 1.05 M
    # of its 1.38 M first moments had become subnormal (benchmarks/README.md)
    if type(a) is not np.ndarray or a.dtype.kind != "f" or not 0.0 < decay < 1.0:
        return
    tiny = float(np.finfo(a.dtype).tiny)
    bound = a.dtype.type(min(tiny / decay ** FLUSH_EVERY, tiny * 2.0 ** 24))
    a[np.abs(a) < bound] = 0


def _adam_inplace(w, g, m, v, tmp, g_decayed, coefs):
    """``adam_reference_step`` in place on w, m, v, with ``tmp`` (and ``g_decayed`` for coupled weight
    decay) as scratch: no new arrays.  Elementwise, so it may run on any slices of the arrays."""
    lr, beta1, beta2, eps, wd, decoupled, step_size, inv_sqrt_bc2 = coefs
    xp = backend.xp_of(w)
    if wd != 0 and decoupled:
        w *= 1 - lr * wd                              # AdamW: shrink the weights directly
    elif wd != 0:                                      # Adam: g <- g + weight_decay * w
        xp.multiply(w, wd, out=g_decayed)
        g_decayed += g
        g = g_decayed
    m *= beta1                                         # m <- beta1 m + (1 - beta1) g
    m += xp.multiply(g, 1 - beta1, out=tmp)
    v *= beta2                                         # v <- beta2 v + (1 - beta2) g^2
    xp.multiply(g, g, out=tmp)
    tmp *= 1 - beta2
    v += tmp
    # step_size * m / (sqrt(v) / sqrt(bc2) + eps) = (step_size sqrt(bc2)) * m / (sqrt(v) + eps sqrt(bc2)):
    # the same step with the bias correction moved into two scalars, one full pass fewer
    denom = xp.sqrt(v, out=tmp)
    denom += eps / inv_sqrt_bc2                        # eps keeps the step finite where v = 0
    update = xp.divide(m, denom, out=tmp)
    update *= step_size / inv_sqrt_bc2
    w -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

        w <- w - lr * weight_decay * w,   then the Adam step on the plain gradient.

    Unlike L2 decay added to the gradient, the shrinkage is not divided by
    sqrt(v), so every weight decays at the same rate.  Default weight_decay 0.01.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ----------------------------------------------------------------------------
# gradient clipping
# ----------------------------------------------------------------------------

def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

        total = (sum_p ||g_p||^q)^(1/q)   (q = norm_type; max |g| for q = inf)
        g_p <- g_p * min(1, max_norm / (total + 1e-6))

    Returns the total norm before clipping (a 0-d Tensor on the gradients' device).
    Parameters without a gradient are ignored.  The total is one reduction on the
    device and the scale is applied there too, so nothing is read to the host
    (``error_if_nonfinite=True`` reads the total once, to raise).  A non-finite
    total leaves the gradients unchanged.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return Tensor(np.zeros((), dtype=backend.get_default_dtype()))
    norm_type = float(norm_type)
    arrays = [g.data for g in grads]
    xp = backend.xp_of(arrays[0])
    # one (len(grads),) array of per-gradient reductions, summed in float64 on the device: no host
    # round trip per parameter (a UNet has ~90 of them)
    if norm_type == math.inf:
        maxima = [xp.abs(a).max() if a.size else xp.zeros((), a.dtype) for a in arrays]
        total = xp.stack(maxima).astype(np.float64).max()
    elif norm_type == 2.0:
        total = xp.sqrt(xp.stack([xp.vdot(a.ravel(), a.ravel()) for a in arrays]).astype(np.float64).sum())
    else:
        total = xp.stack([(xp.abs(a) ** norm_type).sum() for a in arrays]).astype(np.float64).sum() ** (1.0 / norm_type)
    if error_if_nonfinite:
        value = backend.read_scalars([total])[0]          # the one read, only when asked to raise
        if not math.isfinite(value):
            raise RuntimeError(f"clip_grad_norm_: the total norm of the gradients is {value}; "
                               "pass error_if_nonfinite=False to carry on")
    # coef = min(1, max_norm / (total + eps)) on the device, 1 (no change) for a non-finite total;
    # multiplying by exactly 1 leaves a gradient bit for bit as it was
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    coef = xp.where(xp.isfinite(total), coef, 1.0)
    for p in params:
        if p.grad is not None:
            # out of place: a gradient array may be shared by two parameters
            p.grad = Tensor(p.grad.data * coef.astype(p.grad.dtype))
    return Tensor(total.astype(arrays[0].dtype))


# ----------------------------------------------------------------------------
# learning-rate schedules
# ----------------------------------------------------------------------------

class LambdaLR:
    """lr of group i = base_lr_i * lr_lambda(t), t = number of ``step()`` calls so far.

    Call ``scheduler.step()`` once after each ``optimizer.step()``.  Building the
    scheduler already sets lr = base_lr * lr_lambda(0).  ``lr_lambda`` may be one
    function or a list (one per group).  ``state_dict`` saves t and the base lrs
    (not the functions).
    """

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(groups):
                raise ValueError(f"{type(self).__name__}: {len(lr_lambda)} lr_lambdas for {len(groups)} groups")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(groups)
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in groups]
        self.last_epoch = last_epoch
        self.step()

    def get_lr(self):
        """The rates for the current step t: base_lr_i * lr_lambda_i(t), one per parameter group."""
        return [base * f(self.last_epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)]

    def step(self):
        """Advance t by one and write the new rates into the optimizer's groups."""
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr

    def get_last_lr(self):
        """The rates the optimizer's groups hold now, one per group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """The step count t and the base rates (the lambdas themselves are not saved)."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore t and the base rates from ``state_dict`` and reapply the rates."""
        _check_state(type(self).__name__, state, ("last_epoch", "base_lrs"))
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr


class LinearWarmupLR(LambdaLR):
    """lr = base_lr * min(1, (t + 1) / warmup_steps): a linear ramp, then constant.

    The first step already uses base_lr / warmup_steps (no wasted step at lr 0);
    step warmup_steps - 1 is the first at the full rate.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1):
        if warmup_steps < 1:
            raise ValueError(f"LinearWarmupLR: warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, t):
        """The multiplier at step t: min(1, (t + 1) / warmup_steps)."""
        return min(1.0, (t + 1) / self.warmup_steps)


class CosineWarmupLR(LambdaLR):
    """Linear warmup, then a half cosine from base_lr down to min_lr_ratio * base_lr.

        t < warmup:  (t + 1) / warmup
        else:        r + (1 - r) * (1 + cos(pi * s)) / 2,   s = min(1, (t - warmup) / (total - warmup))

    with r = min_lr_ratio (Loshchilov & Hutter 2017, without restarts).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"CosineWarmupLR: need 0 <= warmup_steps < total_steps, got {warmup_steps} "
                             f"and {total_steps}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = int(warmup_steps), int(total_steps), min_lr_ratio
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, t):
        """The multiplier at step t: linear warmup, then the half cosine down to min_lr_ratio."""
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        s = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * s))


# ----------------------------------------------------------------------------
# exponential moving average of the weights
# ----------------------------------------------------------------------------

class ExponentialMovingAverage:
    """A running average of a model's parameters, for sampling with smoother weights.

        shadow <- decay * shadow + (1 - decay) * param          after each optimizer step

    With ``warmup=True`` the decay used at the n-th update (n = 0, 1, ...) is
    min(decay, (1 + n) / (10 + n)), so early averages forget the random init
    quickly.  Diffusion models sample from the EMA weights (notes §5; Ho et al.
    2020 use decay 0.9999).  Only parameters are averaged; buffers (BatchNorm
    statistics) are the model's own.  The shadow copies live on the model's
    device and dtype; when the model moves (``model.to("gpu")`` after the EMA was
    built) they follow it on the next ``update``.

        ema = ExponentialMovingAverage(model, decay=0.999)
        ...; opt.step(); ema.update()
        with ema.average_parameters():      # the model holds the averages inside
            samples = sample(model)
    """

    def __init__(self, model, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ExponentialMovingAverage: decay must be in [0, 1], got {decay}")
        self.model, self.decay, self.warmup = model, float(decay), bool(warmup)
        self.num_updates = 0
        self.shadow = {name: backend.xp_of(p.data).array(p.data, copy=True) for name, p in model.named_parameters()}
        self._scratch = _Scratch()

    def _shadow_like(self, name, like):
        """The shadow of ``name``, first moved to ``like``'s device and dtype if the model moved since."""
        one = {name: self.shadow[name]}
        _follow(one, like)
        self.shadow[name] = one[name]
        return one[name]

    def current_decay(self) -> float:
        """The decay the next ``update()`` will use."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    def update(self) -> None:
        """Move every shadow weight a step 1 - decay towards the model's current weight."""
        rate = 1.0 - self.current_decay()
        for name, p in self.model.named_parameters():
            s = self._shadow_like(name, p.data)
            diff = backend.xp_of(s).subtract(s, p.data, out=self._scratch.get(s))
            diff *= rate
            s -= diff                    # s <- s - (1 - decay)(s - p) = decay s + (1 - decay) p
        self.num_updates += 1

    def copy_to(self, model=None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked model)."""
        params = dict((model or self.model).named_parameters())
        if params.keys() != self.shadow.keys():
            raise ValueError("ExponentialMovingAverage.copy_to: the model's parameter names differ from the "
                             f"averaged ones ({sorted(params.keys() ^ self.shadow.keys())})")
        for name, p in params.items():
            p.data[...] = self._shadow_like(name, p.data)

    @contextlib.contextmanager
    def average_parameters(self, model=None):
        """Inside the block the model holds the averaged weights; its own come back afterwards."""
        model = model or self.model
        backup = {name: backend.xp_of(p.data).array(p.data, copy=True) for name, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            for name, p in model.named_parameters():
                p.data[...] = backup[name]

    def state_dict(self) -> dict:
        """Copies of the shadow weights plus decay, warmup and the update count."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {name: backend.xp_of(s).array(s, copy=True) for name, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``; refuses one whose parameter names differ."""
        _check_state("ExponentialMovingAverage", state, ("shadow", "decay", "warmup", "num_updates"))
        shadow = state["shadow"]
        missing, unexpected = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
        if missing or unexpected:
            raise ValueError("ExponentialMovingAverage.load_state_dict: parameter names differ; "
                             f"missing {missing}, unexpected {unexpected}")
        for name, s in self.shadow.items():
            value = shadow[name].data if isinstance(shadow[name], Tensor) else shadow[name]
            if tuple(value.shape) != s.shape:
                raise ValueError(f"ExponentialMovingAverage.load_state_dict: '{name}' has shape {value.shape}, "
                                 f"expected {s.shape}")
        for name, s in self.shadow.items():
            value = shadow[name].data if isinstance(shadow[name], Tensor) else shadow[name]
            s[...] = backend.to_device(value, backend.device_of(s)).astype(s.dtype, copy=False)
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
