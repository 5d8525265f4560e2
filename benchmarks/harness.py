"""Timing and memory measurement shared by the benchmark scripts.

Throughput ratios are only meaningful when both sides see the same machine load, so every
script times its methods *side by side in one process*, in interleaved rounds (A B C A B C
...), and reports the median per-step time over the rounds after a warm-up round. Peak RSS
cannot be separated inside one process, so it is measured in a fresh subprocess per
configuration (:func:`peak_rss_of`).
"""
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import mxnet as mx

# glibc's M_MMAP_THRESHOLD (malloc.h) and the value pin_array_placement() gives it: its default.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def pin_array_placement():
    r"""Give every large array the same offset within its 4 KiB memory page (glibc only).

    MXNet allocates a CPU array with ``posix_memalign(64)``. glibc serves a request above its
    *mmap threshold* with a fresh mapping, which always puts the array 64 bytes into a page;
    below it, from the heap, at whatever offset the heap has reached. The threshold is not
    fixed: each large block freed raises it (up to 32 MiB on 64-bit), so after the first
    builds a (100k, 64) float32 table (25.6 MB) comes from the heap at an arbitrary offset. The
    offsets matter: ``python -m benchmarks.placement`` times ``adam_update`` on arrays whose
    offsets agree and on arrays whose offsets differ, side by side. Which build of a method
    got which offsets changed from run to run, so the builds of one method ran 20-35% apart.

    Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops its growth) maps
    every array above 128 KiB afresh, so all of them share one offset and every method runs
    under the same condition. The environment variable ``MALLOC_MMAP_THRESHOLD_`` is set too,
    for the benchmark's subprocesses. Returns False where there is no glibc ``mallopt``.

    Examples
    --------
    In a process of its own (it changes how the whole process allocates):

    >>> import os, subprocess, sys
    >>> import benchmarks.harness as harness
    >>> code = ('import os, benchmarks.harness as h; '
    ...         'print(h.pin_array_placement(), os.environ["MALLOC_MMAP_THRESHOLD_"])')
    >>> root = os.path.dirname(os.path.dirname(os.path.abspath(harness.__file__)))
    >>> subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
    ...                text=True).stdout
    'True 131072\n'
    """
    os.environ['MALLOC_MMAP_THRESHOLD_'] = str(MMAP_THRESHOLD)   # read by glibc at start-up
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def time_chunk(step, n):
    """Seconds per call of ``step`` over ``n`` calls, waiting for MXNet's queue to drain.

    Examples
    --------
    >>> from benchmarks.harness import time_chunk
    >>> time_chunk(lambda: None, 3) >= 0
    True
    """
    mx.nd.waitall()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    mx.nd.waitall()
    return (time.perf_counter() - t0) / n


def interleaved(steps, rounds=5, min_seconds=0.3, max_steps=50, log=None, fixed_steps=None):
    """Median seconds per step of each callable, timed in interleaved rounds.

    One warm-up round (not counted) also calibrates how many steps each method runs per round
    so that a round of it lasts at least ``min_seconds`` (at least 1, at most ``max_steps``).

    Parameters
    ----------
    steps : dict
        Name -> zero-argument callable doing one training step (it may only queue work).
    rounds : int
        Counted rounds; the result is the median over them (use >= 5).
    min_seconds : float
        Target duration of one method's share of a round.
    max_steps : int
        Upper bound on steps per method per round.
    log : callable, optional
        Called with a progress string after each round.
    fixed_steps : int, optional
        Run exactly this many steps per method per round instead of calibrating.

    Returns
    -------
    dict
        Name -> {'median': seconds per step, 'times': per-round seconds per step, 'n': steps
        per round}.

    Examples
    --------
    >>> from benchmarks.harness import interleaved
    >>> r = interleaved({'noop': lambda: None}, rounds=5, min_seconds=0.0)
    >>> len(r['noop']['times'])
    5
    """
    per_round = {}
    for name, step in steps.items():
        step()  # first call: graph set-up, allocation
        t = time_chunk(step, 1)
        per_round[name] = (fixed_steps if fixed_steps else
                           max(1, min(max_steps, int(min_seconds / max(t, 1e-9)) + 1)))
    times = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            times[name].append(time_chunk(step, per_round[name]))
        if log:
            log('  round %d/%d done' % (r + 1, rounds))
    return {name: {'median': statistics.median(ts), 'times': ts, 'n': per_round[name]}
            for name, ts in times.items()}


