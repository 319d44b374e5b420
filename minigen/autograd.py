"""Reverse-mode automatic differentiation: ``Tensor``, ``Function`` and the graph walk.

The idea in four sentences
--------------------------
Every differentiable op is a ``Function`` subclass with a ``forward`` on raw arrays
and a ``backward`` on ``Tensor`` gradients.  Calling a Function on tensors runs
``forward`` and, when grad mode is on and some input requires grad, records the
Function as the ``creator`` of its outputs: that record is the graph.
``loss.backward()`` walks the graph from the loss towards the leaves, always taking
the Function with the highest ``generation`` next (a heap), so a Function runs
only once every consumer of its outputs has delivered its gradient.
Because ``backward`` is written with minigen ops, running the walk in grad mode
(``create_graph=True``) records the backward pass itself, and it can be
differentiated again (gradient penalties need that: WGAN-GP, R1).

Contract kept by the engine (so no op has to)
---------------------------------------------
* Broadcasting is undone here, once: when the gradient an op returns for an input
  has another shape than the input, the walk sums it back with ``sum_to``.
* Inputs of different devices or different floating dtypes are refused with a
  message that names the op (a float32 model fed float64 data would otherwise run
  at half speed without a word).
* After ``backward`` the graph is freed (saved arrays dropped) unless
  ``retain_graph=True``; intermediate gradients are never stored, only leaves get
  ``.grad`` (and tensors that asked with ``retain_grad()``).

References: DeZero (Saito, "Deep Learning from Scratch 3"), Chainer's
``FunctionNode``, PyTorch's autograd semantics.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import weakref

import numpy as np

from . import backend

# ----------------------------------------------------------------------------
# grad mode
# ----------------------------------------------------------------------------

_grad_enabled = True


def is_grad_enabled() -> bool:
    """Whether ops currently record the graph (False inside ``no_grad()``)."""
    return _grad_enabled


@contextlib.contextmanager
def set_grad_enabled(mode: bool):
    """Context manager that turns graph recording on or off inside its block."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, bool(mode)
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """``with mg.no_grad():`` runs ops without recording a graph (inference, updates)."""
    return set_grad_enabled(False)


def enable_grad():
    """``with mg.enable_grad():`` records again inside a ``no_grad`` block."""
    return set_grad_enabled(True)


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------

