"""Every public class, function and method of minigen has a docstring (issue 20).

Public means: the name does not start with "_" and neither does any part of its
module's dotted name. Methods count when they are defined in the class body of a
public class (dunder methods are skipped). A method that overrides a documented method of
a base class (e.g. `forward`/`backward` of an autograd `Function`, `forward` of an
`nn.Module`) inherits that meaning and is not required to repeat it, provided its own class
has a docstring stating what it computes. Objects are only checked in the module
that defines them, so re-exports are not counted twice.
"""
import importlib
import inspect
import pkgutil

import minigen

# Modules excused from the check (none: every module of the package is held to it).
IN_PROGRESS_MODULES = set()


def _is_public_module(name):
    return not any(part.startswith("_") for part in name.split(".")[1:])


def _public_modules():
    names = ["minigen"]
    for info in pkgutil.walk_packages(minigen.__path__, prefix="minigen."):
        names.append(info.name)
    return sorted(n for n in names
                  if _is_public_module(n) and n not in IN_PROGRESS_MODULES)


def _has_doc(obj):
    doc = obj.__doc__
    return isinstance(doc, str) and doc.strip() != ""


def _unwrap(attr):
    """The function behind a class-body attribute (method, staticmethod, property)."""
    if isinstance(attr, (staticmethod, classmethod)):
        return attr.__func__
    if isinstance(attr, property):
        return attr.fget
    if inspect.isfunction(attr):
        return attr
    return None


def _documented_in_base(cls, attr_name):
    """Whether some base class of `cls` defines `attr_name` with a docstring."""
    for base in cls.__mro__[1:]:
        if base is object or attr_name not in vars(base):
            continue
        fn = _unwrap(vars(base)[attr_name])
        if fn is not None and _has_doc(fn):
            return True
    return False


def _offenders(module):
    found, seen = [], set()
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if id(obj) in seen:  # an alias (``logsigmoid = log_sigmoid``) is the same object
            continue
        seen.add(id(obj))
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if not _has_doc(obj):
            found.append(f"{module.__name__}:{obj.__qualname__}")
        if inspect.isclass(obj):
            for attr_name, attr in vars(obj).items():
                if attr_name.startswith("_"):
                    continue
                fn = _unwrap(attr)
                if fn is None:
                    continue
                if _has_doc(obj) and _documented_in_base(obj, attr_name):
                    continue
                doc = attr.__doc__ if isinstance(attr, property) else fn.__doc__
                if not (isinstance(doc, str) and doc.strip()):
                    found.append(f"{module.__name__}:{obj.__qualname__}.{attr_name}")
    return found


def test_modules_are_found():
    names = _public_modules()
    assert "minigen.functional.math" in names
    assert "minigen.nn.layers" in names
    assert not IN_PROGRESS_MODULES & set(names)


def test_offender_detection_can_fail():
    class Undocumented:
        def method(self):
            return 1

    import types
    fake = types.ModuleType("fake_mod")
    Undocumented.__module__ = "fake_mod"
    fake.Undocumented = Undocumented
    assert _offenders(fake) == ["fake_mod:test_offender_detection_can_fail.<locals>.Undocumented",
                                "fake_mod:test_offender_detection_can_fail.<locals>.Undocumented.method"]


def test_every_public_object_has_a_docstring():
    offenders = []
    for name in _public_modules():
        offenders.extend(_offenders(importlib.import_module(name)))
    assert not offenders, (
        f"{len(offenders)} public objects without a docstring:\n  " + "\n  ".join(offenders))