def peak_rss_bytes():
    """Peak resident set size of this process so far, in bytes.

    Read from ``VmHWM`` in ``/proc/self/status``: it belongs to the process's own memory map.
    (``getrusage``'s ``ru_maxrss`` is not usable for a child: Linux folds the parent's peak at
    ``fork`` into it across ``exec``, so every child would report at least its parent's peak.)
    Falls back to ``ru_maxrss`` where there is no ``/proc``.

    Examples
    --------
    >>> from benchmarks.harness import peak_rss_bytes
    >>> peak_rss_bytes() > 0
    True
    """
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs``), if possible.

    Examples
    --------
    >>> from benchmarks.harness import peak_rss_bytes, reset_peak_rss
    >>> reset_peak_rss() in (True, False)
    True
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_of(module, config, timeout=900):
    """Run ``python -m <module> --child <json config>`` and return the result it prints.

    The child runs one configuration in a fresh process and prints one JSON line with at
    least ``peak_rss`` (bytes); so each configuration's peak memory is its own.

    Examples
    --------
    >>> from benchmarks.harness import peak_rss_of
    >>> peak_rss_of('benchmarks.harness', {})['peak_rss'] > 0
    True
    """
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    out = subprocess.run([sys.executable, '-m', module, '--child', json.dumps(config)],
                         capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError('%s --child %s failed (exit %d):\n%s'
                           % (module, json.dumps(config), out.returncode, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


# Profiler entries that are engine bookkeeping, not work of the step.
_ENGINE_ENTRIES = {'ResourceParallelRandomSetSeed', 'DeleteVariable'}


def profile_ops(step, n, top=5):
    """MXNet's profiler over ``n`` calls of ``step``: the operators that took the most time.

    Returns ``[(operator, calls, total ms)]``, most expensive first (aggregate statistics of
    ``mx.profiler``; a fused backward segment is one entry, named by its operators).

    Examples
    --------
    >>> import mxnet as mx
    >>> from benchmarks.harness import profile_ops
    >>> a = mx.nd.ones((100, 100))
    >>> [(name, calls) for name, calls, ms in profile_ops(lambda: mx.nd.dot(a, a), 3)]
    [('dot', 3)]
    """
    import tempfile
    mx.nd.waitall()
    with tempfile.TemporaryDirectory() as tmp:
        mx.profiler.set_config(profile_all=True, aggregate_stats=True,
                               filename=tmp + '/profile.json')
        mx.profiler.set_state('run')
        for _ in range(n):
            step()
        mx.nd.waitall()
        mx.profiler.set_state('stop')
        text = mx.profiler.dumps(reset=True)
    rows, section = [], None
    for line in text.splitlines():
        if line.strip() and set(line.strip()) == {'='}:
            continue
        if line and not line.startswith((' ', '\t', 'Name', '----')) and len(line.split()) == 1:
            section = line.strip()
            continue
        parts = line.split()
        if section == 'operator' and len(parts) >= 6 and not line.startswith(('Name', '----')):
            name = ' '.join(parts[:-5])
            if name not in _ENGINE_ENTRIES:
                rows.append((name, int(parts[-5]), float(parts[-4])))
    return sorted(rows, key=lambda r: -r[2])[:top]


def gib(n_bytes):
    """Format bytes as GiB with two decimals.

    Examples
    --------
    >>> from benchmarks.harness import gib
    >>> gib(3 * 2**30)
    '3.00 GiB'
    """
    return '%.2f GiB' % (n_bytes / 2 ** 30)


def table(header, rows):
    """A GitHub-markdown table as a string.

    Examples
    --------
    >>> from benchmarks.harness import table
    >>> print(table(['a', 'b'], [[1, 2]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ['| ' + ' | '.join(map(str, header)) + ' |',
             '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
    return '\n'.join(lines)


if __name__ == '__main__' and sys.argv[1:2] == ['--child']:
    # Used by the doctest of peak_rss_of: an empty configuration, just report.
    print(json.dumps({'peak_rss': peak_rss_bytes()}))
