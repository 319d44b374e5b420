"""W1: one Adam training step of an MLP VAE, batch 128 (notes §2).

    enc: 784 -> 512 -> 512 (ReLU) -> mu, logvar in R^32
    z = mu + exp(0.5 logvar) * eps,   eps ~ N(0, I) drawn every step
    dec: 32 -> 512 -> 512 (ReLU) -> 784 logits
    loss = [ sum_{b,pixels} BCE_logits(logits, x) + sum_{b,j} -0.5 (1 + logvar - mu^2 - e^logvar) ] / B
    step = zero_grad; forward; backward; Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8).step()

x ~ U[0, 1) (B, 784) is fixed and held in memory.  Small matrices (1.38 M
parameters) make this the workload where per-op overhead and the optimizer's
update loop show: a hand-written NumPy step runs at 0.8x PyTorch.  PyTorch is
timed twice: its default Adam (a for-loop over parameters on the CPU) and
``fused=True``.
"""
from __future__ import annotations

import minigen as mg
import minigen.functional as F
from minigen import nn, optim

from .common import Case, Row, rel_err

NAME = "W1"
TITLE = "MLP-VAE Adam step"
DATA, HIDDEN, LATENT = 784, 512, 32


class VAE(nn.Module):
    """Encoder 784-512-512 -> (mu, logvar) in R^32; decoder 32-512-512-784 (logits)."""

    def __init__(self, data_dim=DATA, hidden=HIDDEN, latent=LATENT, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        self.enc1 = nn.Linear(data_dim, hidden, **kw)
        self.enc2 = nn.Linear(hidden, hidden, **kw)
        self.enc_mu = nn.Linear(hidden, latent, **kw)
        self.enc_logvar = nn.Linear(hidden, latent, **kw)
        self.dec1 = nn.Linear(latent, hidden, **kw)
        self.dec2 = nn.Linear(hidden, hidden, **kw)
        self.dec3 = nn.Linear(hidden, data_dim, **kw)

    def forward(self, x, eps):
        h = F.relu(self.enc2(F.relu(self.enc1(x))))                 # (B, 512)
        mu, logvar = self.enc_mu(h), self.enc_logvar(h)              # (B, 32) each
        z = mu + F.exp(0.5 * logvar) * eps                           # reparameterize
        return self.dec3(F.relu(self.dec2(F.relu(self.dec1(z))))), mu, logvar


def vae_loss(model, x, eps):
    """Negative ELBO per image: summed BCE of the logits plus the Gaussian KL, over B."""
    logits, mu, logvar = model(x, eps)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * F.sum(1.0 + logvar - mu * mu - F.exp(logvar))
    return (rec + kl) / x.shape[0]


def make_adam(model):
    return optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def _setup(settings):
    batch = 16 if settings.quick else 128
    g = mg.Generator(settings.seed, settings.device)
    model = VAE(generator=mg.Generator(settings.seed + 1, "cpu")).to(settings.device)
    x_host = mg.Generator(settings.seed + 2, "cpu").uniform((batch, DATA))
    return model, x_host, g, batch


def build(settings, twins=None, torch_device=None) -> Case:
    model, x_host, g, batch = _setup(settings)
    x = mg.tensor(x_host, device=settings.device)
    opt = make_adam(model)

    def step():
        opt.zero_grad()
        eps = mg.randn(batch, LATENT, generator=g)
        loss = vae_loss(model, x, eps)
        loss.backward()
        opt.step()
        return loss

    engines = {"minigen": step}
    flop = _flops(batch)
    rows = [Row("default-adam", "minigen", flop=flop, target=1.0),
            Row("fused-adam", "minigen", flop=flop, target=1.0)]
    if twins is not None:
        xt = twins.tensor(x_host, torch_device)
        for row, fused in zip(rows, (False, True)):
            twin = twins.load_minigen_weights(twins.VAE(), model, torch_device)
            engines["torch-" + row.variant] = twins.vae_step(twin, twins.vae_adam(twin, fused), xt)
            row.torch = "torch-" + row.variant
    nparam = sum(p.size for p in model.parameters())
    return Case(engines, rows, info={"batch": batch, "params": nparam})


def _flops(batch):
    """Matmul FLOPs of one step: forward, dW for every layer, dX for all but the first."""
    layers = [(DATA, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, LATENT), (HIDDEN, LATENT),
              (LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, DATA)]
    fwd = sum(2 * batch * i * o for i, o in layers)
    return 3 * fwd - 2 * batch * DATA * HIDDEN


def check(settings, twins, torch_device):
    """Same weights, x and eps: the loss, every parameter gradient, and the loss after one Adam step."""
    model, x_host, g, batch = _setup(settings)
    eps_host = mg.Generator(settings.seed + 3, "cpu").normal((batch, LATENT))
    twin = twins.load_minigen_weights(twins.VAE(), model, torch_device)
    x, eps = mg.tensor(x_host, device=settings.device), mg.tensor(eps_host, device=settings.device)
    xt, epst = twins.tensor(x_host, torch_device), twins.tensor(eps_host, torch_device)
    opt, topt = make_adam(model), twins.vae_adam(twin)

    opt.zero_grad()
    loss = vae_loss(model, x, eps)
    loss.backward()
    topt.zero_grad()
    tloss = twins.vae_loss(twin, xt, epst)
    tloss.backward()
    out = [("loss", rel_err(loss.item(), tloss.item()), 1e-5)]
    tgrads = twins.grads_by_name(twin)
    for name, p in model.named_parameters():
        out.append((f"grad {name}", rel_err(p.grad.numpy(), tgrads[name]), 1e-4))
    opt.step()
    topt.step()
    with mg.no_grad():
        after = vae_loss(model, x, eps).item()
    with twins.torch.no_grad():
        tafter = twins.vae_loss(twin, xt, epst).item()
    out.append(("loss after Adam step", rel_err(after, tafter), 1e-4))
    return out
