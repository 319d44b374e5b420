"""Model families of the notes, one file (or, for diffusion, one package) each (see DESIGN.md).

Classical latent-variable models (notes §1), fitted by hand-derived updates:
``PCA`` and ``PPCA`` (pca.py), ``GaussianMixture`` by EM (gmm.py);
the ``Autoencoder`` (autoencoder.py) is trained by the engine.
"""
from .autoencoder import Autoencoder
from .gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from .gmm import GaussianMixture, PCAGaussianMixture
from .pca import PCA, PPCA
from .vae import VAE, Decoder, Encoder

__all__ = ["PCA", "PPCA", "GaussianMixture", "Autoencoder", "MLPGenerator", "MLPDiscriminator", "DCGANGenerator", "DCGANDiscriminator"]
__all__ += ["VAE", "Encoder", "Decoder", "PCAGaussianMixture"]
from . import diffusion  # noqa: E402  (registers ddpm, dit, cddpm, cdit)
from .diffusion import DiT, GaussianDiffusion, UNet  # noqa: E402

__all__ += ["GaussianDiffusion", "UNet", "DiT"]
