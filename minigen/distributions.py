"""Probability distributions with differentiable parameters: Normal, Bernoulli, Categorical.

A VAE (notes §2) needs three things from a distribution: the log-density of a
value, a sample, and the KL divergence to another distribution.  Each class
here holds its parameters as minigen Tensors, so every quantity below is a
graph the engine can differentiate:

* ``log_prob(value)``: log p(value), elementwise over the batch shape (sum the
  entries yourself for a product of independent coordinates, as PyTorch does);
* ``sample(sample_shape, generator)``: a draw with no gradient;
* ``rsample(sample_shape, generator)``: a *reparameterized* draw, written as a
  differentiable function of the parameters and parameter-free noise, so
  gradients flow through the sample (Normal only; notes §2.3);
* ``entropy()``: H[p] = -E_p[log p];
* ``kl_divergence(p, q)``: KL(p || q) = E_p[log p - log q] (notes §2.2), in
  closed form where one is registered (Normal-Normal, Bernoulli-Bernoulli,
  Categorical-Categorical), else by Monte Carlo (``monte_carlo_kl``).

A sample of ``sample_shape`` S from a distribution of batch shape B has shape
S + B (Categorical: its last parameter axis holds the K classes and is not part
of B).  Randomness comes only from an explicit ``minigen.Generator``; when
none is passed the device's default generator is used (``mg.manual_seed``).

Parameterizations follow the notes and the VAE literature: the Normal is
diagonal and takes a mean and a *log-variance* ``logvar``, with
std = exp(0.5 * logvar); Bernoulli and Categorical take unnormalised logits.

References: Kingma & Welling 2014 (reparameterization); Bishop, PRML §1.6, §2.3.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from . import functional as F
from .autograd import Tensor, no_grad

__all__ = ["Distribution", "Normal", "Bernoulli", "Categorical", "kl_divergence", "monte_carlo_kl",
           "register_kl", "gaussian_kl"]

LOG_2PI = math.log(2.0 * math.pi)


def _as_param(value, name, cls, like=None):
    """A parameter as a Tensor (arrays and numbers are wrapped, in ``like``'s dtype/device if given)."""
    if isinstance(value, Tensor):
        if value.dtype.kind != "f":
            raise TypeError(f"{cls}: {name} must be a floating tensor, got dtype {value.dtype}")
        return value
    array = value if backend.is_array(value) else np.asarray(value)   # a CuPy array stays where it is
    if like is not None:
        xp = backend.xp_of(like.data)
        return Tensor(xp.asarray(backend.on_device(array, like.device), dtype=like.dtype))
    dtype = array.dtype if array.dtype.kind == "f" else backend.get_default_dtype()
    return Tensor(array.astype(dtype))


def _broadcast_shape(a, b, cls, what):
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise ValueError(f"{cls}: {what} of shapes {tuple(a)} and {tuple(b)} do not broadcast") from None


def _generator(generator, device):
    return generator if generator is not None else backend.default_generator(device)


def _draw(generator, kind, shape, like):
    """Standard normal or uniform noise of ``shape`` in ``like``'s dtype, on ``like``'s device."""
    gen = _generator(generator, like.device)
    array = gen.normal(shape, dtype=like.dtype) if kind == "normal" else gen.uniform(shape, dtype=like.dtype)
    return backend.to_device(array, like.device)


def _sample_shape(sample_shape):
    return (int(sample_shape),) if isinstance(sample_shape, (int, np.integer)) else tuple(sample_shape)


class Distribution:
    """Base class: batch shape, sampling and the methods every distribution answers."""

    has_rsample = False

    def __init__(self, batch_shape):
        self.batch_shape = tuple(batch_shape)

    @property
    def device(self):
        """The device of the parameters ("cpu" or "gpu")."""
        return self._param.device

    @property
    def dtype(self):
        """The floating dtype of the parameters."""
        return self._param.dtype

    def _check_value(self, value, event_shape=()):
        """``value`` as a Tensor whose shape broadcasts against batch_shape (+ event_shape)."""
        value = value if isinstance(value, Tensor) else _as_param(value, "value", type(self).__name__,
                                                                  like=self._param)
        full = self.batch_shape + tuple(event_shape)
        _broadcast_shape(value.shape, full, type(self).__name__, "log_prob: the value and the batch")
        return value

    def log_prob(self, value):
        """log p(value), elementwise over the batch; value broadcasts against batch_shape (+ event shape)."""
        raise NotImplementedError

    def sample(self, sample_shape=(), generator=None):
        """Draws of shape sample_shape + batch_shape from ``generator``, outside the graph."""
        raise NotImplementedError

    def rsample(self, sample_shape=(), generator=None):
        """Reparameterized draws of shape sample_shape + batch_shape, differentiable in the parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sampler (rsample); "
                                  "its samples are discrete")

    def entropy(self):
        """The entropy H = -E[log p], one value per batch element (shape batch_shape)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(batch_shape={self.batch_shape})"


class Normal(Distribution):
    """Diagonal Gaussian N(mean, diag(exp(logvar))), elementwise (notes §2.4).

    log p(x) = -1/2 [ log 2 pi + logvar + (x - mean)^2 exp(-logvar) ];
    std = exp(0.5 * logvar).  mean and logvar: Tensors (or arrays) that
    broadcast to the batch shape.
    """

    has_rsample = True

    def __init__(self, mean, logvar):
        self.mean = _as_param(mean, "mean", "Normal")
        self.logvar = _as_param(logvar, "logvar", "Normal", like=self.mean)
        if self.logvar.dtype != self.mean.dtype or self.logvar.device != self.mean.device:
            raise TypeError(f"Normal: mean ({self.mean.dtype}, {self.mean.device}) and logvar "
                            f"({self.logvar.dtype}, {self.logvar.device}) differ in dtype or device")
        super().__init__(_broadcast_shape(self.mean.shape, self.logvar.shape, "Normal", "mean and logvar"))
        self._param = self.mean

    @property
    def std(self):
        """std = exp(0.5 * logvar), shape batch_shape."""
        return F.exp(0.5 * self.logvar)

    @property
    def variance(self):
        """variance = exp(logvar), shape batch_shape."""
        return F.exp(self.logvar)

    def rsample(self, sample_shape=(), generator=None):
        """z = mean + std * eps,  eps ~ N(0, I): differentiable in mean and logvar.  -> S + B."""
        shape = _sample_shape(sample_shape) + self.batch_shape
        eps = Tensor(_draw(generator, "normal", shape, self.mean))
        return self.mean + self.std * eps

    def sample(self, sample_shape=(), generator=None):
        """``rsample`` without a graph: mean + std * eps, shape sample_shape + batch_shape."""
        with no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, value):
        """-1/2 [log 2 pi + logvar + ((x - mean) / std)^2] elementwise (notes §2.4); broadcast shape."""
        value = self._check_value(value)
        # ((x - mean) e^(-logvar/2))^2: standardise, then square.  Not / e^logvar (overflows for
        # large logvar), and not (x - mean)^2 e^(-logvar): for std < ~1e-19 in float32 e^(-logvar)
        # is inf and the log-density at the mean would read 0 * inf = nan.
        z = (value - self.mean) * F.exp(-0.5 * self.logvar)
        return -0.5 * (LOG_2PI + self.logvar + z * z)

    def entropy(self):
        """H = 1/2 (log 2 pi e + logvar), elementwise."""
        return F.broadcast_to(0.5 * (LOG_2PI + 1.0 + self.logvar), self.batch_shape)


