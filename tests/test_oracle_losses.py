"""Oracle: minigen's losses and shape ops against PyTorch on identical inputs.

Forward values and gradients (every input PyTorch differentiates) for each loss
and each reduction; pad in every mode, embedding with repeated indices, concat,
split and getitem.  Skipped when torch is not installed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

import minigen.functional as F  # noqa: E402
from helpers import compare  # noqa: E402

pytestmark = pytest.mark.oracle

REDUCTIONS = ["mean", "sum", "none"]


R = np.random.default_rng(0)
X = R.standard_normal((4, 5)) * 3
Y01 = R.uniform(0, 1, (4, 5))
P = R.uniform(0.02, 0.98, (4, 5))
W = R.uniform(0.5, 2, (4, 5))
PW = R.uniform(0.5, 2, (5,))
CW = R.uniform(0.5, 2, (5,))
LABELS = R.integers(0, 5, (4,))
X4 = R.standard_normal((2, 5, 3, 2))
LABELS4 = R.integers(0, 5, (2, 3, 2))
Q = R.dirichlet(np.ones(5), 4)
VAR = R.uniform(0.1, 2, (4, 5))
VAR[0, 0] = 1e-9  # below eps: clamped in value, gradient passes through


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_regression_losses(reduction):
    compare(lambda a, b: F.mse_loss(a, b, reduction=reduction),
            lambda a, b: TF.mse_loss(a, b, reduction=reduction), [X, Y01], (0, 1))
    compare(lambda a, b: F.l1_loss(a, b, reduction=reduction),
            lambda a, b: TF.l1_loss(a, b, reduction=reduction), [X, Y01], (0, 1))
    for full in (False, True):
        for var in (VAR, VAR[:, 0], VAR[:, :1], VAR[:1]):
            compare(lambda a, b, v: F.gaussian_nll_loss(a, b, v, full=full, reduction=reduction),
                    lambda a, b, v: TF.gaussian_nll_loss(a, b, v, full=full, reduction=reduction),
                    [X, Y01, var], (0, 1, 2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_losses(reduction):
    compare(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
            lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction=reduction), [X, Y01], (0, 1))
    compare(lambda a, b, w, pw: F.binary_cross_entropy_with_logits(a, b, weight=w, pos_weight=pw,
                                                                   reduction=reduction),
            lambda a, b, w, pw: TF.binary_cross_entropy_with_logits(a, b, weight=w, pos_weight=pw,
                                                                    reduction=reduction),
            [X, Y01, W, PW], (0, 1))  # PyTorch gives weight and pos_weight no gradient
    compare(lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
            lambda a, b: TF.binary_cross_entropy(a, b, reduction=reduction), [P, Y01], (0, 1))
    compare(lambda a, b, w: F.binary_cross_entropy(a, b, weight=w, reduction=reduction),
            lambda a, b, w: TF.binary_cross_entropy(a, b, weight=w, reduction=reduction), [P, Y01, W], (0, 1))


def test_binary_cross_entropy_at_the_edges():
    x = np.array([1000.0, -1000.0, 1000.0, -1000.0, 30.0, -30.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.7])
    compare(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
            lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction="none"), [x, y], (0,))
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-15])
    compare(lambda a, b: F.binary_cross_entropy(a, b, reduction="none"),
            lambda a, b: TF.binary_cross_entropy(a, b, reduction="none"), [p, y], (0,), rtol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy(reduction, smoothing):
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    for x, y in [(X, LABELS), (X4, LABELS4), (X[0], np.array(LABELS[0]))]:
        compare(lambda a: F.cross_entropy(a, y, **kw), lambda a: TF.cross_entropy(a, torch.tensor(y), **kw),
                [x], (0,))
        compare(lambda a: F.cross_entropy(a, y, weight=CW, **kw),
                lambda a: TF.cross_entropy(a, torch.tensor(y), weight=torch.tensor(CW), **kw), [x], (0,))
    # class-probability targets: gradients to both logits and targets
    compare(lambda a, q: F.cross_entropy(a, q, **kw), lambda a, q: TF.cross_entropy(a, q, **kw), [X, Q], (0, 1))
    compare(lambda a, q: F.cross_entropy(a, q, weight=CW, **kw),
            lambda a, q: TF.cross_entropy(a, q, weight=torch.tensor(CW), **kw), [X, Q], (0, 1))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss(reduction):
    logp = np.log(np.random.default_rng(1).dirichlet(np.ones(5), 4))
    compare(lambda a: F.nll_loss(a, LABELS, reduction=reduction),
            lambda a: TF.nll_loss(a, torch.tensor(LABELS), reduction=reduction), [logp], (0,))
    compare(lambda a: F.nll_loss(a, LABELS4, weight=CW, reduction=reduction),
            lambda a: TF.nll_loss(a, torch.tensor(LABELS4), weight=torch.tensor(CW), reduction=reduction),
            [X4], (0,))


def test_float32_losses_match_torch_float32():
    x, y = X.astype(np.float32), Y01.astype(np.float32)
    compare(lambda a, b: F.binary_cross_entropy_with_logits(a, b),
            lambda a, b: TF.binary_cross_entropy_with_logits(a, b), [x, y], (0,), rtol=1e-5, atol=1e-6)
    compare(lambda a: F.cross_entropy(a, LABELS, label_smoothing=0.1),
            lambda a: TF.cross_entropy(a, torch.tensor(LABELS), label_smoothing=0.1), [x], (0,),
            rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# shape ops
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
@pytest.mark.parametrize("pad", [(1, 2), (2, 1, 0, 2), (1, 0, 2, 1, 1, 1)])
def test_pad(mode, pad):
    ndim = len(pad) // 2 + 2  # the (N, C, ...) layouts PyTorch accepts for every mode
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5, 3)[:ndim])
    value = {"value": 0.7} if mode == "constant" else {}
    compare(lambda a: F.pad(a, pad, mode=mode, **value), lambda a: TF.pad(a, pad, mode=mode, **value), [x], (0,))


def test_pad_constant_negative():
    x = np.random.default_rng(3).standard_normal((2, 3, 5))
    compare(lambda a: F.pad(a, (-1, 2, 1, -2)), lambda a: TF.pad(a, (-1, 2, 1, -2)), [x], (0,))


def test_embedding_grad_with_repeats():
    idx = np.array([[1, 4, 1, 1], [0, 4, 2, 1]])
    W = np.random.default_rng(4).standard_normal((6, 3))
    compare(lambda w: F.embedding(idx, w), lambda w: TF.embedding(torch.tensor(idx), w), [W], (0,))


def test_concat_stack_split_chunk_getitem():
    r = np.random.default_rng(5)
    a, b = r.standard_normal((2, 3, 4)), r.standard_normal((2, 1, 4))
    compare(lambda x, y: F.cat([x, y], 1), lambda x, y: torch.cat([x, y], 1), [a, b], (0, 1))
    compare(lambda x, y: F.stack([x, y], -1), lambda x, y: torch.stack([x, y], -1), [a, a * 2], (0, 1))
    compare(lambda x: F.split(x, [1, 3], -1), lambda x: torch.split(x, [1, 3], -1), [a], (0,))
    compare(lambda x: F.split(x, 2, 1)[1], lambda x: torch.split(x, 2, 1)[1], [a], (0,))
    compare(lambda x: F.chunk(x, 3, 2), lambda x: torch.chunk(x, 3, 2), [a], (0,))
    rows = np.array([1, 0, 1])
    mask = a[0, :, 0] > 0
    compare(lambda x: x[:, rows, ::2], lambda x: x[:, torch.tensor(rows), ::2], [a], (0,))
    compare(lambda x: x[..., None, 1], lambda x: x[..., None, 1], [a], (0,))
    compare(lambda x: x[1, mask], lambda x: x[1, torch.tensor(mask)], [a], (0,))
