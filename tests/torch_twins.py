"""PyTorch twins of minigen models: the same structure, so the same ``state_dict`` keys.

Each twin has the module structure and attribute names of a minigen model, so
``load_minigen_weights`` copies minigen's weights into it key by key and both
sides compute from identical numbers.  Two users:

* the oracle tests (``tests/test_oracle_*.py``) compare outputs and gradients;
* the benchmarks (``python -m benchmarks``, workloads W0-W7 of
  benchmarks/README.md) time the twin in the same process as minigen (2 threads,
  see ``use_threads``) and, with ``--check``, compare one step.

There is one copy, this one: ``benchmarks`` imports it as ``tests.torch_twins``.
Imported only when PyTorch is installed; nothing in minigen depends on it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF


def use_threads(n: int = 2) -> None:
    """Run PyTorch's CPU kernels on ``n`` threads (the benchmark's setting)."""
    torch.set_num_threads(n)


def device_for(minigen_device: str):
    """The torch device that matches a minigen device, or None when torch has none."""
    if minigen_device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def synchronize(device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tensor(array, device="cpu", requires_grad=False):
    """A torch tensor holding a copy of a NumPy array."""
    t = torch.from_numpy(np.array(array, copy=True)).to(device)
    return t.requires_grad_(requires_grad)


def to_numpy(t) -> np.ndarray:
    """A host NumPy copy of a torch tensor (detached)."""
    return t.detach().cpu().numpy()


def load_minigen_weights(twin: tnn.Module, module, device="cpu") -> tnn.Module:
    """Copy a minigen module's ``state_dict`` into its twin (keys and shapes must agree).

    PyTorch's BatchNorm keeps a ``num_batches_tracked`` counter that minigen may
    leave out; every other key must be present on both sides.
    """
    ours = {}
    for key, value in module.state_dict().items():
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        ours[key] = torch.from_numpy(np.array(value, copy=True))
    missing, unexpected = twin.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"state_dict keys differ between minigen and the torch twin "
                       f"{type(twin).__name__}: missing in minigen {missing}, unknown to torch {unexpected}")
    return twin.to(device)


def grads_by_name(module: tnn.Module) -> dict:
    """name -> gradient (NumPy) of every parameter that has one."""
    return {n: to_numpy(p.grad) for n, p in module.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------
# W0  matmul
# ----------------------------------------------------------------------------

def matmul_call(a, b):
    """C = A @ B (no autograd), the workload's single call."""
    return lambda: torch.matmul(a, b)


# ----------------------------------------------------------------------------
# W1  MLP VAE
# ----------------------------------------------------------------------------

class VAE(tnn.Module):
    """Encoder 784-512-512 -> (mu, logvar) in R^32; decoder 32-512-512-784 (logits)."""

    def __init__(self, data_dim=784, hidden=512, latent=32):
        super().__init__()
        self.enc1 = tnn.Linear(data_dim, hidden)
        self.enc2 = tnn.Linear(hidden, hidden)
        self.enc_mu = tnn.Linear(hidden, latent)
        self.enc_logvar = tnn.Linear(hidden, latent)
        self.dec1 = tnn.Linear(latent, hidden)
        self.dec2 = tnn.Linear(hidden, hidden)
        self.dec3 = tnn.Linear(hidden, data_dim)

    def forward(self, x, eps):
        h = TF.relu(self.enc2(TF.relu(self.enc1(x))))
        mu, logvar = self.enc_mu(h), self.enc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.dec3(TF.relu(self.dec2(TF.relu(self.dec1(z))))), mu, logvar


def vae_loss(model, x, eps):
    """[sum BCE(logits, x) + KL(N(mu, e^logvar) || N(0, I))] / batch."""
    logits, mu, logvar = model(x, eps)
    rec = TF.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu * mu - torch.exp(logvar))
    return (rec + kl) / x.shape[0]


def vae_adam(model, fused=False):
    kw = {"fused": True} if fused else {}
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw)


