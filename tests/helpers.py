"""Helpers shared by the test files: one way to make a test tensor, one oracle comparison.

    from helpers import tensor, compare

``tensor`` wraps test data (float64 unless asked otherwise, since gradient checks
need it).  ``compare`` is the oracle check of the ``test_oracle_*`` files: a
minigen function and its PyTorch counterpart run on the same arrays, and their
values and gradients must agree.  PyTorch is imported only when ``compare`` runs,
so the core suite imports this file without it.
"""
import numpy as np

import minigen as mg


def tensor(x, device="cpu", requires_grad=False, dtype=np.float64):
    """A minigen Tensor holding ``x`` (array, list or number) on ``device``, as ``dtype``.

    dtype=None keeps the dtype of ``x`` (float32 data, boolean masks).
    """
    array = np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)
    return mg.tensor(array, device=device, requires_grad=requires_grad)


def compare(mg_fn, torch_fn, arrays, grad_of=None, gy=None, rtol=1e-10, atol=1e-12, seed=0):
    """``mg_fn`` and ``torch_fn`` on the same arrays agree in their outputs and input gradients.

    arrays: NumPy arrays, handed to each function as leaf tensors of the arrays'
    own dtypes (so float32 is compared as float32).  grad_of: indices of the
    arrays to differentiate (default: every floating one; () for values only).
    The functions return one tensor or a tuple/list of them.  The gradients
    compared are those of  sum_i <gy_i, y_i>, with gy an array (one output), a
    list (one per output) or, when None, standard normal draws from
    ``default_rng(seed)``.  Returns the two lists of outputs.
    """
    import torch

    arrays = [np.asarray(a) for a in arrays]
    if grad_of is None:
        grad_of = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    ours = [mg.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    theirs = [torch.tensor(a, requires_grad=i in grad_of) for i, a in enumerate(arrays)]
    y, yt = mg_fn(*ours), torch_fn(*theirs)
    ys, yts = (list(y), list(yt)) if isinstance(y, (tuple, list)) else ([y], [yt])
    assert len(ys) == len(yts), f"{len(ys)} minigen outputs against {len(yts)} torch outputs"
    for i, (a, b) in enumerate(zip(ys, yts)):
        assert a.shape == tuple(b.shape), f"output {i}: shape {a.shape} against torch's {tuple(b.shape)}"
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"output {i}")
    if not grad_of:
        return ys, yts
    if gy is None:
        rng = np.random.default_rng(seed)
        gy = [rng.standard_normal(a.shape) for a in ys]
    elif not isinstance(gy, (list, tuple)):
        gy = [gy]
    gy = [np.asarray(g, dtype=a.dtype) for g, a in zip(gy, ys)]
    total = sum((a * mg.tensor(g)).sum() for a, g in zip(ys, gy))
    total_t = sum((b * torch.tensor(g)).sum() for b, g in zip(yts, gy))
    grads = mg.grad(total, [ours[i] for i in grad_of])
    grads_t = torch.autograd.grad(total_t, [theirs[i] for i in grad_of])
    for i, a, b in zip(grad_of, grads, grads_t):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
    return ys, yts
