"""W2: one DCGAN training step (discriminator step, then generator step), batch 64 (notes §3.3).

    G: z (B,100) -> Linear(100, 6272) -> BN1d -> ReLU -> view (B,128,7,7)
         -> ConvT(128,64,4,2,1) -> BN2d -> ReLU -> ConvT(64,1,4,2,1) -> tanh     (B,1,28,28)
    D: x -> Conv(1,64,4,2,1) -> LReLU(0.2) -> Conv(64,128,4,2,1) -> BN2d -> LReLU(0.2)
         -> flatten -> Linear(6272, 1)                                           (B,1) logits
    step (the order of PyTorch's DCGAN example):
        fake = G(z)
        D: zero_grad; L_D = BCE(D(real), 1) + BCE(D(fake.detach()), 0); backward; Adam step
        G: zero_grad; L_G = BCE(D(fake), 1) through the updated D; backward; Adam step
    Adam(lr=2e-4, betas=(0.5, 0.999)) for both; BatchNorm in train mode.

real ~ U[-1, 1) (B,1,28,28) is fixed; z ~ N(0, I) is drawn every step.  The
time goes to the strided convolutions (im2col / col2im and their matmuls), the
batch norms and the element-wise activations.
"""
from __future__ import annotations

import minigen as mg
import minigen.functional as F
from minigen import nn, optim

from .common import Case, Row, rel_err

NAME = "W2"
TITLE = "DCGAN step"
Z_DIM = 100


class DCGenerator(nn.Module):
    def __init__(self, z_dim=Z_DIM, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        self.fc = nn.Linear(z_dim, 128 * 7 * 7, **kw)
        self.bn0 = nn.BatchNorm1d(128 * 7 * 7)
        self.deconv1 = nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1, **kw)
        self.bn1 = nn.BatchNorm2d(64)
        self.deconv2 = nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1, **kw)

    def forward(self, z):
        h = F.relu(self.bn0(self.fc(z))).reshape(-1, 128, 7, 7)    # (B, 128, 7, 7)
        h = F.relu(self.bn1(self.deconv1(h)))                       # (B, 64, 14, 14)
        return F.tanh(self.deconv2(h))                              # (B, 1, 28, 28)


class DCDiscriminator(nn.Module):
    def __init__(self, generator=None):
        super().__init__()
        kw = dict(generator=generator)
        self.conv1 = nn.Conv2d(1, 64, 4, stride=2, padding=1, **kw)
        self.conv2 = nn.Conv2d(64, 128, 4, stride=2, padding=1, **kw)
        self.bn2 = nn.BatchNorm2d(128)
        self.fc = nn.Linear(128 * 7 * 7, 1, **kw)

    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.2)                        # (B, 64, 14, 14)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.2)              # (B, 128, 7, 7)
        return self.fc(F.flatten(h, 1))                             # (B, 1)


def make_adams(G, D):
    return (optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999)))


def d_loss(D, real, fake, ones, zeros):
    """BCE(D(real), 1) + BCE(D(fake), 0), each a mean over the batch; fake is detached."""
    bce = F.binary_cross_entropy_with_logits
    return bce(D(real), ones) + bce(D(fake.detach()), zeros)


def g_loss(D, fake, ones):
    """BCE(D(fake), 1): the non-saturating generator loss."""
    return F.binary_cross_entropy_with_logits(D(fake), ones)


def gan_step_with(G, D, opt_g, opt_d, real, z, ones, zeros):
    """One discriminator step, then one generator step through the updated D."""
    fake = G(z)
    opt_d.zero_grad()
    loss_d = d_loss(D, real, fake, ones, zeros)
    loss_d.backward()
    opt_d.step()
    opt_g.zero_grad()
    loss_g = g_loss(D, fake, ones)
    loss_g.backward()
    opt_g.step()
    return loss_d, loss_g


def _setup(settings):
    batch = 4 if settings.quick else 64
    init = mg.Generator(settings.seed + 1, "cpu")
    G = DCGenerator(generator=init).to(settings.device)
    D = DCDiscriminator(generator=init).to(settings.device)
    real_host = mg.Generator(settings.seed + 2, "cpu").uniform((batch, 1, 28, 28), -1.0, 1.0)
    return G, D, real_host, batch


