"""``Parameter``, ``Module`` and the containers ``Sequential``, ``ModuleList``, ``ModuleDict``.

A ``Module`` is a tree: it owns parameters (tensors an optimizer updates),
buffers (tensors that are state but not trained, e.g. BatchNorm's running
statistics) and child modules.  Assigning an attribute files the value in the
right place:

    self.fc = nn.Linear(4, 3)        -> a child module, named "fc"
    self.scale = nn.Parameter(...)   -> a parameter, named "scale"
    self.register_buffer("count", t) -> a buffer, named "count"

Each kind lives in an insertion-ordered dict, so ``parameters()`` always lists
the same tensors in the same order, and ``named_parameters()`` /
``state_dict()`` produce PyTorch's dotted names (``"net.0.weight"``): a reader
can copy weights between a minigen module and the PyTorch module of the same
structure key by key.

``state_dict()`` returns *copies* of the arrays (a snapshot: training on does
not change it; PyTorch hands back views instead).  ``save(path)`` writes them
to an ``.npz`` file atomically and ``load(path)`` reads them back without
pickle, so a file can never run code.
"""
from __future__ import annotations

import collections
import contextlib
import os
import zipfile

import numpy as np

from .. import backend
from ..checkpoint import atomic_write_bytes
from ..autograd import Tensor

__all__ = ["Parameter", "Module", "Sequential", "ModuleList", "ModuleDict", "IncompatibleKeys", "eval_mode"]


class Parameter(Tensor):
    """A Tensor that a ``Module`` registers as trainable (``requires_grad=True``).

    ``Parameter(data)`` wraps an array or a Tensor's array (no copy).  Ops on a
    Parameter give ordinary Tensors; only the leaf itself is a Parameter.
    """

    __slots__ = ()  # Tensor uses __slots__; an empty tuple keeps instances dict-free

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _indent(text: str, spaces: int) -> str:
    """Indent every line of ``text`` but the first (for nested reprs)."""
    lines = text.split("\n")
    return "\n".join(lines[:1] + [" " * spaces + line for line in lines[1:]])


