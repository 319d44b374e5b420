"""Shape ops: reshape family, getitem, concat / stack / split / chunk, pad, embedding, one_hot.

Each op is checked three ways: its values against the NumPy expression it stands
for, its gradient by central differences (float64), and its second derivative
(gradgradcheck; every shape op is linear, so its backward is another shape op
that must itself be differentiable).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigen as mg
import minigen.functional as F
from minigen import backend
from minigen.testing import gradcheck, gradgradcheck

from strategies import arrays, shapes
from helpers import tensor


def square(f):
    """fn -> fn(...)**2: keeps a linear op's second derivative non-zero for gradgradcheck."""
    return lambda *xs: f(*xs) ** 2


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------
# reshape / transpose / permute / broadcasting
# ----------------------------------------------------------------------------

@settings(max_examples=10)
@given(arrays(shapes(min_dims=1, max_dims=4)))
def test_reshape_transpose_permute_grads(x):
    nd = x.ndim
    perm = tuple(reversed(range(nd)))
    ops = [  # (minigen op, the NumPy expression it stands for)
        (lambda a: F.reshape(a, (-1,)), lambda a: a.reshape(-1)),
        (lambda a: F.flatten(F.unsqueeze(a, 0), 1), lambda a: a.reshape(1, -1)),
        (lambda a: F.permute(a, perm), lambda a: a.transpose(perm)),
        (lambda a: F.transpose(a, 0, nd - 1), lambda a: a.swapaxes(0, nd - 1)),
        (lambda a: F.squeeze(F.unsqueeze(a, -1), -1), lambda a: a),
    ]
    for op, ref in ops:
        np.testing.assert_array_equal(op(tensor(x)).numpy(), ref(x))
        gradcheck(op, [x])
    gradgradcheck(square(ops[2][0]), [x])
    gradgradcheck(square(ops[0][0]), [x])


def test_reshape_family_values(device):
    x = rand(2, 3, 4)
    a = tensor(x, device)
    np.testing.assert_array_equal(F.permute(a, (2, 0, 1)).numpy(), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(F.transpose(a, 0, 2).numpy(), x.swapaxes(0, 2))
    np.testing.assert_array_equal(F.flatten(a, 1).numpy(), x.reshape(2, 12))
    assert F.unsqueeze(a, 1).shape == (2, 1, 3, 4) and F.squeeze(F.unsqueeze(a, 1)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"reshape: cannot view .*\(2, 3, 4\).*\(5, 5\)"):
        F.reshape(a, (5, 5))


def test_broadcast_to_and_sum_to_are_adjoint(device):
    x, g = rand(3, 1), rand(2, 3, 4, seed=1)
    gradcheck(lambda a: F.broadcast_to(a, (2, 3, 4)), [x], device=device)
    gradcheck(lambda a: F.sum_to(a, (3, 1)), [g], device=device)
    gradgradcheck(square(lambda a: F.broadcast_to(a, (2, 3, 4))), [x], device=device)
    # <broadcast(x), g> == <x, sum_to(g)>
    lhs = float((F.broadcast_to(tensor(x), (2, 3, 4)).numpy() * g).sum())
    rhs = float((x * F.sum_to(tensor(g), (3, 1)).numpy()).sum())
    assert abs(lhs - rhs) < 1e-12


# ----------------------------------------------------------------------------
# getitem
# ----------------------------------------------------------------------------

INDICES = [
    (slice(1, None), slice(None, None, 2)),            # plain slices
    (slice(None, None, -1), slice(3, 0, -2)),          # negative steps
    (Ellipsis, None, 1),                               # Ellipsis, new axis, int
    (None, slice(None), -1),                           # negative int
    np.array([2, 0, 2, 2]),                            # repeated rows
    (np.array([0, 1, 1]), np.array([3, 3, 0])),        # repeated pairs
    (slice(None), [1, 1, 0]),                          # list index in a tuple
    np.array([True, False, True]),                     # row mask
    (slice(1, 3), np.array([1, 0, 1, 1], dtype=bool)),  # slice with a column mask
]


@pytest.mark.parametrize("index", INDICES, ids=range(len(INDICES)))
def test_getitem_values_and_grads(index, device):
    x = rand(3, 4)
    np.testing.assert_array_equal(F.getitem(tensor(x, device), index).numpy(), x[index])
    gradcheck(lambda a: a[index], [x], device=device)
    gradgradcheck(square(lambda a: a[index]), [x], device=device)


def test_getitem_full_boolean_mask_and_tensor_index(device):
    x = rand(3, 4)
    mask = x > 0
    np.testing.assert_array_equal(tensor(x, device)[mg.tensor(mask, device=device)].numpy(), x[mask])
    idx = mg.tensor(np.array([1, 1, 2]), device=device)
    a = tensor(x, device, requires_grad=True)
    a[idx].sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.array([0, 2, 1])[:, None] * np.ones((3, 4)))
    gradcheck(lambda a: a[mask], [x], device=device)