def _as_array(data, dtype=None, device=None):
    """Turn data (array, scalar, list, Tensor) into an array on ``device``."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.generic):
        data = np.asarray(data)  # a NumPy scalar keeps its dtype, like a 0-d array
    if device is None:
        device = backend.device_of(data) if backend.is_array(data) else backend.get_default_device()
    xp = backend.get_array_module(device)
    if dtype is None and not backend.is_array(data):
        # Python numbers and lists become the default float dtype unless they are
        # clearly integer/boolean (labels, indices).
        probe = np.asarray(data)
        dtype = probe.dtype if probe.dtype.kind in "biu" else backend.get_default_dtype()
    if backend.is_array(data):   # already on ``device``: no to_device call (nothing to copy, nothing counted)
        array = data if backend.device_of(data) == device else backend.to_device(data, device)
    else:
        array = xp.asarray(data, dtype=dtype)
    if dtype is not None and array.dtype != np.dtype(dtype):
        array = array.astype(dtype)
    return array


class Tensor:
    """An array with a place in the autodiff graph.

    Attributes
    ----------
    data : the NumPy or CuPy array.
    grad : a Tensor of the same shape, filled in by ``backward`` (leaves only).
    creator : the Function that made this tensor (None for leaves).
    requires_grad : whether gradients should flow to it.
    generation : depth in the graph; the walk processes higher generations first.
    """

    __slots__ = ("data", "grad", "creator", "requires_grad", "generation",
                 "_out_idx", "_retain_grad", "name", "__weakref__")
    # NumPy must let ``np_scalar * tensor`` call Tensor.__rmul__ instead of
    # treating the tensor as an object array.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None, name=None):
        if dtype is None and device is None and (type(data) is np.ndarray or backend.is_array(data)):
            self.data = data
        else:
            self.data = _as_array(data, dtype, device)
        self.grad = None
        self.creator = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require gradients, got dtype {self.data.dtype}")
        self.generation = 0
        self._out_idx = 0
        self._retain_grad = False
        self.name = name

    # --- what it is --------------------------------------------------------
    @property
    def shape(self):
        """The tuple of dimension sizes, e.g. (B, C, H, W)."""
        return self.data.shape

    @property
    def ndim(self):
        """The number of dimensions."""
        return self.data.ndim

    @property
    def size(self):
        """The total number of elements (a property, unlike PyTorch's ``size()``)."""
        return self.data.size

    @property
    def dtype(self):
        """The NumPy dtype of the data."""
        return self.data.dtype

    @property
    def device(self) -> str:
        """"cpu" or "gpu": where the data lives."""
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """True when no op created this tensor (user data, parameters, detached tensors)."""
        return self.creator is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = repr(backend.to_numpy(self.data)).replace("array(", "tensor(", 1)
        extras = []
        if self.device != "cpu":
            extras.append(f"device='{self.device}'")
        if self.creator is not None:
            extras.append(f"grad_fn={type(self.creator).__name__}")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return body[:-1] + (", " + ", ".join(extras) if extras else "") + ")"

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        backend.note_read()   # a device value steering Python: a round trip on the GPU
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __hash__(self):
        return id(self)

    # --- conversions ---------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A host NumPy array (a copy when the tensor lives on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        """The Python number held by a one-element tensor."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a one-element tensor, got shape {self.shape}")
        backend.note_read()   # counted by backend.count_transfers (one device -> host copy on the GPU)
        return self.data.reshape(()).item()

    def tolist(self):
        """The values as nested Python lists (a number for a 0-d tensor)."""
        return self.numpy().tolist()

    def to(self, device=None, dtype=None) -> "Tensor":
        """The same values on another device and/or dtype, differentiably."""
        out = self
        if dtype is not None and np.dtype(dtype) != self.dtype:
            out = F.astype(out, dtype)
        if device is not None and backend.check_device(device) != self.device:
            out = F.to_device(out, device)
        return out

    def cpu(self):
        """This tensor on the host, differentiably (itself if already there)."""
        return self.to("cpu")

    def gpu(self):
        """This tensor on the GPU, differentiably (itself if already there)."""
        return self.to("gpu")

    def float(self):
        """This tensor as float32, differentiably."""
        return self.to(dtype=np.float32)

    def double(self):
        """This tensor as float64, differentiably."""
        return self.to(dtype=np.float64)

    def astype(self, dtype):
        """This tensor as floating ``dtype``, differentiably."""
        return self.to(dtype=dtype)

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, cut off from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True) -> "Tensor":
        """Mark a leaf as needing gradients (in place); returns self."""
        if not self.is_leaf and not mode:
            raise RuntimeError("cannot turn off requires_grad on a non-leaf tensor; use detach()")
        if mode and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = bool(mode)
        return self

    def retain_grad(self) -> "Tensor":
        """Ask the walk to store this non-leaf tensor's gradient in ``.grad``."""
        self._retain_grad = True
        return self

    def zero_grad(self):
        """Forget the accumulated gradient (``.grad = None``)."""
        self.grad = None

    # --- autodiff ------------------------------------------------------------
    def backward(self, gradient=None, retain_graph: bool = False, create_graph: bool = False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is the upstream gradient (needed unless self has one element).
        ``retain_graph`` keeps the graph for another backward; ``create_graph``
        records the backward pass so the gradients can be differentiated again.
        """
        run_backward([self], [gradient], retain_graph=retain_graph or create_graph,
                     create_graph=create_graph)

    # --- operators (all delegate to minigen.functional) ----------------------
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pow__(self, exponent):
        return F.pow(self, exponent)

    def __rpow__(self, base):
        return F.pow(base, self)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __abs__(self):
        return F.abs(self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    # Comparisons give boolean tensors outside the graph (they have no gradient).
    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def eq(self, other):
        """Elementwise ``self == other`` as a boolean tensor, outside the graph; broadcast shape."""
        return self._compare(other, lambda a, b: a == b)

    def ne(self, other):
        """Elementwise ``self != other`` as a boolean tensor, outside the graph; broadcast shape."""
        return self._compare(other, lambda a, b: a != b)

    # --- methods (thin wrappers, so ``x.exp().sum()`` reads like PyTorch) -----
    def exp(self):
        """``F.exp(self, ...)`` as a method; see there for the shapes."""
        return F.exp(self)

    def log(self):
        """``F.log(self, ...)`` as a method; see there for the shapes."""
        return F.log(self)

    def sqrt(self):
        """``F.sqrt(self, ...)`` as a method; see there for the shapes."""
        return F.sqrt(self)

    def abs(self):
        """``F.abs(self, ...)`` as a method; see there for the shapes."""
        return F.abs(self)

    def tanh(self):
        """``F.tanh(self, ...)`` as a method; see there for the shapes."""
        return F.tanh(self)

    def sigmoid(self):
        """``F.sigmoid(self, ...)`` as a method; see there for the shapes."""
        return F.sigmoid(self)

    def relu(self):
        """``F.relu(self, ...)`` as a method; see there for the shapes."""
        return F.relu(self)

    def clip(self, min=None, max=None):  # noqa: A002 (PyTorch's names)
        """``F.clip(self, min, max)`` as a method (also called ``clamp``)."""
        return F.clip(self, min, max)

    clamp = clip

    def sum(self, dim=None, keepdim=False):
        """``F.sum(self, ...)`` as a method; see there for the shapes."""
        return F.sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        """``F.mean(self, ...)`` as a method; see there for the shapes."""
        return F.mean(self, dim, keepdim)

    def var(self, dim=None, keepdim=False, unbiased=True):
        """``F.var(self, ...)`` as a method; see there for the shapes."""
        return F.var(self, dim, keepdim, unbiased)

    def max(self, dim=None, keepdim=False):
        """``F.max(self, ...)`` as a method; see there for the shapes."""
        return F.max(self, dim, keepdim)

    def min(self, dim=None, keepdim=False):
        """``F.min(self, ...)`` as a method; see there for the shapes."""
        return F.min(self, dim, keepdim)

    def argmax(self, dim=None):
        """Indices of the largest values along ``dim`` (flat index when None); an int tensor, no graph."""
        return Tensor(self.data.argmax(axis=dim))

    def logsumexp(self, dim=None, keepdim=False):
        """``F.logsumexp(self, ...)`` as a method; see there for the shapes."""
        return F.logsumexp(self, dim, keepdim)

    def softmax(self, dim=-1):
        """``F.softmax(self, ...)`` as a method; see there for the shapes."""
        return F.softmax(self, dim)

    def log_softmax(self, dim=-1):
        """``F.log_softmax(self, ...)`` as a method; see there for the shapes."""
        return F.log_softmax(self, dim)

    def reshape(self, *shape):
        """``F.reshape`` as a method; takes ints or one tuple (also called ``view``)."""
        return F.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        """``F.flatten(self, ...)`` as a method; see there for the shapes."""
        return F.flatten(self, start_dim, end_dim)

    def transpose(self, dim0=None, dim1=None):
        """``F.transpose(self, ...)`` as a method; see there for the shapes."""
        return F.transpose(self, dim0, dim1)

    def permute(self, *dims):
        """``F.permute`` as a method; takes the axes as ints or one tuple."""
        return F.permute(self, dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)

    @property
    def T(self):
        """The tensor with all its axes reversed ((A, B) -> (B, A) for a matrix)."""
        return F.permute(self, tuple(reversed(range(self.ndim))))

    def unsqueeze(self, dim):
        """``F.unsqueeze(self, ...)`` as a method; see there for the shapes."""
        return F.unsqueeze(self, dim)

    def squeeze(self, dim=None):
        """``F.squeeze(self, ...)`` as a method; see there for the shapes."""
        return F.squeeze(self, dim)

    def split(self, split_size_or_sections, dim=0):
        """``F.split(self, ...)`` as a method; see there for the shapes."""
        return F.split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0):
        """``F.chunk(self, ...)`` as a method; see there for the shapes."""
        return F.chunk(self, chunks, dim)

    def broadcast_to(self, *shape):
        """``F.broadcast_to`` as a method; takes ints or one tuple (also called ``expand``)."""
        return F.broadcast_to(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    expand = broadcast_to

    def sum_to(self, shape):
        """``F.sum_to(self, ...)`` as a method; see there for the shapes."""
        return F.sum_to(self, shape)


# ----------------------------------------------------------------------------
# Function
# ----------------------------------------------------------------------------

class Function:
    """Base class of every differentiable op.

    Subclasses implement
        ``forward(self, *arrays) -> array | tuple of arrays``   (raw xp arrays)
        ``backward(self, *grads) -> Tensor | None | tuple``     (minigen Tensors)
    ``backward`` gets one gradient per output (None for an output that received
    none) and returns one gradient per input (None where the input needs none;
    ``self.inputs[i].requires_grad`` says which).  It may use ``self.inputs``
    (the input Tensors) and ``self.output(i)`` (the i-th output Tensor), and any
    arrays ``forward`` saved on ``self``.  It must be written with minigen ops so
    that it can itself be differentiated.  ``self.recording`` (set before ``forward``)
    says whether a graph is being recorded; when it is False, backward will never run
    and ``forward`` need not save anything for it.
    """

    generation = 0
    inputs = ()
    recording = True   # until __call__ says otherwise, a forward saves what backward needs

    def __call__(self, *inputs):
        xs = [x if isinstance(x, Tensor) else None for x in inputs]
        ref = next((x for x in xs if x is not None), None)
        if ref is None:
            raise TypeError(f"{type(self).__name__} needs at least one Tensor input")
        if None in xs:  # Python numbers become constants of the tensors' dtype and device
            xs = [x if x is not None else _constant_like(v, ref, type(self).__name__)
                  for x, v in zip(xs, inputs)]
        _check_inputs(self, xs)

        # whether a graph is being recorded: when not, forward may skip saving what only backward needs
        self.recording = _grad_enabled and any(x.requires_grad for x in xs)
        outputs = self.forward(*[x.data for x in xs])
        single = not isinstance(outputs, tuple)
        if single:
            outputs = (outputs,)
        kind = type(ref.data)
        # reductions may hand back NumPy scalars: keep every output an array
        outs = [Tensor(y if type(y) is kind else backend.xp_of(ref.data).asarray(y)) for y in outputs]

        if self.recording:
            self.generation = max(x.generation for x in xs)
            self.inputs = xs
            self.outputs = [weakref.ref(o) for o in outs]
            for i, o in enumerate(outs):
                o.creator = self
                o.requires_grad = True
                o.generation = self.generation + 1
                o._out_idx = i
        return outs[0] if single else tuple(outs)

    def output(self, i: int = 0) -> Tensor:
        """The i-th output Tensor (alive whenever a gradient arrives for it)."""
        out = self.outputs[i]()
        if out is None:
            raise RuntimeError(f"{type(self).__name__}: output {i} no longer exists")
        return out

    def forward(self, *xs):  # pragma: no cover - always overridden
        """The op's outputs from raw arrays (the inputs' ``.data``): one array or a tuple of arrays."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *gys):  # pragma: no cover - always overridden
        """One gradient per input from one per output (None where none), written in minigen ops."""
        raise NotImplementedError(f"{type(self).__name__}.backward")