class Module:
    """Base class of every layer and model.

    Subclasses call ``super().__init__()`` first, assign their parameters,
    buffers and sub-modules as attributes, and implement ``forward``;
    ``module(x)`` calls ``forward(x)``.
    """

    def __init__(self):
        # object.__setattr__: these dicts must exist before our __setattr__ can file anything
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})

    def forward(self, *args, **kwargs):
        """The module's computation; ``module(*args)`` calls it.  Subclasses override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # --- registration ----------------------------------------------------------
    def _dicts(self):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                 "parameters, buffers or sub-modules")
        return d["_parameters"], d["_buffers"], d["_modules"]

    def __setattr__(self, name, value):
        if isinstance(value, (Parameter, Module)):
            params, buffers, modules = self._dicts()
            target = params if isinstance(value, Parameter) else modules
            for store in (params, buffers, modules):   # a name lives in one place only
                if store is not target:
                    store.pop(name, None)
            self.__dict__.pop(name, None)
            self._non_persistent.discard(name)
            target[name] = value                       # a reassigned name keeps its place in the order
            return
        d = self.__dict__
        if name in d.get("_parameters", ()):
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} to parameter '{name}' of "
                                f"{type(self).__name__}: use nn.Parameter(...) or None "
                                f"(or change the values in place through .data)")
            d["_parameters"][name] = None
        elif name in d.get("_modules", ()):
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} to sub-module '{name}' of "
                                f"{type(self).__name__}: a Module or None is expected")
            d["_modules"][name] = None
        elif name in d.get("_buffers", ()):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign a {type(value).__name__} to buffer '{name}' of "
                                f"{type(self).__name__}: a Tensor or None is expected")
            d["_buffers"][name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: look in the three registries
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if name in d.get(store, ()):
                del d[store][name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def register_parameter(self, name: str, param) -> None:
        """Add a parameter (or None, a placeholder such as a missing bias) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter('{name}'): expected a Parameter or None, "
                            f"got {type(param).__name__}")
        if param is None:
            params, _, _ = self._dicts()
            self.__dict__.pop(name, None)
            params[name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Add a buffer: state that is saved and moved with the module but not trained.

        ``persistent=False`` keeps it out of ``state_dict()`` (e.g. a cached table
        that can be rebuilt).
        """
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer('{name}'): expected a Tensor or None, got {type(tensor).__name__}")
        if "." in name or not name:
            raise KeyError(f"register_buffer: bad buffer name {name!r}")
        params, buffers, modules = self._dicts()
        if name in params or name in modules:
            raise KeyError(f"register_buffer: '{name}' is already a parameter or sub-module")
        self.__dict__.pop(name, None)
        buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module) -> None:
        """Add a child module under ``name`` (names like "0" that are not identifiers work too)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module('{name}'): expected a Module or None, got {type(module).__name__}")
        if "." in str(name) or str(name) == "":
            raise KeyError(f"add_module: bad module name {name!r}")
        params, buffers, modules = self._dicts()
        params.pop(str(name), None)
        buffers.pop(str(name), None)
        modules[str(name)] = module

    # --- walking the tree ---------------------------------------------------------
    def named_modules(self, memo=None, prefix: str = ""):
        """(dotted name, module) for this module and every descendant, parents first.

        A module reachable by two paths is listed once (the first path).
        """
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """Every module in the tree, self first, each once."""
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        """(name, module) for each direct submodule, each once."""
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        """Each direct submodule, once."""
        for _, child in self.named_children():
            yield child

    def _named_members(self, store: str, recurse: bool):
        seen = set()
        walk = self.named_modules() if recurse else [("", self)]
        for prefix, module in walk:
            for name, t in getattr(module, store).items():
                if t is None or id(t) in seen:  # shared tensors are listed once
                    continue
                seen.add(id(t))
                yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) pairs, e.g. ("net.0.weight", W): own ones, then children's."""
        for name, p in self._named_members("_parameters", recurse):
            yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self, recurse: bool = True):
        """Every parameter (of submodules too when ``recurse``), each once, in registration order."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        """(dotted name, tensor) for every buffer (of submodules too when ``recurse``)."""
        for name, b in self._named_members("_buffers", recurse):
            yield (f"{prefix}.{name}" if prefix else name), b

    def buffers(self, recurse: bool = True):
        """Every buffer (of submodules too when ``recurse``), each once."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """Call ``fn(module)`` on every child (recursively), then on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # --- modes -----------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Set training mode on this module and all descendants; returns self.

        A plain setter (as in PyTorch).  To switch to evaluation for a block and
        restore the modes afterwards, use ``with nn.eval_mode(model): ...``.
        """
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode): mode must be a bool, got {type(mode).__name__}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Evaluation mode: Dropout is off, BatchNorm uses its running statistics.  Returns self."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (False) or unfreeze (True) every parameter; returns self."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True):
        """Forget the gradients of every parameter (None, or zeros with set_to_none=False)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:  # a fresh array: a .grad may share memory with another tensor's
                p.grad = Tensor(backend.xp_of(p.data).zeros_like(p.data))

    # --- devices and dtypes -------------------------------------------------------------
    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to ``device`` and/or cast the floating ones to ``dtype``.

        Works in place: each Parameter stays the same object (only its ``.data``
        changes), so an optimizer built before the move still holds the right
        tensors.  ``model.to("gpu")``, ``model.to(dtype=np.float64)``,
        ``model.to(np.float64)``.  Returns self.
        """
        if device is not None and not isinstance(device, str):
            device, dtype = None, device  # model.to(np.float64)
        device = backend.check_device(device) if device is not None else None
        dtype = np.dtype(dtype) if dtype is not None else None
        if dtype is not None and dtype.kind != "f":
            raise TypeError(f"Module.to: dtype must be floating, got {dtype}")

        def convert(array):
            if device is not None:
                array = backend.to_device(array, device)
            if dtype is not None and array.dtype.kind == "f" and array.dtype != dtype:
                array = array.astype(dtype)
            return array

        for m in self.modules():
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is None:
                    continue
                t.data = convert(t.data)
                if t.grad is not None:
                    t.grad = Tensor(convert(t.grad.data))
        return self

    def cpu(self):
        """Move every parameter and buffer to the host, in place; returns self."""
        return self.to("cpu")

    def gpu(self):
        """Move every parameter and buffer to the GPU, in place; returns self."""
        return self.to("gpu")

    def float(self):
        """Convert every floating parameter and buffer to float32, in place; returns self."""
        return self.to(dtype=np.float32)

    def double(self):
        """Convert every floating parameter and buffer to float64, in place; returns self."""
        return self.to(dtype=np.float64)

    # --- state -------------------------------------------------------------------------
    def _state_items(self):
        """(key, tensor) for every parameter and persistent buffer, PyTorch's order and names."""
        for prefix, module in self.named_modules():
            lead = prefix + "." if prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    yield lead + name, p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    yield lead + name, b

    def state_dict(self) -> dict:
        """{dotted name: Tensor} of parameters and persistent buffers, as copies (a snapshot).

        Keys and shapes match the PyTorch module of the same structure, e.g.
        ``"0.weight"``, ``"bn.running_mean"``, ``"bn.num_batches_tracked"``.
        """
        return collections.OrderedDict(
            (key, Tensor(backend.xp_of(t.data).array(t.data, copy=True))) for key, t in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (Tensors or arrays) into the module's tensors in place.

        Every key, shape and dtype is checked, and every value converted, before
        anything is copied, so a failed load leaves the module as it was.  ``strict=True`` (default) refuses
        missing and unexpected keys; shape mismatches are always refused.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got {type(state_dict).__name__}")
        mine = dict(self._state_items())
        missing = [k for k in mine if k not in state_dict]
        unexpected = [k for k in state_dict if k not in mine]
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(repr(k) for k in missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(repr(k) for k in unexpected))
        values = {}
        for key, t in mine.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            value = value.data if isinstance(value, Tensor) else value
            if not hasattr(value, "shape"):  # a Python number or list
                value = np.asarray(value)
            shape = tuple(value.shape)
            kind = getattr(getattr(value, "dtype", None), "kind", "O")
            if shape != t.shape:
                problems.append(f"shape mismatch for {key!r}: the file has {shape}, "
                                f"the module has {tuple(t.shape)}")
            elif kind not in "biuf":
                problems.append(f"{key!r} holds {getattr(value, 'dtype', type(value).__name__)}, not numbers")
            else:
                # convert every entry before the first copy: a failure here leaves the module untouched
                try:
                    values[key] = backend.to_device(value, t.device).astype(t.dtype, copy=False)
                except (TypeError, ValueError) as exc:
                    problems.append(f"{key!r} cannot be converted to {t.dtype} on {t.device}: {exc}")
        if problems:
            raise RuntimeError(f"load_state_dict into {type(self).__name__} failed:\n  " + "\n  ".join(problems))
        for key, value in values.items():
            mine[key].data[...] = value
        return IncompatibleKeys(missing, unexpected)

    def save(self, path) -> None:
        """Write ``state_dict()`` to ``path`` as an .npz file, atomically.

        The file is written under a temporary name in the same directory, flushed
        to disk, then renamed over ``path`` in one step (``os.replace``): a crash
        mid-write leaves any previous file at ``path`` intact.
        """
        arrays = {key: backend.to_numpy(t.data) for key, t in self._state_items()}
        atomic_write_bytes(path, lambda f: np.savez(f, **arrays))

    def load(self, path, strict: bool = True) -> IncompatibleKeys:
        """Load a file written by ``save`` into this module (``allow_pickle=False``)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{type(self).__name__}.load: no such file: {path}")
        what = f"{type(self).__name__}.load: {path} is not a readable .npz weights file"
        try:
            npz = np.load(path, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not named arrays")
            with npz:
                state = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{what} ({type(exc).__name__}: {exc})") from None
        try:
            return self.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise RuntimeError(f"{path}: {exc}") from None

    # --- printing ------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside the parentheses of this module's repr (its settings)."""
        return ""

    def __repr__(self):
        lines = self.extra_repr().split("\n") if self.extra_repr() else []
        children = [f"({name}): {_indent(repr(m), 2)}" for name, m in self._modules.items()]
        if not children and len(lines) <= 1:
            return f"{type(self).__name__}({''.join(lines)})"
        body = "\n  ".join(lines + children)
        return f"{type(self).__name__}(\n  {body}\n)"


# ----------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def eval_mode(*modules):
    """``with nn.eval_mode(model): ...`` runs the block in evaluation mode, then restores every mode.

    Each submodule gets back the mode it had before (a partly frozen model stays
    partly frozen), also when the block raises.  Several modules may be given:
    ``with nn.eval_mode(G, D):``.  Gradients are still recorded; combine with
    ``mg.no_grad()`` for inference.
    """
    for module in modules:
        if not isinstance(module, Module):
            raise TypeError(f"eval_mode: expected nn.Module objects, got {type(module).__name__}")
    before = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield modules[0] if len(modules) == 1 else modules
    finally:
        for m, mode in before:
            object.__setattr__(m, "training", mode)


class Sequential(Module):
    """Modules applied one after another: ``Sequential(a, b, c)(x) = c(b(a(x)))``.

    Children are named "0", "1", ... (or by the keys of an OrderedDict passed
    as the only argument), like PyTorch's, so state_dict keys match.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], collections.OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(collections.OrderedDict(items[index]))
        return items[_check_index(index, len(items), "Sequential")][1]

    def append(self, module):
        """Add ``module`` at the end of the chain; returns self."""
        self.add_module(str(len(self)), module)
        return self


def _check_index(index, n, who):
    if not isinstance(index, (int, np.integer)):
        raise TypeError(f"{who} indices must be integers or slices, got {type(index).__name__}")
    if not -n <= index < n:
        raise IndexError(f"{who} index {index} is out of range for length {n}")
    return int(index) % n


class ModuleList(Module):
    """A list of modules whose parameters the parent registers (named "0", "1", ...)."""

    def __init__(self, modules=()):
        super().__init__()
        self.extend(modules)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        mods = list(self._modules.values())
        if isinstance(index, slice):
            return ModuleList(mods[index])
        return mods[_check_index(index, len(mods), "ModuleList")]

    def __setitem__(self, index, module):
        self.add_module(str(_check_index(index, len(self), "ModuleList")), module)

    def append(self, module):
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        """Append each module of ``modules`` in order; returns self."""
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        """Put ``module`` before position ``index``, renumbering the ones after it."""
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList holds modules but has no forward; iterate over it instead")


class ModuleDict(Module):
    """A dict of modules (string keys) whose parameters the parent registers."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        """The names of the held modules, in insertion order."""
        return self._modules.keys()

    def values(self):
        """The held modules, in insertion order."""
        return self._modules.values()

    def items(self):
        """(name, module) pairs, in insertion order."""
        return self._modules.items()

    def update(self, modules):
        """Add or replace modules from a mapping or an iterable of (name, module) pairs."""
        items = modules.items() if hasattr(modules, "items") else modules
        for key, m in items:
            self.add_module(key, m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict holds modules but has no forward; index it instead")
