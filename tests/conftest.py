"""Shared test configuration: hypothesis profiles, the backend fixture, the reference classifier.

Every test that takes the ``device`` fixture runs once per available backend:
"cpu" always, "gpu" when CuPy sees a CUDA device.  There is no copied GPU suite.

``reference_cache`` is a session-wide $MINIGEN_CACHE that holds the MNIST reference
classifier (the LeNet of the FLD/KID metrics): copied from the user's cache when a
trustworthy one is there, otherwise trained once per test run (a few minutes on 2
cores).  Any test that evaluates samples should take it instead of training its own.

Hypothesis profiles: "ci" (the default here: derandomized, no deadline, so the
suite gives the same verdict on every run and slow CI machines never flake) and
"dev" (random, more examples) selected with HYPOTHESIS_PROFILE=dev.
"""
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minigen as mg

# The ``device`` fixture is the same for every example of a test, so hypothesis may
# reuse it: the function-scoped-fixture health check is off in both profiles.  Test
# files set only ``@settings(max_examples=...)``; everything else lives here.
_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=_SUPPRESSED)
settings.register_profile("dev", deadline=None, max_examples=100, suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = ["cpu"] + (["gpu"] if mg.gpu_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """The array backend a test runs on ("cpu", and "gpu" when available)."""
    return request.param


@pytest.fixture
def float64():
    """Run a test with float64 as the default dtype (gradient checks need it)."""
    previous = mg.get_default_dtype()
    mg.set_default_dtype(np.float64)
    yield
    mg.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same default generator state."""
    mg.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def reference_cache(tmp_path_factory):
    """A MINIGEN_CACHE for the whole session holding a trusted MNIST reference classifier.

    The user's cache ($MINIGEN_CACHE, else ~/.cache/minigen) is reused when its weight
    file has the SHA-256 its JSON records and was trained by today's recipe (the check
    ``get_classifier`` itself makes): the two files are copied, so no test can alter
    them.  Otherwise the classifier is trained once, here; if the user's cache has no
    MNIST classifier at all, the result is also stored there (where ``minigen eval``
    would have trained it), so the next test run reuses it.
    """
    from minigen.data import load_dataset
    from minigen.metrics import classifier as clf

    user_cache = clf.cache_dir()   # read before this fixture points MINIGEN_CACHE elsewhere
    path = tmp_path_factory.mktemp("minigen-cache")
    train = load_dataset("mnist", "train")
    user_files = clf.cache_paths("mnist", train, user_cache)
    session_files = clf.cache_paths("mnist", train, str(path))
    reused = clf.cached_info("mnist", *user_files) is not None
    if reused:
        for src, dst in zip(user_files, session_files):
            shutil.copyfile(src, dst)
    patch = pytest.MonkeyPatch()
    patch.setenv("MINIGEN_CACHE", str(path))
    clf._memo.clear()
    clf.get_classifier("mnist", device="cpu")   # trains here unless the files were copied
    if not reused and not any(os.path.exists(f) for f in user_files):
        try:
            os.makedirs(user_cache, exist_ok=True)
            for src, dst in zip(session_files, user_files):
                shutil.copyfile(src, dst)
        except OSError:
            pass  # a read-only home: the next run trains again
    yield path
    clf._memo.clear()
    patch.undo()
