"""The model families a run can train, by name: one explicit table.

    python -m minigen list          # prints this table with each family's description

Each entry is a ``Recipe`` subclass (``minigen/families/base.py``) from the
family's module here; the model it trains lives in ``minigen/models/``.
Nothing registers itself on import: a family exists when it is in ``FAMILIES``.
An extension adds its own with ``register(MyRecipe)``.
"""
from __future__ import annotations

from .autoencoder import AutoencoderRecipe
from .base import NonFiniteLossError, Recipe, RunConfig, TrainingError, make_config
from .diffusion import ConditionalDDPMRecipe, ConditionalDiTRecipe, DDPMRecipe, DiTRecipe
from .gan import CGANRecipe, DCGANRecipe, GANRecipe
from .lapgan import ConditionalLAPGANRecipe, LAPGANRecipe
from .ldm import ConditionalLDMRecipe, LDMRecipe
from .progan import ProGANRecipe
from .stylegan import StyleGANRecipe
from .vae import ConvVAERecipe, CVAERecipe, VAERecipe

__all__ = ["FAMILIES", "families", "get_family", "register", "Recipe", "RunConfig", "TrainingError",
           "NonFiniteLossError", "make_config"]

FAMILIES = {recipe.name: recipe for recipe in [
    AutoencoderRecipe,                                          # notes §1
    VAERecipe, ConvVAERecipe, CVAERecipe,                       # notes §2, §4
    GANRecipe, DCGANRecipe, CGANRecipe,                         # notes §3 - §3.3, §4.1
    LAPGANRecipe, ConditionalLAPGANRecipe,                      # notes §3.3 (LAPGAN), §4.1
    ProGANRecipe,                                               # notes §3.3 (Progressive GAN)
    StyleGANRecipe,                                             # notes §3.3 (StyleGAN)
    DDPMRecipe, DiTRecipe, ConditionalDDPMRecipe, ConditionalDiTRecipe,   # notes §5, §4 + §5
    LDMRecipe, ConditionalLDMRecipe,                            # notes §5.6 - §5.7 (latent diffusion)
]}


def register(recipe_cls):
    """Add a family of your own to the table (usable as a class decorator); returns the class."""
    if not (isinstance(recipe_cls, type) and issubclass(recipe_cls, Recipe)):
        raise TypeError("register expects a Recipe subclass")
    FAMILIES[recipe_cls.name] = recipe_cls
    return recipe_cls


def families() -> dict:
    """The known families, name -> Recipe class, sorted by name."""
    return dict(sorted(FAMILIES.items()))


def get_family(name):
    """The Recipe class of a family name (a Recipe class is returned as it is)."""
    if isinstance(name, type) and issubclass(name, Recipe):
        return name
    if name not in FAMILIES:
        import difflib

        close = difflib.get_close_matches(str(name), list(FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TrainingError(f"unknown family {name!r}{hint}; known families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
