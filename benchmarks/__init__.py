"""Benchmarks of masked_opt: ratios measured side by side, in one run.

``python -m benchmarks`` (or ``tox -e bench``) runs them all; ``--quick`` checks in seconds
that they run. See ``docs/benchmarks.md`` for the results and the exact commands.

Modules: :mod:`~benchmarks.models` (the forum's model and its workarounds),
:mod:`~benchmarks.training` (each method as a Module), :mod:`~benchmarks.harness`
(interleaved timing, peak RSS in subprocesses), and one module per benchmark:
:mod:`~benchmarks.step`, :mod:`~benchmarks.throughput`, :mod:`~benchmarks.state`,
:mod:`~benchmarks.scale`; beside them :mod:`~benchmarks.pair` (a few methods of one setting,
several builds, a profile) and :mod:`~benchmarks.placement` (why every timing script pins
where its arrays sit in memory, :func:`~benchmarks.harness.pin_array_placement`).
"""
