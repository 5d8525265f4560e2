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


@pytest.fixture(scope='module')
def lib():
    """Skip (or, with MASKED_OPT_REQUIRE_NATIVE=1, fail) when the native ops are unavailable."""
    from masked_opt import native
    if not native.available():
        reason = native.status().reason
        if os.environ.get('MASKED_OPT_REQUIRE_NATIVE') == '1':
            pytest.fail('MASKED_OPT_REQUIRE_NATIVE=1 but the native library is not available: '
                        + str(reason))
        pytest.skip('native library not available: %s' % reason)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same MXNet and numpy random state."""
    mx.random.seed(0)
    np.random.seed(0)


def pytest_configure(config):
    """With ``MASKED_OPT_REQUIRE_NATIVE=1`` (set by ``.ci/run``) a missing native library fails
    the run at once, instead of letting the tests that compare the native path with the pure
    path skip: in CI a skip there would hide a broken build."""
    if os.environ.get('MASKED_OPT_REQUIRE_NATIVE') == '1':
        from masked_opt import native
        if not native.available():
            raise pytest.UsageError('MASKED_OPT_REQUIRE_NATIVE=1 but the native library is not '
                                    'available: %s' % native.status().reason)
