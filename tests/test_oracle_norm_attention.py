"""Oracle: batch_norm, group_norm, layer_norm and scaled_dot_product_attention against PyTorch.

Identical float64 inputs and parameters go through both; outputs, the gradients
for every input and (for batch norm) the running statistics after several
training steps must agree.  Skipped when PyTorch is not installed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import minigen as mg  # noqa: E402
import minigen.functional as F  # noqa: E402
from helpers import compare  # noqa: E402

pytestmark = pytest.mark.oracle


TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 4), (5, 3, 7), (4, 3, 5, 5)])
def test_batch_norm_training_and_running_stats(shape):
    rng = np.random.default_rng(0)
    C = shape[1]
    rm, rv = mg.zeros(C, dtype=np.float64), mg.ones(C, dtype=np.float64)
    rmt, rvt = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for step in range(3):
        x = rng.standard_normal(shape) * 2 + 0.5
        compare(lambda X, W, B: F.batch_norm(X, rm, rv, W, B, training=True, momentum=0.3),
                lambda X, W, B: TF.batch_norm(X, rmt, rvt, W, B, training=True, momentum=0.3),
                [x, rng.standard_normal(C), rng.standard_normal(C)], gy=rng.standard_normal(shape), **TOL)
    np.testing.assert_allclose(rm.numpy(), rmt.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), rvt.numpy(), rtol=1e-12)
    # eval mode with the statistics both have accumulated
    compare(lambda X, W, B: F.batch_norm(X, rm, rv, W, B), lambda X, W, B: TF.batch_norm(X, rmt, rvt, W, B),
            [rng.standard_normal(shape), rng.standard_normal(C), rng.standard_normal(C)],
            gy=rng.standard_normal(shape), **TOL)


@pytest.mark.parametrize("shape,groups", [((2, 6, 4, 4), 3), ((3, 8, 5), 8), ((2, 4, 3, 3), 1)])
def test_group_norm(shape, groups):
    rng = np.random.default_rng(1)
    C = shape[1]
    x, w, b = rng.standard_normal(shape) - 1.0, rng.standard_normal(C), rng.standard_normal(C)
    compare(lambda X, W, B: F.group_norm(X, groups, W, B, eps=1e-3),
            lambda X, W, B: TF.group_norm(X, groups, W, B, eps=1e-3), [x, w, b],
            gy=rng.standard_normal(shape), **TOL)
    compare(lambda X: F.group_norm(X, groups), lambda X: TF.group_norm(X, groups), [rng.standard_normal(shape)],
            gy=rng.standard_normal(shape), **TOL)


@pytest.mark.parametrize("shape,norm_shape", [((4, 7, 16), (16,)), ((3, 4, 5), (4, 5))])
def test_layer_norm(shape, norm_shape):
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal(shape) * 3, rng.standard_normal(norm_shape), rng.standard_normal(norm_shape)
    compare(lambda X, W, B: F.layer_norm(X, norm_shape, W, B), lambda X, W, B: TF.layer_norm(X, norm_shape, W, B),
            [x, w, b], gy=rng.standard_normal(shape), **TOL)


def test_layer_norm_float32_w5_shape():
    # The transformer block's LayerNorm in float32, as the benchmark runs it.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 49, 128)).astype(np.float32)
    w, b = rng.standard_normal(128).astype(np.float32), rng.standard_normal(128).astype(np.float32)
    compare(lambda X, W, B: F.layer_norm(X, 128, W, B), lambda X, W, B: TF.layer_norm(X, (128,), W, B),
            [x, w, b], gy=rng.standard_normal(x.shape).astype(np.float32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal", "broadcast-bool"])
def test_scaled_dot_product_attention(mask):
    rng = np.random.default_rng(4)
    B, H, L, S, E, Ev = 2, 3, 5, 6, 4, 3
    arrays = [rng.standard_normal((B, H, L, E)), rng.standard_normal((B, H, S, E)),
              rng.standard_normal((B, H, S, Ev))]
    kw, kwt = {}, {}
    if mask == "bool":
        m = rng.random((L, S)) < 0.7
        m[:, 0] = True
        kw, kwt = dict(attn_mask=mg.tensor(m)), dict(attn_mask=torch.tensor(m))
    elif mask == "broadcast-bool":
        m = rng.random((B, 1, 1, S)) < 0.7  # a key-padding mask
        m[..., 0] = True
        kw, kwt = dict(attn_mask=mg.tensor(m)), dict(attn_mask=torch.tensor(m))
    elif mask == "causal":
        kw, kwt = dict(is_causal=True), dict(is_causal=True)
    if mask == "float":  # an additive bias: differentiated too
        arrays.append(rng.standard_normal((H, L, S)))
        compare(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                lambda q, k, v, m: TF.scaled_dot_product_attention(q, k, v, attn_mask=m),
                arrays, gy=rng.standard_normal((B, H, L, Ev)), **TOL)
    else:
        compare(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw),
                lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, **kwt),
                arrays, gy=rng.standard_normal((B, H, L, Ev)), **TOL)


def test_scaled_dot_product_attention_scale_and_empty_rows():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 2))
    m = rng.random((4, 5)) < 0.5
    m[1] = False  # a query with no key left: PyTorch returns zeros there
    compare(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mg.tensor(m), scale=0.25),
            lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(m), scale=0.25),
            [q, k, v], gy=rng.standard_normal((2, 4, 2)), **TOL)


def test_scaled_dot_product_attention_float32_w5_shape():
    rng = np.random.default_rng(6)
    qkv = [rng.standard_normal((4, 4, 49, 32)).astype(np.float32) for _ in range(3)]
    compare(F.scaled_dot_product_attention, TF.scaled_dot_product_attention, qkv,
            gy=rng.standard_normal((4, 4, 49, 32)).astype(np.float32), rtol=1e-4, atol=1e-5)