def vae_step(model, opt, x, latent=32):
    """zero_grad; eps ~ N(0, I); forward; backward; Adam step."""
    def step():
        opt.zero_grad()
        eps = torch.randn(x.shape[0], latent, device=x.device)
        loss = vae_loss(model, x, eps)
        loss.backward()
        opt.step()
        return loss
    return step


# ----------------------------------------------------------------------------
# W2  DCGAN
# ----------------------------------------------------------------------------

class DCGenerator(tnn.Module):
    """z (B, 100) -> Linear -> BN1d -> ReLU -> (B,128,7,7) -> ConvT -> BN2d -> ReLU -> ConvT -> tanh."""

    def __init__(self, z_dim=100):
        super().__init__()
        self.fc = tnn.Linear(z_dim, 128 * 7 * 7)
        self.bn0 = tnn.BatchNorm1d(128 * 7 * 7)
        self.deconv1 = tnn.ConvTranspose2d(128, 64, 4, 2, 1)
        self.bn1 = tnn.BatchNorm2d(64)
        self.deconv2 = tnn.ConvTranspose2d(64, 1, 4, 2, 1)

    def forward(self, z):
        h = TF.relu(self.bn0(self.fc(z))).reshape(-1, 128, 7, 7)
        h = TF.relu(self.bn1(self.deconv1(h)))
        return torch.tanh(self.deconv2(h))


class DCDiscriminator(tnn.Module):
    """x (B,1,28,28) -> Conv -> LReLU -> Conv -> BN2d -> LReLU -> flatten -> Linear -> logit."""

    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 64, 4, 2, 1)
        self.conv2 = tnn.Conv2d(64, 128, 4, 2, 1)
        self.bn2 = tnn.BatchNorm2d(128)
        self.fc = tnn.Linear(128 * 7 * 7, 1)

    def forward(self, x):
        h = TF.leaky_relu(self.conv1(x), 0.2)
        h = TF.leaky_relu(self.bn2(self.conv2(h)), 0.2)
        return self.fc(h.flatten(1))


def gan_adams(G, D):
    return (torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999)))


def d_loss(D, real, fake, ones, zeros):
    bce = TF.binary_cross_entropy_with_logits
    return bce(D(real), ones) + bce(D(fake.detach()), zeros)


def g_loss(D, fake, ones):
    return TF.binary_cross_entropy_with_logits(D(fake), ones)


def gan_step_with(G, D, optG, optD, real, z):
    """The DCGAN example's order: D step on real and detached fake, then G step through updated D."""
    ones = torch.ones(real.shape[0], 1, device=real.device)
    zeros = torch.zeros(real.shape[0], 1, device=real.device)
    fake = G(z)
    optD.zero_grad()
    loss_d = d_loss(D, real, fake, ones, zeros)
    loss_d.backward()
    optD.step()
    optG.zero_grad()
    loss_g = g_loss(D, fake, ones)
    loss_g.backward()
    optG.step()
    return loss_d, loss_g


def gan_step(G, D, optG, optD, real, z_dim=100):
    def step():
        z = torch.randn(real.shape[0], z_dim, device=real.device)
        return gan_step_with(G, D, optG, optD, real, z)
    return step


# ----------------------------------------------------------------------------
# W3  DDPM UNet
# ----------------------------------------------------------------------------

