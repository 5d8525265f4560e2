"""``masked-opt demo --plot FILE``: did masked training reach the best new rows possible, with
the old rows untouched?

One figure, every seed, drawn from the report's numbers only (nothing is recomputed):

* the verdict on the frozen entries, on top: how many changed their bits, per seed (and, for
  growth, whether the old pairs' RMSE stayed identical);
* left, **the gap to the ceiling per epoch**: ``100 * (J - J*) / J*`` for the masked phase's
  objective ``J`` (squared errors on its training ratings plus its ridge term) and the
  ceiling's ``J*``, the optimum of that same objective with the old rows frozen; log scale,
  one line per seed from the initial rows (epoch 0), a dot at the epoch kept on validation
  (the report's ``gap.objective_percent``), the 1% line for reference;
* right, **where each model lands on the test ratings**: RMSE per model and seed on a log
  axis (linear when an RMSE is 0, as when every rating is equal), from the new rows at init
  down to the ceiling, next to the full retrain and the floors.

:func:`figure` builds it (tests read its Axes), :func:`plot_report` writes it.
"""
import os

import numpy as np

__all__ = ['check_target', 'plot_report', 'figure', 'gap_curve', 'drawn_numbers',
           'PLOT_REQUIREMENTS']

#: What ``--plot`` needs, as pinned in pyproject.toml (a test keeps the two equal):
#: matplotlib left unpinned would bring numpy 2 and break ``import mxnet``.
PLOT_REQUIREMENTS = ('matplotlib>=3.8,<3.11', 'contourpy>=1.0.1,<1.3.3')

#: Gaps at or below this (percent) are drawn on it: the log axis has no 0.
FLOOR_PERCENT = 1e-4
#: Models on the right panel, top to bottom, with their labels.
MODELS = (('before', 'before the new column'), ('init', 'new rows at init'),
          ('masked', 'masked training'), ('ceiling', 'ceiling (best possible)'),
          ('full_retrain', 'full retrain'), ('bias_only', 'floor: bias only'),
          ('global_mean', 'floor: global mean'))


class PlotError(ValueError):
    """A ``--plot`` target that cannot be written (one-line message)."""


