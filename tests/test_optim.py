"""optim: SGD / Adam / AdamW against hand-computed updates, clipping, schedules, EMA, state_dicts."""
import json
import math

import numpy as np
import pytest

import minigen as mg
from minigen import nn, optim

# A separable quadratic  f(w) = 1/2 sum_i a_i (w_i - c_i)^2,  gradient a * (w - c).
A = np.array([1.0, 3.0, 0.5])
C = np.array([0.2, 0.1, -1.0])
W0 = np.array([1.0, -2.0, 0.5])


def grad_f(w):
    return A * (w - C)


def run(make_opt, steps, device="cpu"):
    """Minimise the quadratic with the engine; returns w after each step (float64)."""
    w = nn.Parameter(mg.tensor(W0, device=device))
    a, c = mg.tensor(A, device=device), mg.tensor(C, device=device)
    opt = make_opt([w])
    path = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (0.5 * a * (w - c) ** 2).sum()
        loss.backward()
        opt.step()
        path.append(w.numpy().copy())
    return path


# ----------------------------------------------------------------------------
# the update rules, computed by hand
# ----------------------------------------------------------------------------

def test_adam_first_steps_match_the_closed_form(device):
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    path = run(lambda p: optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps), 3, device)

    # step 1: m = (1-b1) g, v = (1-b2) g^2; bias correction gives m_hat = g, v_hat = g^2,
    # so Adam's first step is lr * sign(g) (up to eps), whatever the gradient's size.
    g1 = grad_f(W0)
    w1 = W0 - lr * g1 / (np.abs(g1) + eps)
    np.testing.assert_allclose(path[0], w1, rtol=1e-12)
    np.testing.assert_allclose(np.abs(path[0] - W0), lr, rtol=1e-6)

    # step 2
    g2 = grad_f(w1)
    m2 = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v2 = b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2
    w2 = w1 - lr * (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    np.testing.assert_allclose(path[1], w2, rtol=1e-12)

    # step 3
    g3 = grad_f(w2)
    m3 = b1 * m2 + (1 - b1) * g3
    v3 = b2 * v2 + (1 - b2) * g3 ** 2
    w3 = w2 - lr * (m3 / (1 - b1 ** 3)) / (np.sqrt(v3 / (1 - b2 ** 3)) + eps)
    np.testing.assert_allclose(path[2], w3, rtol=1e-12)


@pytest.mark.parametrize("kind, wd", [("adam", 0.0), ("adam", 0.1), ("adamw", 0.1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_adam_follows_the_reference_update(device, kind, wd, dtype):
    """Ten steps of Adam / AdamW (in place, scratch buffers) against ``adam_reference_step``,
    fed the same gradients; weight decay added to g (Adam) or applied to w first (AdamW)."""
    rng = np.random.default_rng(0)
    lr, betas, eps = 3e-2, (0.8, 0.99), 1e-6
    w0 = rng.normal(size=(4, 5)).astype(dtype)
    w = nn.Parameter(mg.tensor(w0, device=device))
    opt = (optim.AdamW if kind == "adamw" else optim.Adam)([w], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    ref_w, m, v = w0.astype(np.float64), np.zeros(w0.shape), np.zeros(w0.shape)
    for t in range(1, 11):
        g = (rng.normal(size=w0.shape) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)  # gradients of any scale
        w.grad = mg.tensor(g, device=device)
        opt.step()
        if kind == "adamw":
            ref_w = ref_w * (1 - lr * wd)                               # decoupled decay, then Adam on g
            ref_w, m, v = optim.adam_reference_step(ref_w, g, m, v, t, lr, betas, eps)
        else:
            ref_w, m, v = optim.adam_reference_step(ref_w, g + wd * ref_w, m, v, t, lr, betas, eps)
        # float32: a few ulps of the largest entry (a moment can be a small difference of large terms)
        rel = 1e-12 if dtype == np.float64 else 1e-5
        for name, ours, ref in (("w", w.data, ref_w), ("m", opt.state[w]["exp_avg"], m),
                                ("v", opt.state[w]["exp_avg_sq"], v)):
            np.testing.assert_allclose(mg.backend.to_numpy(ours), ref, rtol=rel, atol=rel * np.abs(ref).max(),
                                       err_msg=f"{name} after step {t}")
    assert w.dtype == dtype and np.abs(w.numpy() - w0).max() > 3 * lr   # it moved: the check means something


def test_adam_reference_step_is_kingma_and_ba():
    # Algorithm 1 of Kingma & Ba (2015) at t = 1 from zero moments: m = (1-b1) g, v = (1-b2) g^2,
    # and the bias-corrected step is lr * g / (|g| + eps).
    g = np.array([2.0, -0.5])
    w, m, v = optim.adam_reference_step(np.zeros(2), g, np.zeros(2), np.zeros(2), 1, lr=0.1, betas=(0.9, 0.99))
    np.testing.assert_allclose(m, 0.1 * g)
    np.testing.assert_allclose(v, 0.01 * g * g)
    np.testing.assert_allclose(w, -0.1 * g / (np.abs(g) + 1e-8))


def test_adam_weight_decay_is_added_to_the_gradient():
    lr, wd = 0.01, 0.5
    path = run(lambda p: optim.Adam(p, lr=lr, weight_decay=wd), 1)
    g = grad_f(W0) + wd * W0
    np.testing.assert_allclose(path[0], W0 - lr * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_adamw_decay_is_decoupled_from_the_gradient():
    lr, wd = 0.01, 0.5
    path = run(lambda p: optim.AdamW(p, lr=lr, weight_decay=wd), 1)
    g = grad_f(W0)
    np.testing.assert_allclose(path[0], W0 * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8), rtol=1e-12)
    # with a zero gradient AdamW only shrinks the weights, by exactly (1 - lr wd) per step,
    # while Adam's L2 decay goes through the normalisation and moves each weight by ~lr
    w = nn.Parameter(mg.tensor(W0))
    opt = optim.AdamW([w], lr=lr, weight_decay=wd)
    for _ in range(3):
        w.grad = mg.zeros(3, dtype=np.float64)
        opt.step()
    np.testing.assert_allclose(w.numpy(), W0 * (1 - lr * wd) ** 3, rtol=1e-12)
    v = nn.Parameter(mg.tensor(W0))
    opt = optim.Adam([v], lr=lr, weight_decay=wd)
    v.grad = mg.zeros(3, dtype=np.float64)
    opt.step()
    np.testing.assert_allclose(v.numpy(), W0 - lr * np.sign(W0), rtol=1e-6)
    assert optim.AdamW([w]).param_groups[0]["weight_decay"] == 0.01


def test_sgd_plain_and_momentum_match_hand_computation(device):
    lr, mu = 0.1, 0.9
    path = run(lambda p: optim.SGD(p, lr=lr), 2, device)
    w1 = W0 - lr * grad_f(W0)
    np.testing.assert_allclose(path[0], w1, rtol=1e-12)
    np.testing.assert_allclose(path[1], w1 - lr * grad_f(w1), rtol=1e-12)

    path = run(lambda p: optim.SGD(p, lr=lr, momentum=mu), 3, device)
    b1 = grad_f(W0)                       # the first buffer is the gradient itself
    w1 = W0 - lr * b1
    b2 = mu * b1 + grad_f(w1)
    w2 = w1 - lr * b2
    b3 = mu * b2 + grad_f(w2)
    np.testing.assert_allclose(path[0], w1, rtol=1e-12)
    np.testing.assert_allclose(path[1], w2, rtol=1e-12)
    np.testing.assert_allclose(path[2], w2 - lr * b3, rtol=1e-12)


def test_sgd_nesterov_dampening_and_weight_decay():
    lr, mu, wd = 0.1, 0.9, 0.01
    path = run(lambda p: optim.SGD(p, lr=lr, momentum=mu, nesterov=True, weight_decay=wd), 2)
    g1 = grad_f(W0) + wd * W0
    w1 = W0 - lr * (g1 + mu * g1)
    g2 = grad_f(w1) + wd * w1
    b2 = mu * g1 + g2
    np.testing.assert_allclose(path[0], w1, rtol=1e-12)
    np.testing.assert_allclose(path[1], w1 - lr * (g2 + mu * b2), rtol=1e-12)

    path = run(lambda p: optim.SGD(p, lr=lr, momentum=mu, dampening=0.5), 2)
    g1 = grad_f(W0)
    w1 = W0 - lr * g1
    np.testing.assert_allclose(path[1], w1 - lr * (mu * g1 + 0.5 * grad_f(w1)), rtol=1e-12)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([nn.Parameter(mg.zeros(1))], momentum=0.9, dampening=0.1, nesterov=True)


def test_step_is_in_place_and_skips_parameters_without_grad():
    p, q = nn.Parameter(mg.randn(4)), nn.Parameter(mg.randn(4))
    opt = optim.Adam([p, q], lr=0.1)
    data_p, q_before = p.data, q.numpy().copy()
    p.grad = mg.ones(4)
    opt.step()
    m = opt.state[p]["exp_avg"]
    p.grad = mg.ones(4)
    opt.step()
    assert p.data is data_p and opt.state[p]["exp_avg"] is m       # updated in place
    assert opt.state[p]["step"] == 2 and m.dtype == np.float32
    np.testing.assert_array_equal(q.numpy(), q_before)
    assert q not in opt.state


def test_shared_gradient_arrays_are_not_modified():
    # a + b hands the same gradient array to both leaves: an update must not write into it
    a, b = nn.Parameter(mg.ones(3)), nn.Parameter(mg.ones(3))
    (a + b).sum().backward()
    grads = [a.grad.numpy().copy(), b.grad.numpy().copy()]
    for opt in (optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
                optim.Adam([a, b], weight_decay=0.1)):
        opt.step()
        opt.step()
    np.testing.assert_array_equal(a.grad.numpy(), grads[0])
    np.testing.assert_array_equal(b.grad.numpy(), grads[1])


def test_param_groups_have_their_own_hyperparameters():
    p, q = nn.Parameter(mg.zeros(2)), nn.Parameter(mg.zeros(2))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 1.0}], lr=0.1)
    p.grad, q.grad = mg.ones(2), mg.ones(2)
    opt.step()
    np.testing.assert_allclose(p.numpy(), -0.1)
    np.testing.assert_allclose(q.numpy(), -1.0)
    opt.zero_grad()
    assert p.grad is None and q.grad is None


def test_optimizer_argument_errors():
    p = nn.Parameter(mg.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(ValueError, match="twice"):
        optim.Adam([p, p])
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="leaf"):
        optim.SGD([p * 2])
    with pytest.raises(TypeError, match="iterable"):
        optim.SGD(p)


def test_model_moved_after_building_the_optimizer_is_still_optimized():
    m = nn.Linear(3, 1)
    opt = optim.SGD(m.parameters(), lr=0.1)
    m.to(dtype=np.float64)
    before = m.weight.numpy().copy()
    m(mg.ones(2, 3, dtype=np.float64)).sum().backward()
    opt.step()
    np.testing.assert_allclose(m.weight.numpy(), before - 0.1 * 2.0)


# ----------------------------------------------------------------------------
# state_dict: a restored optimizer continues exactly
# ----------------------------------------------------------------------------

def _through_a_file(state):
    """What a JSON + npz checkpoint does to a state: tuples become lists, arrays NumPy, ints JSON."""
    def convert(x):
        if isinstance(x, dict):
            return {str(k): convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [convert(v) for v in x]
        if isinstance(x, mg.Tensor):
            return x.numpy().copy()
        if mg.backend.is_array(x):
            return np.array(mg.backend.to_numpy(x))
        return json.loads(json.dumps(x))
    return convert(state)


def _model(seed):
    return nn.Sequential(nn.Linear(3, 4, generator=mg.Generator(seed)), nn.Tanh(),
                         nn.Linear(4, 2, generator=mg.Generator(seed + 1)))


def _train(model, opt, steps, sched=None):
    g = mg.Generator(123)
    losses = []
    for i in range(steps):
        x = mg.randn(5, 3, generator=g)
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: optim.Adam(p, lr=0.05, betas=(0.8, 0.99)),
    lambda p: optim.AdamW(p, lr=0.05, weight_decay=0.1),
])
def test_optimizer_state_dict_round_trip_continues_identically(make):
    ref = _model(0)
    ref_opt = make(ref.parameters())
    _train(ref, ref_opt, 6)

    model = _model(0)
    opt = make(model.parameters())
    _train(model, opt, 3)
    saved_model, saved_opt = _through_a_file(model.state_dict()), _through_a_file(opt.state_dict())
    before = opt.state_dict()
    _train(model, opt, 1)                                     # the saved dict is a snapshot
    assert all(np.array_equal(before["state"]["0"][k], saved_opt["state"]["0"][k])
               for k in saved_opt["state"]["0"] if isinstance(saved_opt["state"]["0"][k], np.ndarray))

    fresh = _model(7)
    fresh_opt = make(fresh.parameters())
    fresh.load_state_dict(saved_model)
    fresh_opt.load_state_dict(saved_opt)
    assert fresh_opt.param_groups[0].keys() == ref_opt.param_groups[0].keys()
    assert type(fresh_opt.param_groups[0].get("betas", ())) is tuple
    g = mg.Generator(123)
    for _ in range(3):                                        # replay the data stream up to step 3
        mg.randn(5, 3, generator=g)
    for _ in range(3):
        x = mg.randn(5, 3, generator=g)
        fresh_opt.zero_grad()
        (fresh(x) ** 2).mean().backward()
        fresh_opt.step()
    for p, q in zip(fresh.parameters(), ref.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_optimizer_load_state_dict_errors():
    a = optim.Adam(_model(0).parameters())
    b = optim.Adam(nn.Linear(3, 4).parameters())
    with pytest.raises(ValueError, match="group 0 has 4 parameters in the state and 2 here"):
        b.load_state_dict(a.state_dict())
    m = _model(0)
    opt = optim.Adam(m.parameters())
    _train(m, opt, 1)
    state = opt.state_dict()
    state["state"]["0"]["exp_avg"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="exp_avg.*shape"):
        optim.Adam(_model(0).parameters()).load_state_dict(state)


# ----------------------------------------------------------------------------
# gradient clipping
# ----------------------------------------------------------------------------

def test_clip_grad_norm_scales_to_max_norm():
    p, q = nn.Parameter(mg.zeros(2, dtype=np.float64)), nn.Parameter(mg.zeros(3, dtype=np.float64))
    p.grad = mg.tensor(np.array([3.0, 0.0]))
    q.grad = mg.tensor(np.array([0.0, 4.0, 12.0]))
    total = optim.clip_grad_norm_([p, q], max_norm=6.5)
    assert total.item() == pytest.approx(13.0)
    scale = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(p.grad.numpy(), [3 * scale, 0.0])
    np.testing.assert_allclose(q.grad.numpy(), [0.0, 4 * scale, 12 * scale])
    # below the threshold nothing changes
    g = q.grad.numpy().copy()
    assert optim.clip_grad_norm_([q], 100.0).item() == pytest.approx(math.sqrt(160) * scale)
    np.testing.assert_array_equal(q.grad.numpy(), g)
    # the max norm
    q.grad = mg.tensor(np.array([1.0, -5.0, 2.0]))
    assert optim.clip_grad_norm_([q], 1.0, norm_type=math.inf).item() == pytest.approx(5.0)
    np.testing.assert_allclose(q.grad.numpy(), np.array([1.0, -5.0, 2.0]) / (5.0 + 1e-6))


def test_clip_grad_norm_with_shared_gradients_and_nonfinite():
    a, b = nn.Parameter(mg.ones(2)), nn.Parameter(mg.ones(2))
    (3 * (a + b)).sum().backward()                          # both grads [3, 3], possibly one array
    total = optim.clip_grad_norm_([a, b], 1.0)
    assert total.item() == pytest.approx(6.0)
    np.testing.assert_allclose(a.grad.numpy(), 3 / 6, rtol=1e-5)   # scaled once, not twice
    np.testing.assert_allclose(b.grad.numpy(), 3 / 6, rtol=1e-5)
    a.grad = mg.tensor(np.array([np.inf, 1.0], dtype=np.float32))
    with pytest.raises(RuntimeError, match="inf"):
        optim.clip_grad_norm_([a], 1.0, error_if_nonfinite=True)


# ----------------------------------------------------------------------------
# learning-rate schedules
# ----------------------------------------------------------------------------

def _opt(lr=1.0):
    return optim.SGD([nn.Parameter(mg.zeros(1))], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.step()
    return out


def test_lambda_lr_values():
    sched = optim.LambdaLR(_opt(0.5), lambda t: 0.1 ** t)
    np.testing.assert_allclose(_lrs(sched, 4), [0.5, 0.05, 0.005, 0.0005])
    assert sched.get_last_lr() == [pytest.approx(0.00005)]


def test_linear_warmup_values():
    sched = optim.LinearWarmupLR(_opt(2.0), warmup_steps=4)
    np.testing.assert_allclose(_lrs(sched, 6), [0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_cosine_warmup_values():
    sched = optim.CosineWarmupLR(_opt(1.0), warmup_steps=2, total_steps=6, min_lr_ratio=0.2)
    cos = [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]
    np.testing.assert_allclose(_lrs(sched, 8), [0.5, 1.0] + cos + [0.2], rtol=1e-12)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        optim.CosineWarmupLR(_opt(), 5, 5)


def test_schedule_state_dict_resumes():
    opt = _opt(1.0)
    sched = optim.CosineWarmupLR(opt, 3, 10)
    _lrs(sched, 5)
    state, lr = _through_a_file(sched.state_dict()), opt.param_groups[0]["lr"]
    opt2 = _opt(1.0)
    sched2 = optim.CosineWarmupLR(opt2, 3, 10)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == lr
    np.testing.assert_allclose(_lrs(sched2, 3), _lrs(sched, 3))


# ----------------------------------------------------------------------------
# EMA of the weights
# ----------------------------------------------------------------------------

def test_ema_follows_the_recursion_and_swaps_weights(device):
    m = nn.Linear(2, 1, device=device, dtype=np.float64)
    w0 = m.weight.numpy().copy()
    ema = optim.ExponentialMovingAverage(m, decay=0.9)
    targets = [w0 + 1.0, w0 - 2.0, w0 + 0.5]
    expected = w0
    for t in targets:
        m.weight.data[...] = mg.tensor(t, device=device).data
        ema.update()
        expected = 0.9 * expected + 0.1 * t
    np.testing.assert_allclose(mg.backend.to_numpy(ema.shadow["weight"]), expected, rtol=1e-12)
    live = m.weight.numpy().copy()
    with ema.average_parameters() as model:
        assert model is m
        np.testing.assert_allclose(m.weight.numpy(), expected, rtol=1e-12)
    np.testing.assert_array_equal(m.weight.numpy(), live)
    ema.copy_to()
    np.testing.assert_allclose(m.weight.numpy(), expected, rtol=1e-12)


def test_ema_warmup_decay_and_state_dict():
    m = nn.Linear(2, 1, dtype=np.float64)
    ema = optim.ExponentialMovingAverage(m, decay=0.99, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update()
    assert decays == [pytest.approx(1 / 10), pytest.approx(2 / 11), pytest.approx(3 / 12)]
    late = optim.ExponentialMovingAverage(m, decay=0.99, warmup=True)
    late.num_updates = 1000
    assert late.current_decay() == 0.99

    m.weight.data += 1
    ema.update()
    state = _through_a_file(ema.state_dict())
    other = optim.ExponentialMovingAverage(nn.Linear(2, 1, dtype=np.float64), decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 4 and other.decay == 0.99 and other.warmup
    np.testing.assert_array_equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="names differ"):
        optim.ExponentialMovingAverage(nn.Sequential(nn.Linear(2, 1))).load_state_dict(state)


# ----------------------------------------------------------------------------
# subnormal moments (minigen/optim.py: _flush_subnormal)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormal_zeroes_only_what_could_turn_subnormal(dtype):
    from minigen.optim import FLUSH_EVERY, _flush_subnormal
    tiny = float(np.finfo(dtype).tiny)
    bound = tiny / 0.9 ** FLUSH_EVERY
    a = np.array([0.0, tiny / 4, -tiny, bound * 0.99, -bound * 1.01, 1e-3, -2.0], dtype=dtype)
    want = a.copy()
    want[:4] = 0
    _flush_subnormal(a, 0.9)
    np.testing.assert_array_equal(a, want)
    b = np.array([tiny * 2.0 ** 23, tiny * 2.0 ** 25], dtype=dtype)
    _flush_subnormal(b, 0.1)                    # a fast decay: the bound is capped at tiny * 2^24
    assert b[0] == 0 and b[1] == dtype(tiny * 2.0 ** 25)
    c = np.array([tiny / 2], dtype=dtype)
    _flush_subnormal(c, 0.0)                    # no decay (beta = 0): nothing to flush
    assert c[0] == dtype(tiny / 2)


@pytest.mark.parametrize("make, moment", [
    (lambda ps: optim.Adam(ps, lr=1e-3), "exp_avg"),
    (lambda ps: optim.SGD(ps, lr=1e-3, momentum=0.9), "momentum_buffer"),
    (lambda ps: optim.SGD(ps, lr=1e-3, momentum=0.9, dampening=0.5), "momentum_buffer"),
], ids=["adam", "sgd-momentum", "sgd-dampened"])
def test_moments_of_a_dead_coordinate_never_turn_subnormal(monkeypatch, make, moment):
    # one gradient, then zeros: the moment shrinks by 0.9 a step and would be subnormal from about step 840
    def run():
        w = mg.tensor(np.array([1.0, -0.5], np.float32), requires_grad=True)
        opt = make([w])
        seen = 0
        for t in range(1000):
            w.grad = mg.tensor(np.array([0.3, -0.2], np.float32) if t == 0 else np.zeros(2, np.float32))
            opt.step()
            m = opt.state[w][moment]
            seen += int(((m != 0) & (np.abs(m) < np.finfo(np.float32).tiny)).sum())
        return w.numpy(), seen
    w_flushed, seen_flushed = run()
    from minigen import optim as optim_module
    monkeypatch.setattr(optim_module, "FLUSH_EVERY", 10 ** 9)
    w_kept, seen_kept = run()
    assert seen_kept > 0 and seen_flushed == 0           # the scenario does produce subnormals
    np.testing.assert_array_equal(w_flushed, w_kept)     # and zeroing them moved no weight
