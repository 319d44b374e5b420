"""The functional API: every differentiable op of minigen.

``import minigen.functional as F`` gives PyTorch-named functions (``F.relu``,
``F.conv2d``, ``F.mse_loss`` ...).  Each is a lowercase wrapper around one
``Function`` subclass whose forward and backward sit side by side in the module
of its kind:

    math.py       elementwise arithmetic and functions, activations, reductions,
                  logsumexp / softmax, clip / where / maximum / minimum, dropout
    shape.py      reshape, transpose / permute, getitem, concat / stack / split,
                  pad, broadcast_to / sum_to, embedding, one_hot
    linalg.py     matmul, linear
    conv.py       im2col, conv2d, conv_transpose2d, pooling, interpolate
    norm.py       batch_norm, group_norm, layer_norm
    losses.py     mse, binary cross-entropy with logits, cross-entropy, Gaussian NLL
    attention.py  scaled dot-product attention
"""
from .math import *  # noqa: F401,F403
from .shape import *  # noqa: F401,F403
from .linalg import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
