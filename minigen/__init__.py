"""minigen: a from-scratch engine for generative models on NumPy (CPU) and CuPy (GPU).

    import minigen as mg
    from minigen import nn, optim
    import minigen.functional as F

The layers, bottom to top: ``backend`` (arrays and devices), ``autograd``
(Tensor, Function, the graph walk), ``functional`` (every differentiable op),
``nn`` and ``optim``, then ``distributions``, ``models``, ``data``, ``metrics``.
"""
from . import backend
from .backend import (Generator, default_generator, get_default_device, get_default_dtype,
                      gpu_available, manual_seed, set_default_device, set_default_dtype)
from .autograd import (Function, Tensor, enable_grad, grad, is_grad_enabled, no_grad,
                       set_grad_enabled)
from . import functional
from .creation import *  # noqa: F401,F403
from .functional import (cat, chunk, clamp, clip, concat, erf, exp, log, log_softmax, logsumexp,  # noqa: F401
                         matmul, maximum, mean, minimum, reshape, sigmoid, softmax, split, sqrt, stack,
                         sum, tanh, var, where)
from . import nn, optim  # noqa: F401,E402

__version__ = "0.1.0"


def __getattr__(name):
    # ``minigen.load_run(RUN_DIR)`` opens a trained run; imported on first use, so that
    # ``import minigen`` stays the engine alone
    if name == "load_run":
        from .evaluate import load_run
        return load_run
    raise AttributeError(f"module 'minigen' has no attribute {name!r}")