def test_getitem_repeated_indices_accumulate(device):
    # x[[0, 0, 0, 2]]: row 0 is used three times, so its gradient is 3 (not 1).
    a = tensor(rand(3, 2), device, requires_grad=True)
    a[np.array([0, 0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [[3, 3], [0, 0], [1, 1]])


def test_getitem_errors_name_the_op():
    a = tensor(rand(3, 4))
    with pytest.raises(IndexError, match=r"getitem:.*\(3, 4\)"):
        a[5]
    with pytest.raises(IndexError, match="getitem"):
        a[np.array([True, False])]


# ----------------------------------------------------------------------------
# concat / stack / split / chunk
# ----------------------------------------------------------------------------

@st.composite
def concat_case(draw):
    base = list(draw(shapes(min_dims=1, max_dims=3, max_side=3)))
    dim = draw(st.integers(-len(base), len(base) - 1))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    xs = []
    for n in sizes:
        shape = list(base)
        shape[dim] = n
        xs.append(draw(arrays(tuple(shape))))
    return xs, dim


@settings(max_examples=15)
@given(concat_case())
def test_concat_values_and_grads(case):
    xs, dim = case
    y = F.concat([tensor(x) for x in xs], dim)
    np.testing.assert_array_equal(y.numpy(), np.concatenate(xs, axis=dim))
    gradcheck(lambda *a: F.concat(a, dim), xs)
    gradgradcheck(square(lambda *a: F.cat(a, dim)), xs)


def test_concat_grad_reaches_each_input(device):
    a, b = tensor(rand(2, 1), device, True), tensor(rand(2, 3), device, True)
    w = np.arange(8.0).reshape(2, 4)
    (F.concat([a, b], 1) * tensor(w, device)).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), w[:, :1])
    np.testing.assert_array_equal(b.grad.numpy(), w[:, 1:])
    assert F.cat is F.concat


def test_concat_and_stack_errors_name_shapes_and_dim():
    a, b = tensor(rand(2, 3)), tensor(rand(4, 4))
    with pytest.raises(ValueError, match=r"concat: shapes \(2, 3\) and \(4, 4\).*dim 1"):
        F.concat([a, b], dim=1)
    with pytest.raises(ValueError, match=r"stack:.*\(2, 3\) and \(4, 4\).*dim 0"):
        F.stack([a, b])
    with pytest.raises(IndexError, match="concat: dim 2 is out of range"):
        F.concat([a, a], dim=2)
    with pytest.raises(ValueError, match="non-empty"):
        F.concat([])


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack_values_and_grads(dim, device):
    xs = [rand(2, 3, seed=i) for i in range(3)]
    np.testing.assert_array_equal(F.stack([tensor(x, device) for x in xs], dim).numpy(), np.stack(xs, dim))
    gradcheck(lambda *a: F.stack(a, dim), xs, device=device)
    gradgradcheck(square(lambda *a: F.stack(a, dim)), xs[:2], device=device)


@pytest.mark.parametrize("spec,sizes", [(2, [2, 2, 1]), ([1, 4], [1, 4]), (5, [5]), ([0, 3, 2], [0, 3, 2])])
def test_split_sizes_and_values(spec, sizes, device):
    x = rand(3, 5)
    parts = F.split(tensor(x, device), spec, dim=1)
    assert isinstance(parts, tuple) and [p.shape[1] for p in parts] == sizes
    np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts], 1), x)


