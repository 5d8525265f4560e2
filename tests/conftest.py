"""Shared test set-up: hypothesis profiles and small helpers used by every test file."""
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI runs a bounded, fixed set of examples (derandomize: the same draws every run, so a CI
# result is reproducible); `HYPOTHESIS_PROFILE=dev` explores many more, freshly drawn, locally.
settings.register_profile('ci', max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('dev', max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same MXNet and numpy random state."""
    mx.random.seed(0)
    np.random.seed(0)
