"""Neural-network building blocks: ``Module``, ``Parameter``, containers, layers, ``init``.

    from minigen import nn
    net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))

    module.py     Parameter, Module (registration, modes, state_dict, save/load),
                  Sequential, ModuleList, ModuleDict, eval_mode
    layers.py     Linear, Conv2d, ConvTranspose2d, Embedding, Dropout, activations,
                  Identity, Flatten, Unflatten, Upsample
    norm.py       BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
    attention.py  MultiheadSelfAttention
    init.py       weight initialisation (``nn.init.kaiming_uniform_`` ...)

Names, constructor arguments, defaults, initialisation and state_dict keys follow
PyTorch's ``torch.nn``, so weights can be copied between the two libraries.
"""
from . import init
from .module import IncompatibleKeys, Module, ModuleDict, ModuleList, Parameter, Sequential, eval_mode
from .layers import (GELU, Conv2d, ConvTranspose2d, Dropout, Embedding, Flatten, Identity, LeakyReLU,
                     Linear, ReLU, Sigmoid, SiLU, Softplus, Tanh, Unflatten, Upsample)
from .norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from .attention import MultiheadSelfAttention
from .equalized import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm

__all__ = ["init", "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict", "IncompatibleKeys", "eval_mode",
           "Linear", "Conv2d", "ConvTranspose2d", "Embedding", "Dropout", "Identity", "Flatten", "Unflatten",
           "Upsample", "ReLU", "LeakyReLU", "SiLU", "GELU", "Tanh", "Sigmoid", "Softplus",
           "BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm", "MultiheadSelfAttention"]