def test_split_backward_fills_zeros_for_unused_pieces(device):
    a = tensor(rand(5, 2), device, True)
    first, _, last = F.split(a, 2, dim=0)   # pieces of 2, 2, 1 rows; the middle one is unused
    (first.sum() + 3 * last.sum()).backward()
    np.testing.assert_array_equal(a.grad.numpy(), [[1, 1], [1, 1], [0, 0], [0, 0], [3, 3]])
    x = rand(4, 3)
    gradcheck(lambda a: F.split(a, [1, 2], dim=1)[1], [x], device=device)
    gradcheck(lambda a: F.split(a, 1, dim=0), [x], device=device)  # every output used
    gradgradcheck(lambda a: F.split(a, [2, 1], dim=1)[0] ** 2, [x], device=device)


def test_split_and_chunk_errors_and_chunk_rule():
    a = tensor(rand(6, 2))
    with pytest.raises(ValueError, match=r"split: sections \[2, 3\] do not add up to the size 6"):
        F.split(a, [2, 3])
    with pytest.raises(ValueError, match="positive"):
        F.split(a, 0)
    # PyTorch's rule: pieces of ceil(n / chunks), so 6 rows in 4 chunks gives 3 pieces of 2
    assert [p.shape[0] for p in F.chunk(a, 4)] == [2, 2, 2]
    assert [p.shape[0] for p in F.chunk(tensor(rand(5)), 2)] == [3, 2]
    assert [p.shape[1] for p in F.chunk(a, 3, dim=1)] == [1, 1]


# ----------------------------------------------------------------------------
# pad
# ----------------------------------------------------------------------------

def _np_widths(pad, ndim):
    k = len(pad) // 2
    return [(0, 0)] * (ndim - k) + [(pad[2 * i], pad[2 * i + 1]) for i in reversed(range(k))]


PADS = [(1, 2), (2, 0, 1, 1), (0, 1, 2, 0, 1, 1)]


@pytest.mark.parametrize("mode,npmode", [("constant", "constant"), ("reflect", "reflect"), ("replicate", "edge")])
@pytest.mark.parametrize("pad", PADS)
def test_pad_values_and_grads(mode, npmode, pad, device):
    x = rand(2, 3, 4)
    kw = {"constant_values": 0.5} if mode == "constant" else {}
    want = np.pad(x, _np_widths(pad, x.ndim), mode=npmode, **kw)
    got = F.pad(tensor(x, device), pad, mode=mode, value=0.5)
    np.testing.assert_array_equal(got.numpy(), want)
    small = x[:, :, :3]  # keeps the elementwise check cheap; widths stay below every size
    gradcheck(lambda a: F.pad(a, pad, mode=mode), [small], device=device)
    gradgradcheck(square(lambda a: F.pad(a, pad, mode=mode)), [small], device=device)


def test_pad_reflect_backward_folds_borders():
    # reflect of [a b c] by (2, 1) is [c b a b c b]: a is used once, b three times, c twice
    a = tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = F.pad(a, (2, 1), mode="reflect")
    np.testing.assert_array_equal(y.numpy(), [3, 2, 1, 2, 3, 2])
    y.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1, 3, 2])
    b = tensor([1.0, 2.0, 3.0], requires_grad=True)
    F.pad(b, (2, 1), mode="replicate").sum().backward()  # [a a a b c c]
    np.testing.assert_array_equal(b.grad.numpy(), [3, 1, 2])


def test_pad_constant_negative_crops(device):
    x = rand(3, 5)
    y = F.pad(tensor(x, device), (-1, 2, 1, -2), value=7.0)
    want = np.pad(x[:1, 1:], ((1, 0), (0, 2)), constant_values=7.0)
    np.testing.assert_array_equal(y.numpy(), want)
    gradcheck(lambda a: F.pad(a, (-1, 2, 1, -2)), [x], device=device)