def timestep_embedding(t, dim=128):
    """[sin(t f_i), cos(t f_i)], f_i = exp(-ln(10000) i / half), i < half = dim/2."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / half))
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(tnn.Module):
    def __init__(self, cin, cout, tdim=128):
        super().__init__()
        self.norm1 = tnn.GroupNorm(8, cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = tnn.Linear(tdim, cout)
        self.norm2 = tnn.GroupNorm(8, cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1)
        self.skip = tnn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(TF.silu(self.norm1(x)))
        h = h + self.time_proj(TF.silu(temb))[:, :, None, None]
        h = self.conv2(TF.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class AttnBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = tnn.GroupNorm(8, c)
        self.qkv = tnn.Conv2d(c, 3 * c, 1)
        self.proj = tnn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)   # 3 x (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C), dim=-1)  # (B, HW, HW)
        h = (v @ weights.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj(h)


class DownLevel(tnn.Module):
    """One encoder level of the UNet: [Down (stride-2 conv)], then a ResBlock (minigen's ``downs[j]``)."""

    def __init__(self, cin, cout, downsample):
        super().__init__()
        if downsample:
            self.down = tnn.Conv2d(cin, cin, 3, stride=2, padding=1)
        self.res = ResBlock(cin, cout)

    def forward(self, h, temb):
        if hasattr(self, "down"):
            h = self.down(h)
        return self.res(h, temb)


class UpLevel(tnn.Module):
    """One decoder level: [Up (nearest x2, conv)], then a ResBlock on cat[h, skip] (minigen's ``ups[j]``)."""

    def __init__(self, c_below, c_skip, cout, upsample):
        super().__init__()
        if upsample:
            self.up = tnn.Conv2d(c_below, c_below, 3, padding=1)
        self.res = ResBlock(c_below + c_skip, cout)

    def forward(self, h, skip, temb):
        if hasattr(self, "up"):
            h = self.up(TF.interpolate(h, scale_factor=2, mode="nearest"))
        return self.res(torch.cat([h, skip], 1), temb)


class UNet(tnn.Module):
    """The W3 denoiser: minigen's ``UNet()`` with its defaults (levels of 32, 64, 64 channels).

    state_dict keys follow the library: ``downs.{j}.down.*`` / ``downs.{j}.res.*``
    (encoder level j; level 0 has no Down), ``attn.*``, ``ups.{j}.up.*`` /
    ``ups.{j}.res.*`` (decoder, from the lowest resolution up; ups[0] has no Up).
    """

    def __init__(self, chans=(32, 64, 64)):
        super().__init__()
        self.time_fc1 = tnn.Linear(128, 128)
        self.time_fc2 = tnn.Linear(128, 128)
        self.conv_in = tnn.Conv2d(1, chans[0], 3, padding=1)
        c_in = [chans[0]] + list(chans[:-1])                                  # what each level receives
        self.downs = tnn.ModuleList([DownLevel(c_in[j], chans[j], j > 0) for j in range(len(chans))])
        self.attn = AttnBlock(chans[-1])
        L = len(chans)
        self.ups = tnn.ModuleList(
            [UpLevel(chans[-1], chans[-1], chans[-1], False)] +
            [UpLevel(chans[L - j], chans[L - j - 1], chans[L - j - 1], True) for j in range(1, L)])
        self.norm_out = tnn.GroupNorm(8, chans[0])
        self.conv_out = tnn.Conv2d(chans[0], 1, 3, padding=1)

    def forward(self, x, t):
        temb = self.time_fc2(TF.silu(self.time_fc1(timestep_embedding(t))))
        h, skips = self.conv_in(x), []
        for level in self.downs:
            h = level(h, temb)
            skips.append(h)
        u = self.ups[0](self.attn(h), skips[-1], temb)
        for j, level in enumerate(self.ups[1:], start=1):
            u = level(u, skips[-1 - j], temb)
        return self.conv_out(TF.silu(self.norm_out(u)))


def ddpm_schedule(device="cpu", T=1000, dtype=torch.float32):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), betas linear in [1e-4, 0.02] (computed in float64)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).to(dtype).to(device)


def ddpm_loss(model, alpha_bar, x0, t, eps):
    """|| eps_theta(sqrt(ab_t) x0 + sqrt(1-ab_t) eps, t) - eps ||^2, averaged."""
    a = alpha_bar[t].reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return TF.mse_loss(model(xt, t), eps)


