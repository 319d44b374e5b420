"""Model families of the notes, one file each (see DESIGN.md).

Classical latent-variable models (notes §1), fitted by hand-derived updates:
``PCA`` and ``PPCA`` (pca.py), ``GaussianMixture`` by EM (gmm.py);
the ``Autoencoder`` (autoencoder.py) is trained by the engine.
"""
from .autoencoder import Autoencoder
from .gmm import GaussianMixture
from .pca import PCA, PPCA

__all__ = ["PCA", "PPCA", "GaussianMixture", "Autoencoder"]