class Bernoulli(Distribution):
    """Bernoulli(p) with p = sigmoid(logits), elementwise.

    log p(x) = x * logits - softplus(logits)  (= -BCE-with-logits), for x in {0, 1}
    (grey levels in [0, 1] give the usual cross-entropy, which is not a normalised density).
    """

    def __init__(self, logits):
        self.logits = _as_param(logits, "logits", "Bernoulli")
        super().__init__(self.logits.shape)
        self._param = self.logits

    @property
    def probs(self):
        """p = sigmoid(logits), shape batch_shape."""
        return F.sigmoid(self.logits)

    @property
    def mean(self):
        """E[x] = p, shape batch_shape."""
        return self.probs

    def sample(self, sample_shape=(), generator=None):
        """b = 1[u < p], u ~ U[0, 1).  -> S + B, no gradient."""
        shape = _sample_shape(sample_shape) + self.batch_shape
        u = _draw(generator, "uniform", shape, self.logits)
        with no_grad():
            p = self.probs.data
        return Tensor((u < p).astype(self.dtype))

    def log_prob(self, value):
        """x * logits - softplus(logits) elementwise (= -BCE with logits); broadcast shape."""
        value = self._check_value(value)
        # softplus(l) = log(1 + e^l) never overflows, unlike log(sigmoid(l)) for l << 0
        return value * self.logits - F.softplus(self.logits)

    def entropy(self):
        """H = softplus(l) - p l   (= -p log p - (1 - p) log(1 - p))."""
        return F.softplus(self.logits) - self.probs * self.logits