def check_target(path):
    """Refuse a plot target before any training: matplotlib missing, no folder, bad suffix."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError('--plot needs matplotlib, a dependency of masked_opt missing here (an '
                        'install with --no-deps?): pip install %s (versions that keep numpy '
                        '< 1.24, which mxnet 1.9.1 needs)'
                        % ' '.join("'%s'" % r for r in PLOT_REQUIREMENTS)) from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PlotError('--plot %s: folder %s does not exist' % (path, folder))
    if not path.lower().endswith(('.png', '.pdf', '.svg')):
        raise PlotError('--plot %s: expected a file name ending in .png, .pdf or .svg' % path)


def gap_curve(seed_report):
    """``(epochs, gap percent)`` of one seed: epoch 0 is the initial rows, then every epoch.

    Examples
    --------
    >>> from masked_opt.demo.plot import gap_curve
    >>> r = {'objective': {'init': 300.0, 'ceiling': 100.0},
    ...      'curves': {'masked_objective': [110.0, 101.0, 100.0]}}
    >>> epochs, gap = gap_curve(r)
    >>> epochs.tolist(), gap.tolist()
    ([0, 1, 2, 3], [200.0, 10.0, 1.0, 0.0001])
    """
    best = seed_report['objective']['ceiling']
    values = [seed_report['objective']['init']] + list(seed_report['curves']['masked_objective'])
    if not best > 0:      # the ceiling fits exactly (every rating equal): no relative gap
        return np.arange(len(values)), np.full(len(values), np.nan)
    gap = 100.0 * (np.asarray(values, np.float64) - best) / best
    return np.arange(len(values)), np.maximum(gap, FLOOR_PERCENT)


def _verdict(report):
    grow = report['mode'] == 'grow'
    per_seed = report['per_seed']
    changed = [r['frozen_entries_changed'] for r in per_seed]
    what = 'old rows' if grow else 'first %d columns' % (report['settings']['latent_dim'] - 1)
    ok = not any(changed)
    text = '%s %s: %s of %d frozen entries changed their bits (seed%s %s)' % (
        what.capitalize(), 'untouched' if ok else 'CHANGED',
        ', '.join('%d' % c for c in changed), per_seed[0]['frozen_entries'],
        '' if len(changed) == 1 else 's', ', '.join(str(s) for s in report['seeds']))
    if grow:
        same = all(r['rmse_old_pairs']['before'] == r['rmse_old_pairs']['after'] for r in per_seed)
        text += '; old pairs\' RMSE %s' % ('identical before and after' if same else 'CHANGED')
        ok = ok and same
    return text, ok


def _gap_panel(ax, report, colours):
    for r, colour in zip(report['per_seed'], colours, strict=True):
        epochs, gap = gap_curve(r)
        kept = r['choices']['masked_epoch']
        percent = r['gap']['objective_percent']
        if percent is None:
            ax.plot([], [], c=colour, label='seed %d: no relative gap (the ceiling fits the '
                    'training ratings exactly, objective 0)' % r['seed'])
            continue
        ax.plot(epochs, gap, c=colour, lw=1.2)
        ax.plot([kept], [max(percent, FLOOR_PERCENT)], 'o', c=colour,
                ms=6, ls='-', lw=1.2, label='seed %d: %+.2f%% at epoch %d, the one kept' % (
                    r['seed'], percent, kept))
    ax.axhline(1.0, c='0.4', ls='--', lw=0.8, label='1% above the ceiling')
    ax.set_yscale('log')
    halve = report['settings'].get('halve_every')
    ax.set_xlabel('epoch of the masked phase (0: the rows at init%s)' % (
        '; learning rate halved every %d' % halve if halve else ''))
    ax.set_ylabel('objective above the ceiling, % (log)')
    ax.set_title('gap to the best possible new %s, on the training ratings'
                 % ('rows' if report['mode'] == 'grow' else 'column'), fontsize=10)
    ax.grid(True, which='major', ls=':', lw=0.5)
    ax.legend(fontsize=7, loc='upper right')


def _rmse_panel(ax, report, colours):
    rows = [(key, label) for key, label in MODELS
            if any(r['rmse'].get(key) is not None for r in report['per_seed'])]
    if report['mode'] != 'grow':
        rows = [(k, label.replace('new rows', 'new column')) for k, label in rows]
    y = np.arange(len(rows))[::-1]
    values = [r['rmse'][key] for r in report['per_seed'] for key, _ in rows
              if r['rmse'].get(key) is not None]
    for r, colour in zip(report['per_seed'], colours, strict=True):
        xs = [r['rmse'].get(key) for key, _ in rows]
        keep = [i for i, x in enumerate(xs) if x is not None]
        ax.scatter([xs[i] for i in keep], y[keep], s=28, color=colour, alpha=0.8,
                   label='seed %d' % r['seed'], zorder=3)
    for i, (key, _) in enumerate(rows):
        if key in ('masked', 'ceiling'):
            ax.axhspan(y[i] - 0.4, y[i] + 0.4, color='0.92', zorder=0)
    ax.set_yticks(y)
    ax.set_yticklabels([label for _, label in rows], fontsize=8)
    log = min(values) > 0   # an RMSE of 0 (every rating equal, fitted exactly) has no log
    if log:
        _log_ticks(ax, min(values) / 1.2, max(values) * 1.2)
    else:
        ax.set_xlim(0, max(max(values) * 1.2, 1e-3))
    ax.set_xlabel('RMSE on the %stest ratings%s'
                  % ('new-pair ' if report['mode'] == 'grow' else '', ' (log)' if log else ''))
    gap = report['summary'].get('gap.rmse', {})
    ax.set_title('where each model lands on the test ratings (colours: seeds, as left)',
                 fontsize=10)
    if gap.get('mean') is not None:
        ax.text(0.98, 0.5, 'masked - ceiling:\n%+.4f RMSE\n(mean over seeds)' % gap['mean'],
                transform=ax.transAxes, ha='right', va='center', fontsize=8)
    ax.grid(True, axis='x', which='both', ls=':', lw=0.5)


def _log_ticks(ax, lo, hi):
    """A log axis from lo to hi labelled 0.2, 0.5, 1 (not 2 x 10^-1)."""
    from matplotlib.ticker import FixedLocator, NullFormatter
    ax.set_xscale('log')
    ax.set_xlim(lo, hi)
    ticks = [v * 10.0 ** e for e in range(-3, 3) for v in (1, 1.5, 2, 3, 4, 5, 7)]
    ticks = [v for v in ticks if lo <= v <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels(['%g' % v for v in ticks], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())


def figure(report):
    """The figure for a report of :func:`~masked_opt.demo.run_seeds` (matplotlib ``Figure``)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colours = [plt.get_cmap('tab10')(i % 10) for i in range(len(report['per_seed']))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4),
                                      gridspec_kw={'width_ratios': [1.35, 1]})
    title = ('did masked training reach the best new %s possible, with the %s untouched?'
             % (('rows', 'old ones') if report['mode'] == 'grow'
                else ('column', 'other columns')))
    fig.suptitle('masked-opt demo on %s: %s' % (report['data']['source'].split(' (seed')[0],
                                                title), fontsize=11)
    text, ok = _verdict(report)
    fig.text(0.5, 0.905, text, ha='center', fontsize=10, weight='bold',
             color='tab:green' if ok else 'tab:red')
    _gap_panel(left, report, colours)
    _rmse_panel(right, report, colours)
    fig.tight_layout(rect=(0, 0, 1, 0.89))
    return fig


