"""The benchmarks run: ``python -m benchmarks --quick`` end to end, and their docstring examples.

No timing is asserted (the machine is shared; --quick sizes are tiny): only that every part
runs and prints its tables, ratios and the target verdicts.
"""
import doctest
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_prints_every_table_and_the_targets(tmp_path):
    report = tmp_path / 'report.md'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-m', 'benchmarks', '--quick', '--out', str(report)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for part in ('## step', '## throughput', '## state', '## scale', '## targets'):
        assert part in text, part
    # Ratios measured side by side: every method of the throughput table against plain.
    for method in ('plain', 'rows', 'cols', 'plain_sparse', 'rows_sparse', 'cols_sparse',
                   'split', 'split_sparse', 'onehot'):
        assert '%s steps/s (x plain)' % method in text, method
    assert '(x1.00)' in text and 'GiB' in text and 'MiB' in text
    for target in ('new rows sparse >= 0.95x plain sparse', 'new rows dense >= 1.4x plain',
                   '<= 2% of unmasked', 'converted / unconverted step at',
                   'lookup forward+backward, converted', 'peak RSS <= plain'):
        assert target in text, target
    assert report.read_text().strip() == text.strip()


@pytest.mark.parametrize('name', ['models', 'harness', 'training', 'state', 'step', 'placement',
                                  'scale'])
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.syspath_prepend(ROOT)   # benchmarks/ is run from the repository, not installed
    module = __import__('benchmarks.' + name, fromlist=[name])
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_pair_with_several_builds_prints_each_builds_time_and_a_profile():
    """``benchmarks.pair --builds 2 --profile 2``: every method built twice, the ratio over the
    median of its builds, each build's ms/step printed (the spread between builds of one
    method), and per method the operators its step spends its time in."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-m', 'benchmarks.pair', 'sgd', '200', '8', 'plain',
                          'rows_pure', '--builds', '2', '--rounds', '1', '--min-seconds', '0',
                          '--profile', '2'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines[-4].startswith('sgd 200 x 8: plain x1.000, rows_pure x'), lines
    times = lines[-3].split(':', 1)[1].split(';')
    assert [t.split()[0] for t in times] == ['plain', 'rows_pure']
    assert all(len(t.split()) == 3 for t in times), times   # the name and two builds
    assert lines[-2].startswith('  plain, ms/step by operator: ') and 'sgd_mom_update' in lines[-2]
    # The masked method's book table, on the pure dense path, updates a block cut with slice
    # and written back.
    assert lines[-1].startswith('  rows_pure, ms/step by operator: ') and 'slice' in lines[-1], \
        lines
