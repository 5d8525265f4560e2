"""docs/benchmarks.md: the pasted run is one run's output, and the page's prose quotes it.

No timing is measured here (the numbers come from ``python -m benchmarks``, see the page). What
can go stale is the text around them: a new run pasted under prose that still quotes the old
one, or a table edited by hand. So the ratio table must follow from the steps/s table, the
targets table from the ratio table, and the figures the page's summary quotes from the tables.
"""
import os
import re

import pytest

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                    'benchmarks.md')


def _tables(text):
    """Every markdown table of ``text`` as a list of rows (lists of cell strings)."""
    tables, rows = [], []
    for line in text.splitlines() + ['']:
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not set(''.join(cells)) <= set('-'):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


@pytest.fixture(scope='module')
def page():
    with open(PAGE) as f:
        text = f.read()
    summary, run = text.split('## What the targets say', 1)[1].split('## One full run', 1)
    tables = {t[0][0] + '|' + t[0][-1]: t for t in _tables(run)}
    throughput = next(t for k, t in tables.items() if k.startswith('optimizer|onehot steps/s'))
    ratios = next(t for k, t in tables.items() if k.endswith('rows dense / (B) one_hot'))
    targets = next(t for k, t in tables.items() if k == 'target|verdict')
    return {'summary': summary, 'throughput': throughput, 'ratios': ratios, 'targets': targets}


def _by_setting(table):
    header, rows = table[0], table[1:]
    return {tuple(r[:3]): dict(zip(header[3:], r[3:], strict=True)) for r in rows}


def test_ratio_table_follows_from_the_steps_per_second(page):
    speeds = _by_setting(page['throughput'])
    pairs = {'rows dense / plain': ('rows', 'plain'), 'cols dense / plain': ('cols', 'plain'),
             'rows sparse / plain sparse': ('rows_sparse', 'plain_sparse'),
             'cols sparse / (A) sparse': ('cols_sparse', 'split_sparse'),
             'cols dense / (A) dense': ('cols', 'split')}
    for setting, ratios in _by_setting(page['ratios']).items():
        for column, (a, b) in pairs.items():
            fast, slow = (float(speeds[setting]['%s steps/s (x plain)' % m].split()[0])
                          for m in (a, b))
            # steps/s are printed with one decimal: allow for that rounding.
            slack = 0.05 / slow + 0.05 * fast / slow ** 2 + 0.005
            assert abs(float(ratios[column]) - fast / slow) <= slack, (setting, column)


def test_targets_table_follows_from_the_ratio_table(page):
    ratios = _by_setting(page['ratios'])
    checks = {'new rows dense >= 1.4x plain dense': ('rows dense / plain', 1.4, None),
              'latent split dense >= 0.8x': ('cols dense / (A) dense', 0.8, '64'),
              'latent split dense >= 1.0x the pure dense path at d = 8':
                  ('cols dense / pure dense path', 1.0, '8'),
              'latent split dense >= 1.15x the pure dense path at d = 64':
                  ('cols dense / pure dense path', 1.15, '64'),
              'new rows sparse >= 1.05x plain sparse at d = 64':
                  ('rows sparse / plain sparse', 1.05, '64')}
    for row in page['targets'][1:]:
        for prefix, (column, bar, dim) in checks.items():
            if row[0].startswith(prefix):
                values = [float(r[column]) for (_, _, d), r in ratios.items()
                          if dim is None or d == dim]
                assert row[1].startswith('worst %.2f;' % min(values)), row
                assert row[2] == ('met' if min(values) >= bar else 'missed'), row


def test_summary_quotes_the_run(page):
    ratios, summary = _by_setting(page['ratios']), page['summary']
    rows = [float(r['rows dense / plain']) for r in ratios.values()]
    assert '**New rows with dense gradients: %.2f-%.2fx plain dense' % (min(rows), max(rows)) \
        in summary
    split = [float(r['cols dense / (A) dense']) for (_, _, d), r in ratios.items() if d == '64']
    assert ('**Latent split with dense gradients: %.2f-%.2fx workaround (A) dense at d = 64'
            % (min(split), max(split))) in summary
    sparse_split = [float(r['cols sparse / (A) sparse']) for r in ratios.values()]
    assert 'runs at %.2f-%.2fx workaround (A) with sparse gradients' % (
        min(sparse_split), max(sparse_split)) in summary
    worst = [re.match(r'worst ([0-9.]+);', row[1]).group(1) for row in page['targets'][1:7]]
    assert 'sparse; worst %s)' % ', '.join(worst) in summary
    # The summary states the six sparse verdicts as the pasted run has them.
    verdicts = {row[0]: row[2] for row in page['targets'][1:]}
    held = sum(verdicts[t] == 'met' for t in list(verdicts)[:6])
    if held == 6:
        assert 'Sparse gradients: every target holds' in summary
    else:
        assert 'Sparse gradients: %d of 6 targets hold in this run' % held in summary
        assert 'every target holds' not in summary
    # The dense latent split's verdict, quoted likewise.
    split_verdict = next(v for t, v in verdicts.items() if t.startswith('latent split dense'))
    assert ('target 0.8x met' in summary) == (split_verdict == 'met')
