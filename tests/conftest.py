"""Shared test set-up: hypothesis profiles and small helpers used by every test file."""
import os

import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI runs a bounded number of examples so the suite takes minutes; `HYPOTHESIS_PROFILE=dev`
# runs many more locally.
settings.register_profile('ci', max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('dev', max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same MXNet and numpy random state."""
    mx.random.seed(0)
    np.random.seed(0)