def test_pad_errors():
    a = tensor(rand(2, 3))
    with pytest.raises(ValueError, match=r"reflect widths \(3, 0\) must be smaller than the size 3"):
        F.pad(a, (3, 0), mode="reflect")
    with pytest.raises(ValueError, match="unknown mode 'circular'"):
        F.pad(a, (1, 1), mode="circular")
    with pytest.raises(ValueError, match="even length"):
        F.pad(a, (1, 1, 1))
    with pytest.raises(ValueError, match="only mode='constant'"):
        F.pad(a, (-1, 0), mode="replicate")
    assert F.pad(a, (0, 0)) is a


# ----------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------

def test_embedding_values_and_accumulating_grad(device):
    W = rand(5, 3)
    idx = np.array([[1, 4, 1], [1, 0, 4]])  # any shape; 1 appears three times, 4 twice
    w = tensor(W, device, True)
    y = F.embedding(idx, w)
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y.numpy(), W[idx])
    g = rand(2, 3, 3, seed=3)
    y.backward(gradient=g)
    want = np.zeros_like(W)
    np.add.at(want, idx, g)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w.grad.numpy()[1], g[0, 0] + g[0, 2] + g[1, 0])
    gradcheck(lambda W: F.embedding(mg.tensor(idx, device=device), W), [W], device=device)
    gradgradcheck(square(lambda W: F.embedding(idx, W)), [W], device=device)


def test_embedding_errors():
    W = tensor(rand(4, 2))
    with pytest.raises(IndexError, match=r"embedding: index out of range.*\[0, 4\].*4 rows"):
        F.embedding([0, 4], W)
    with pytest.raises(IndexError, match="out of range"):
        F.embedding([-1], W)
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0, 1.0]), W)
    with pytest.raises(ValueError, match="2-D"):
        F.embedding([0], tensor(rand(4)))


# ----------------------------------------------------------------------------
# one_hot
# ----------------------------------------------------------------------------

def test_one_hot_rows_of_the_identity_on_the_labels_device(device):
    labels = np.array([2, 0, 2, 4])
    for as_given in (labels, mg.tensor(labels, device=device), backend.to_device(labels, device)):
        y = F.one_hot(as_given, 5)
        want_device = as_given.device if isinstance(as_given, mg.Tensor) else backend.device_of(as_given)
        assert isinstance(y, mg.Tensor) and y.device == want_device and not y.requires_grad
        assert y.shape == (4, 5) and y.dtype == mg.get_default_dtype()
        np.testing.assert_array_equal(y.numpy(), np.eye(5)[labels])
    assert F.one_hot([1, 0], 2, np.float64).dtype == np.float64
    assert F.one_hot(np.zeros(0, np.int64), 3).shape == (0, 3)
    # it is what the embedding of the identity table returns
    eye = mg.tensor(np.eye(5), device=device)
    np.testing.assert_array_equal(F.one_hot(mg.tensor(labels, device=device), 5, np.float64).numpy(),
                                  F.embedding(mg.tensor(labels, device=device), eye).numpy())


def test_one_hot_refuses_bad_labels_with_one_clear_error():
    with pytest.raises(ValueError, match="one_hot: labels must be integers, got dtype float64"):
        F.one_hot(np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match=r"one_hot: labels must be 1-D \(B,\), got shape \(2, 1\)"):
        F.one_hot(np.array([[0], [1]]), 3)
    with pytest.raises(ValueError, match=r"one_hot: labels must lie in \[0, 3\), got values in \[0, 3\]"):
        F.one_hot([0, 3], 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        F.one_hot(mg.tensor(np.array([-1, 1])), 3)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        F.one_hot([0], 0)


# ----------------------------------------------------------------------------
# dtype
# ----------------------------------------------------------------------------

def test_shape_ops_keep_float32(device):
    x = mg.tensor(np.ones((2, 3, 4), np.float32), device=device, requires_grad=True)
    outs = [F.concat([x, x], 1), F.stack([x, x]), F.split(x, 2, 2)[0], F.pad(x, (1, 1), mode="reflect"),
            F.pad(x, (1, 1, 1, 1)), x[np.array([0, 0])], F.embedding(np.array([0, 1]), x[0])]
    for y in outs:
        assert y.dtype == np.float32
    total = outs[0].sum()
    for y in outs[1:]:
        total = total + y.sum()
    total.backward()
    assert x.grad.dtype == np.float32