def drawn_numbers(report):
    """The report's numbers the figure shows, per seed (stored in a PNG it writes).

    Examples
    --------
    >>> from masked_opt.demo.plot import drawn_numbers
    >>> r = {'seeds': [0], 'per_seed': [{'frozen_entries_changed': 0, 'frozen_entries': 8,
    ...      'gap': {'objective_percent': 0.5}, 'choices': {'masked_epoch': 3},
    ...      'rmse': {'masked': 0.2, 'ceiling': 0.19}}]}
    >>> drawn_numbers(r)['rmse']
    {'masked': [0.2], 'ceiling': [0.19]}
    """
    per_seed = report['per_seed']
    keys = [k for k, _ in MODELS if any(r['rmse'].get(k) is not None for r in per_seed)]
    return {'seeds': list(report['seeds']),
            'frozen_entries_changed': [r['frozen_entries_changed'] for r in per_seed],
            'frozen_entries': per_seed[0]['frozen_entries'],
            'gap_objective_percent': [r['gap']['objective_percent'] for r in per_seed],
            'masked_epoch': [r['choices']['masked_epoch'] for r in per_seed],
            'rmse': {k: [r['rmse'].get(k) for r in per_seed] for k in keys}}


def plot_report(report, path):
    """Write :func:`figure` of ``report`` to ``path`` (``.png``, ``.pdf`` or ``.svg``).

    A PNG carries :func:`drawn_numbers` as JSON in its ``Description`` text chunk, so a picture
    can be checked against the text report of the same run (``tests/test_readme_block.py``).
    """
    import json

    import matplotlib.pyplot as plt
    fig = figure(report)
    metadata = None
    if path.lower().endswith('.png'):
        metadata = {'Description': json.dumps(drawn_numbers(report), sort_keys=True)}
    try:
        fig.savefig(path, dpi=90, metadata=metadata)
    finally:
        plt.close(fig)