def build(settings, twins=None, torch_device=None) -> Case:
    G, D, real_host, batch = _setup(settings)
    dev = settings.device
    real = mg.tensor(real_host, device=dev)
    ones, zeros = mg.ones(batch, 1, device=dev), mg.zeros(batch, 1, device=dev)
    opt_g, opt_d = make_adams(G, D)
    g = mg.Generator(settings.seed, dev)

    def step():
        z = mg.randn(batch, Z_DIM, generator=g)
        return gan_step_with(G, D, opt_g, opt_d, real, z, ones, zeros)

    engines = {"minigen": step}
    row = Row("dcgan", "minigen", target=1.3)
    if twins is not None:
        tG = twins.load_minigen_weights(twins.DCGenerator(), G, torch_device)
        tD = twins.load_minigen_weights(twins.DCDiscriminator(), D, torch_device)
        engines["torch"] = twins.gan_step(tG, tD, *twins.gan_adams(tG, tD),
                                          twins.tensor(real_host, torch_device))
        row.torch = "torch"
    nparam = sum(p.size for p in G.parameters()) + sum(p.size for p in D.parameters())
    return Case(engines, [row], info={"batch": batch, "params": nparam})


# A bias right before a train-mode BatchNorm is subtracted out again with the batch
# mean, so its exact gradient is 0 and both libraries return rounding noise; that
# noise is measured against the gradient scale of the same layer's weight.
BIAS_BEFORE_BN = {"G.fc.bias", "G.deconv1.bias", "D.conv2.bias"}
# ~400 k LeakyReLU inputs per D pass: one or two lie within float32 rounding of
# the kink, the libraries take different sides there, and each such element
# moves its channel's bias gradient by ~1e-3 (relative).  A wrong layer gives 1e-1.
GRAD_TOL = 1e-2


def check(settings, twins, torch_device):
    """Same weights, real images and z, compared stage by stage through one step.

    D stage: L_D and D's gradients; then which elements Adam moved differently.
    Adam's first step moves every weight by about lr * sign(gradient), so a
    gradient that is rounding noise on both sides may move either way: the
    share of such elements is reported, and D is copied over again before the
    G stage (L_G, G's gradients and G's BatchNorm running statistics).
    """
    import numpy as np

    G, D, real_host, batch = _setup(settings)
    dev = settings.device
    z_host = mg.Generator(settings.seed + 3, "cpu").normal((batch, Z_DIM))
    tG = twins.load_minigen_weights(twins.DCGenerator(), G, torch_device)
    tD = twins.load_minigen_weights(twins.DCDiscriminator(), D, torch_device)
    opt_g, opt_d = make_adams(G, D)
    topt_g, topt_d = twins.gan_adams(tG, tD)
    ones, zeros = mg.ones(batch, 1, device=dev), mg.zeros(batch, 1, device=dev)
    tones, tzeros = twins.torch.ones(batch, 1, device=torch_device), twins.torch.zeros(batch, 1, device=torch_device)
    real, treal = mg.tensor(real_host, device=dev), twins.tensor(real_host, torch_device)

    def grads(tag, ours, theirs):
        tgrads = twins.grads_by_name(theirs)
        res = []
        for name, p in ours.named_parameters():
            scale = None
            if f"{tag}.{name}" in BIAS_BEFORE_BN:
                scale = float(np.linalg.norm(tgrads[name.replace("bias", "weight")]))
            res.append((f"grad {tag}.{name}", rel_err(p.grad.numpy(), tgrads[name], scale), GRAD_TOL))
        return res

    fake, tfake = G(mg.tensor(z_host, device=dev)), tG(twins.tensor(z_host, torch_device))
    opt_d.zero_grad()
    topt_d.zero_grad()
    loss_d, tloss_d = d_loss(D, real, fake, ones, zeros), twins.d_loss(tD, treal, tfake, tones, tzeros)
    loss_d.backward()
    tloss_d.backward()
    out = [("loss_D", rel_err(loss_d.item(), tloss_d.item()), 1e-5)] + grads("D", D, tD)

    before = {n: p.numpy().copy() for n, p in D.named_parameters()}
    opt_d.step()
    topt_d.step()
    tparams = dict(tD.named_parameters())
    moved_apart = total = 0
    for name, p in D.named_parameters():
        if f"D.{name}" in BIAS_BEFORE_BN:
            continue
        ours, theirs = p.numpy() - before[name], twins.to_numpy(tparams[name]) - before[name]
        moved_apart += int(np.sum(np.abs(ours - theirs) > 1e-6))
        total += ours.size
    out.append(("share of D weights Adam moved differently", moved_apart / total, 1e-3))

    twins.load_minigen_weights(tD, D, torch_device)  # the G stage starts from the same D
    opt_g.zero_grad()
    topt_g.zero_grad()
    loss_g, tloss_g = g_loss(D, fake, ones), twins.g_loss(tD, tfake, tones)
    loss_g.backward()
    tloss_g.backward()
    out += [("loss_G", rel_err(loss_g.item(), tloss_g.item()), 1e-5)] + grads("G", G, tG)
    tstate = {k: twins.to_numpy(v) for k, v in tG.state_dict().items()}
    for key, value in G.state_dict().items():
        if "running" in key:
            out.append((f"G.{key}", rel_err(value.numpy(), tstate[key]), 1e-4))
    return out
