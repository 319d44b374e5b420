"""Shared test configuration: hypothesis profiles and the backend fixture.

Every test that takes the ``device`` fixture runs once per available backend:
"cpu" always, "gpu" when CuPy sees a CUDA device.  There is no copied GPU suite.

Hypothesis profiles: "ci" (the default here: derandomized, no deadline, so the
suite gives the same verdict on every run and slow CI machines never flake) and
"dev" (random, more examples) selected with HYPOTHESIS_PROFILE=dev.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minigen as mg

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
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