def ddpm_step(model, opt, alpha_bar, x0):
    def step():
        t = torch.randint(0, alpha_bar.shape[0], (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        opt.zero_grad()
        loss = ddpm_loss(model, alpha_bar, x0, t, eps)
        loss.backward()
        opt.step()
        return loss
    return step


# ----------------------------------------------------------------------------
# W6  UNet sampling forward;  W7  DDIM-50 sampling (the W3 UNet)
# ----------------------------------------------------------------------------

def unet_sample_call(model, x, t):
    """One forward of the denoiser without autograd (``torch.inference_mode``), as a sampler makes it."""
    def forward():
        with torch.inference_mode():
            return model(x, t)
    return forward


def ddim_timesteps(T, steps):
    """``steps`` timesteps evenly spaced from T-1 down to 0 (minigen's ``ddim_timesteps``)."""
    return np.round(np.linspace(T - 1, 0, int(steps))).astype(np.int64)


def ddim_sample(model, alpha_bar, x, steps=50, clip_denoised=True):
    """Deterministic DDIM (eta = 0; Song, Meng & Ermon 2021, eq. 12 with sigma_t = 0) from x = x_T.

    alpha_bar: the schedule's alpha_bar_t, t = 0..T-1 (any 1-D tensor or array; read as float64).
    With ab = alpha_bar at the current step t and ab' at the next one of the subsequence (1 past the end):

        eps_hat = model(x_t, t),   x0_hat = (x_t - sqrt(1 - ab) eps_hat) / sqrt(ab),
        [clip_denoised: x0_hat clipped to [-1, 1], eps_hat = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab)]
        x_{t'} = sqrt(ab') x0_hat + sqrt(1 - ab') eps_hat.
    """
    ab_all = [float(a) for a in (alpha_bar.tolist() if hasattr(alpha_bar, "tolist") else alpha_bar)]
    seq = ddim_timesteps(len(ab_all), steps)
    with torch.inference_mode():
        for i, step in enumerate(seq):
            ab = ab_all[step]
            ab_prev = ab_all[seq[i + 1]] if i + 1 < len(seq) else 1.0
            t = torch.full((x.shape[0],), int(step), dtype=torch.int64, device=x.device)
            eps = model(x, t)
            x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
            if clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
                eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
            x = math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps
    return x


def ddim_call(model, alpha_bar, shape, steps=50, device="cpu"):
    """The W7 call: x_T ~ N(0, I), ``steps`` DDIM steps, the images copied to host memory."""
    def sample():
        return to_numpy(ddim_sample(model, alpha_bar, torch.randn(*shape, device=device), steps))
    return sample


# ----------------------------------------------------------------------------
# W4  conv2d
# ----------------------------------------------------------------------------

def conv_calls(x, w, gy):
    """fwd (no graph) and fwd+bwd (grads for x and w given gy) of a 3x3 pad-1 conv."""
    def fwd():
        with torch.no_grad():
            return TF.conv2d(x, w, padding=1)

    def fwd_bwd():
        y = TF.conv2d(x, w, padding=1)
        return torch.autograd.grad(y, (x, w), gy)

    return fwd, fwd_bwd


# ----------------------------------------------------------------------------
# W5  pre-LN transformer block
# ----------------------------------------------------------------------------

class Block(tnn.Module):
    """x + Proj(MHSA(LN(x))), then x + MLP(LN(x)) with a tanh-GELU MLP of width 4C."""

    def __init__(self, dim=128, heads=4, explicit=False):
        super().__init__()
        self.heads, self.explicit = heads, explicit
        self.ln1 = tnn.LayerNorm(dim)
        self.qkv = tnn.Linear(dim, 3 * dim)
        self.proj = tnn.Linear(dim, dim)
        self.ln2 = tnn.LayerNorm(dim)
        self.fc1 = tnn.Linear(dim, 4 * dim)
        self.fc2 = tnn.Linear(4 * dim, dim)

    def attention(self, x):
        B, N, C = x.shape
        d = C // self.heads
        q, k, v = (t.reshape(B, N, self.heads, d).transpose(1, 2)        # (B, h, N, d)
                   for t in self.qkv(x).split(C, dim=-1))
        if self.explicit:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
        else:
            a = TF.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(1, 2).reshape(B, N, C))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(TF.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


def block_call(block, x, gy):
    """fwd+bwd: grads of <block(x), gy> for x and every parameter."""
    inputs = [x] + list(block.parameters())

    def fwd_bwd():
        return torch.autograd.grad(block(x), inputs, gy)
    return fwd_bwd