def _check_inputs(fn, xs):
    """Refuse mixed devices and mixed floating dtypes, naming the op."""
    first = xs[0].data
    kind = type(first)
    dtype = None
    for x in xs:
        d = x.data
        if type(d) is not kind:
            devices = sorted({x.device for x in xs})
            raise RuntimeError(f"{type(fn).__name__}: inputs are on different devices "
                               f"({' and '.join(devices)}); move them with .to(device) first")
        if d.dtype.kind == "f":
            if dtype is None:
                dtype = d.dtype
            elif d.dtype != dtype:
                dts = sorted({str(x.dtype) for x in xs if x.dtype.kind == "f"})
                raise TypeError(f"{type(fn).__name__}: inputs have different dtypes ({' and '.join(dts)}); "
                                f"convert one with .to(dtype=...) (e.g. x.float())")


def _constant_like(value, ref: Tensor, opname: str) -> Tensor:
    """A Python number as a constant tensor in ``ref``'s dtype and device."""
    if not isinstance(value, (int, float, bool, np.number)):
        raise TypeError(f"{opname}: unsupported operand of type {type(value).__name__}")
    dtype = ref.dtype if ref.dtype.kind == "f" or isinstance(value, (int, bool, np.integer)) \
        else backend.get_default_dtype()
    return Tensor(backend.xp_of(ref.data).asarray(value, dtype=dtype))


