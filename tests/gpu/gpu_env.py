"""Where the GPU suite runs, and why it is skipped.

The suite runs on ``mx.gpu(0)`` (with ``mx.cpu(0)`` as the second context of the multi-context
tests) when MXNet sees a GPU. Without one every test module is skipped with :data:`SKIP_REASON`.

``MASKED_OPT_GPU_SUITE_ON_CPU=1`` is a dry run: the same tests on ``mx.cpu(0)`` (and
``mx.cpu(1)`` as the second context), so that the suite itself is exercised on machines without
a GPU (CI does this). A dry run proves nothing about GPU kernels; it proves the tests run.
"""
import os

import mxnet as mx


def _num_gpus():
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:  # a CUDA build on a machine without a usable driver
        return 0


DRY_RUN = os.environ.get('MASKED_OPT_GPU_SUITE_ON_CPU') == '1'
HAVE_GPU = _num_gpus() > 0
ON_GPU = HAVE_GPU and not DRY_RUN
RUN = ON_GPU or DRY_RUN
SKIP_REASON = ('no GPU: mx.context.num_gpus() == 0 (CPU-only MXNet wheel or no CUDA device). '
               'Run tests/gpu on a machine with a GPU and a CUDA build of MXNet 1.9.1 '
               '(see docs/gpu.md), or set MASKED_OPT_GPU_SUITE_ON_CPU=1 for a dry run on '
               'CPU contexts.')


def device():
    """The device under test: ``mx.gpu(0)``, or ``mx.cpu(0)`` in a dry run."""
    return mx.gpu(0) if ON_GPU else mx.cpu(0)


def second_device():
    """The other context of the multi-context tests: ``mx.cpu(0)`` next to a GPU, else cpu(1)."""
    return mx.cpu(0) if ON_GPU else mx.cpu(1)