class Categorical(Distribution):
    """Categorical over K classes, p = softmax(logits) along the last axis.

    log p(k) = log_softmax(logits)[..., k].  logits (B..., K); values are integer
    class indices of shape B (or broadcasting against it).
    """

    def __init__(self, logits):
        self.logits = _as_param(logits, "logits", "Categorical")
        if self.logits.ndim < 1 or self.logits.shape[-1] < 1:
            raise ValueError(f"Categorical: logits need a last axis of classes, got shape {self.logits.shape}")
        super().__init__(self.logits.shape[:-1])
        self.num_classes = self.logits.shape[-1]
        self._param = self.logits

    @property
    def log_probs(self):
        """log p_k = log_softmax(logits) along the last axis, shape (B..., K)."""
        return F.log_softmax(self.logits, dim=-1)

    @property
    def probs(self):
        """p_k = softmax(logits) along the last axis, shape (B..., K)."""
        return F.softmax(self.logits, dim=-1)

    def log_prob(self, value):
        """log p(k) for integer classes ``value`` (broadcasting against the batch shape B...)."""
        v = value.data if isinstance(value, Tensor) else value
        v = backend.on_device(v if backend.is_array(v) else np.asarray(v), self.device)
        _broadcast_shape(v.shape, self.batch_shape, "Categorical", "log_prob: the value and the batch")
        rows = F.one_hot(v.reshape(-1), self.num_classes, self.dtype)         # (N, K), N = v.size
        return (rows.reshape(tuple(v.shape) + (self.num_classes,)) * self.log_probs).sum(dim=-1)

    def sample(self, sample_shape=(), generator=None):
        """Inverse-CDF sampling: k = #{j : cumsum(p)_j <= u}, u ~ U[0, 1).  -> S + B integers."""
        xp = backend.xp_of(self.logits.data)
        shape = _sample_shape(sample_shape) + self.batch_shape
        with no_grad():
            cdf = xp.cumsum(self.probs.data, axis=-1)
        u = _draw(generator, "uniform", shape, self.logits)
        k = (cdf <= u[..., None]).sum(axis=-1)
        return Tensor(xp.minimum(k, self.num_classes - 1).astype(np.int64))  # u beyond a rounded cdf[-1] < 1

    def entropy(self):
        """H = -sum_k p_k log p_k."""
        logp = self.log_probs
        return -(F.exp(logp) * logp).sum(dim=-1)


# ----------------------------------------------------------------------------
# KL divergence
# ----------------------------------------------------------------------------

_KL = {}


def register_kl(type_p, type_q):
    """Decorator: register a closed-form KL(p || q) for a pair of distribution classes."""
    def wrap(fn):
        _KL[(type_p, type_q)] = fn
        return fn
    return wrap


def gaussian_kl(mean1, logvar1, mean2, logvar2):
    """KL( N(mean1, e^logvar1) || N(mean2, e^logvar2) ), elementwise, in nats (notes §2.4).

        KL = 1/2 [ e^r - 1 - r  +  (mean1 - mean2)^2 e^(-logvar2) ],    r = logvar1 - logvar2

    The arguments broadcast.  With any Tensor among them the result is a Tensor,
    differentiable in every Tensor argument (arrays and numbers are constants in its
    dtype and device); with only arrays and numbers it is an array.  Both the VAE's
    KL to its prior (``kl_divergence(Normal, Normal)``) and the diffusion bound's
    per-step terms are this formula.
    """
    values = (mean1, logvar1, mean2, logvar2)
    if any(isinstance(v, Tensor) for v in values):
        m1, lv1, m2, lv2 = tensors_like(values, "gaussian_kl")
        expm1, exp = F.expm1, F.exp
    else:
        ref = next((v for v in values if backend.is_array(v)), np.asarray(0.0))
        xp = backend.xp_of(ref)
        dtype = ref.dtype if ref.dtype.kind == "f" else np.float64
        m1, lv1, m2, lv2 = (v if backend.is_array(v) else xp.asarray(v, dtype=dtype) for v in values)
        expm1, exp = xp.expm1, xp.exp
    r = lv1 - lv2
    d = m1 - m2
    # expm1(r) - r, not e^r - 1 - r: near p = q (r ~ 0) e^r rounds to 1 + r and loses the r^2/2 that is
    # the KL.  The variance ratio is e^r, one exp of a difference, never e^logvar1 / e^logvar2 (overflow).
    # The mean term is (d e^(-logvar2/2))^2, standardised before squaring: d^2 e^(-logvar2) would be
    # 0 * inf = nan for equal means once std2 < ~1e-19 in float32.
    z = d * exp(-0.5 * lv2)
    return 0.5 * ((expm1(r) - r) + z * z)