def check_floating(op: str, **tensors) -> None:
    """Refuse integer and boolean Tensors given to an op that computes in floating point.

    ``tensors`` maps argument names to values; non-Tensors are skipped (the op
    refuses those itself).  Without this, NumPy would promote, say, uint8 images
    times a float32 weight to float64 and the error would surface far away.
    """
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.dtype.kind != "f":
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, but this op needs floating tensors; "
                             f"convert it first (e.g. x.float(), and / 255 for uint8 images)")


# ----------------------------------------------------------------------------
# the graph walk
# ----------------------------------------------------------------------------

_tiebreak = itertools.count()


def run_backward(outputs, grad_outputs, retain_graph=False, create_graph=False, inputs=None,
                 allow_unused=False):
    """Walk the graph from ``outputs`` and deliver gradients.

    With ``inputs=None`` gradients accumulate into the ``.grad`` of leaves (and of
    tensors that called ``retain_grad``).  With a list of ``inputs`` the function
    returns their gradients and leaves every ``.grad`` untouched (``mg.grad``).
    """
    roots, root_grads = [], []
    for y, gy in zip(outputs, grad_outputs):
        if not isinstance(y, Tensor):
            raise TypeError(f"backward: expected Tensors as outputs, got {type(y).__name__}")
        if not y.requires_grad:
            raise RuntimeError("backward: a tensor that does not require grad has no graph to walk "
                               "(did you compute it under no_grad(), or from tensors without requires_grad?)")
        if gy is None:
            if y.data.size != 1:
                raise RuntimeError(f"backward: gradient can only be implied for a one-element output, "
                                   f"but the output has shape {y.shape}; pass gradient= of that shape")
            gy = Tensor(backend.xp_of(y.data).ones(y.shape, dtype=y.dtype))
        else:
            gy = gy if isinstance(gy, Tensor) else Tensor(_as_array(gy, y.dtype, y.device))
            if gy.shape != y.shape:
                raise ValueError(f"backward: gradient has shape {gy.shape} but the output has shape {y.shape}")
        roots.append(y)
        root_grads.append(gy)

    wanted = None
    needed = None
    if inputs is not None:
        wanted = {id(x): None for x in inputs}
        needed = _functions_leading_to(roots, wanted)

    pending = {}  # Function -> [grads per output, outputs kept alive until it runs]
    heap = []

    def deliver(x: Tensor, g: Tensor):
        if wanted is not None and id(x) in wanted:
            wanted[id(x)] = g if wanted[id(x)] is None else wanted[id(x)] + g
        f = x.creator
        if f is None:  # a leaf
            if wanted is None and x.requires_grad:
                x.grad = g if x.grad is None else x.grad + g
            return
        if wanted is None and x._retain_grad:
            x.grad = g if x.grad is None else x.grad + g
        if needed is not None and f not in needed:
            return
        if getattr(f, "_freed", False):
            raise RuntimeError(
                f"backward through {type(f).__name__} a second time: its graph was freed by the "
                "previous backward. Pass retain_graph=True to the first backward if you need two.")
        entry = pending.get(f)
        if entry is None:
            n = len(f.outputs)
            entry = pending[f] = [[None] * n, [None] * n]
            heapq.heappush(heap, (-f.generation, next(_tiebreak), f))
        grads, alive = entry
        i = x._out_idx
        grads[i] = g if grads[i] is None else grads[i] + g
        alive[i] = x

    with set_grad_enabled(create_graph):
        for y, gy in zip(roots, root_grads):
            deliver(y, gy)
        while heap:
            _, _, f = heapq.heappop(heap)
            grads, _alive = pending.pop(f)
            gxs = f.backward(*grads)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            if len(gxs) != len(f.inputs):
                raise RuntimeError(f"{type(f).__name__}.backward returned {len(gxs)} gradients "
                                   f"for {len(f.inputs)} inputs")
            for x, gx in zip(f.inputs, gxs):
                if gx is None or not x.requires_grad:
                    continue
                if gx.shape != x.shape:  # undo broadcasting, once, here
                    gx = F.sum_to(gx, x.shape)
                deliver(x, gx)
            if not retain_graph:
                gen = f.generation
                vars(f).clear()  # drop inputs, outputs and saved arrays
                f._freed = True
                f.generation = gen
            del grads, _alive

    if wanted is None:
        return None
    result = []
    for x in inputs:
        g = wanted[id(x)]
        if g is None and not allow_unused:
            raise RuntimeError("grad: one of the inputs was not used to compute the outputs "
                               "(pass allow_unused=True to get None for it)")
        result.append(g)
    return tuple(result)


def _functions_leading_to(roots, wanted_ids):
    """The Functions from which some wanted tensor can be reached (iterative DFS)."""
    leads = {}
    stack = [(y.creator, False) for y in roots if y.creator is not None]
    while stack:
        f, expanded = stack.pop()
        if f in leads and not expanded:
            continue
        parents = [x for x in f.inputs if x.requires_grad] if hasattr(f, "inputs") else []
        if not expanded:
            leads[f] = None  # visiting
            stack.append((f, True))
            stack.extend((x.creator, False) for x in parents
                         if x.creator is not None and x.creator not in leads)
        else:
            leads[f] = any(id(x) in wanted_ids or (x.creator is not None and leads.get(x.creator))
                           for x in parents)
    return {f for f, ok in leads.items() if ok}


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned, not stored.

    ``mg.grad(loss, [x])`` -> ``(dloss/dx,)``.  With ``create_graph=True`` the
    result is itself differentiable (e.g. the R1 penalty ``|grad D(x)|^2``).
    ``.grad`` attributes are not touched.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    if retain_graph is None:
        retain_graph = create_graph
    for x in inputs:
        if not isinstance(x, Tensor) or not x.requires_grad:
            raise RuntimeError("grad: every input must be a Tensor that requires grad")
    return run_backward(outputs, grad_outputs, retain_graph=retain_graph, create_graph=create_graph,
                        inputs=inputs, allow_unused=allow_unused)


# The functional API is imported last: its modules import Tensor and Function
# from here, and the Tensor methods above look their ops up in it at call time.
from . import functional as F  # noqa: E402