def tensors_like(values, op="tensors_like"):
    """Every value as a Tensor: arrays and numbers become constants in the dtype and on the device
    of the first Tensor among them (or, with no Tensor, of the first array).  ``op`` names the
    caller in the TypeError raised when there are only Python numbers."""
    ref = next((v for v in values if isinstance(v, Tensor)), None)
    if ref is None:
        ref = next((Tensor(v) for v in values if backend.is_array(v)), None)
        if ref is None:
            raise TypeError(f"{op}: expected Tensors or arrays, got only Python numbers")
    xp = backend.xp_of(ref.data)
    return [v if isinstance(v, Tensor) else
            Tensor(xp.asarray(backend.to_device(v if backend.is_array(v) else np.asarray(v), ref.device),
                              dtype=ref.dtype))
            for v in values]


@register_kl(Normal, Normal)
def _kl_normal_normal(p, q):
    """KL(p || q) of two diagonal Gaussians: ``gaussian_kl`` of their means and log-variances."""
    return gaussian_kl(p.mean, p.logvar, q.mean, q.logvar)


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p, q):
    """KL = p (l_p - l_q) + softplus(l_q) - softplus(l_p), with logits l and p = sigmoid(l_p)."""
    return p.probs * (p.logits - q.logits) + F.softplus(q.logits) - F.softplus(p.logits)


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p, q):
    """KL = sum_k p_k (log p_k - log q_k)."""
    if p.num_classes != q.num_classes:
        raise ValueError(f"kl_divergence: Categoricals over {p.num_classes} and {q.num_classes} classes")
    logp = p.log_probs
    return (F.exp(logp) * (logp - q.log_probs)).sum(dim=-1)


def monte_carlo_kl(p, q, n_samples=1, generator=None):
    """The n single-draw estimates  log p(z_i) - log q(z_i),  z_i ~ p   (notes §2.2).

    Returns a Tensor (n_samples, *batch); its mean over axis 0 is an unbiased
    estimate of KL(p || q), its standard deviation / sqrt(n) the standard error.
    Draws are reparameterized when p has ``rsample`` (gradients reach p's
    parameters through z), plain samples otherwise.
    """
    if int(n_samples) < 1:
        raise ValueError(f"monte_carlo_kl: n_samples must be >= 1, got {n_samples}")
    z = p.rsample((int(n_samples),), generator) if p.has_rsample else p.sample((int(n_samples),), generator)
    return p.log_prob(z) - q.log_prob(z)


def kl_divergence(p, q, n_samples=None, generator=None):
    """KL(p || q), elementwise over the batch shape.

    Closed form when one is registered for (type(p), type(q)) and ``n_samples``
    is None; otherwise the Monte-Carlo mean of ``n_samples`` draws (default 1),
    which is what the ELBO uses when no closed form exists (notes §2.6).
    """
    if not isinstance(p, Distribution) or not isinstance(q, Distribution):
        raise TypeError(f"kl_divergence: expected two distributions, got {type(p).__name__} "
                        f"and {type(q).__name__}")
    _broadcast_shape(p.batch_shape, q.batch_shape, "kl_divergence", "batch shapes")
    formula = _KL.get((type(p), type(q)))
    if n_samples is None and formula is not None:
        return formula(p, q)
    return monte_carlo_kl(p, q, 1 if n_samples is None else n_samples, generator).mean(dim=0)
