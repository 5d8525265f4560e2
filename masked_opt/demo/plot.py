"""``masked-opt demo --plot FILE``: embeddings before and after, and the learning curves.

Grow mode, first seed: for each table a 2-D projection on the old rows' first two principal
axes (each labelled with the share of the old rows' variance it explains), old rows in grey
and an arrow from each new row's initial to its trained position; the masked phase's
validation RMSE per epoch with the ceiling and the floors as horizontal lines (and the full
retrain's curve); the old model's own validation curve in a panel of its own (another scale).
Latent-split mode: the trained column itself, entry by entry against the ceiling's.
"""
import os

import numpy as np

from .model import BOOK, MEMBER

__all__ = ['check_target', 'plot_report', 'PLOT_REQUIREMENTS']

#: What ``--plot`` needs, as pinned in pyproject.toml (a test keeps the two equal): a bare
#: matplotlib left unpinned would bring numpy 2 and break ``import mxnet``.
PLOT_REQUIREMENTS = ('matplotlib>=3.8,<3.11', 'contourpy>=1.0.1,<1.3.3')


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


def _projection(ax, key, tables, n_old):
    new = np.asarray(tables['new'][key], np.float64)
    init = np.asarray(tables['init'][key], np.float64)
    centre = new[:n_old].mean(axis=0)
    _, sv, vt = np.linalg.svd(new[:n_old] - centre, full_matrices=False)
    share = sv ** 2 / (sv ** 2).sum()
    xy, start = (new - centre) @ vt[:2].T, (init - centre) @ vt[:2].T
    ax.scatter(xy[:n_old, 0], xy[:n_old, 1], s=5, c='0.75', label='old rows (frozen)')
    if new.shape[0] > n_old:
        d = xy[n_old:] - start[n_old:]
        ax.quiver(start[n_old:, 0], start[n_old:, 1], d[:, 0], d[:, 1], angles='xy',
                  scale_units='xy', scale=1, width=0.003, color='tab:blue', alpha=0.6)
        ax.scatter(start[n_old:, 0], start[n_old:, 1], s=8, marker='x', c='tab:blue',
                   label='new rows at init')
        ax.scatter(xy[n_old:, 0], xy[n_old:, 1], s=10, c='tab:red', label='new rows trained')
    ax.set_xlabel('PC 1 of the old rows (%.0f%% of their variance)' % (100 * share[0]))
    ax.set_ylabel('PC 2 (%.0f%%)' % (100 * share[1]))
    ax.set_title('%s: init -> trained' % key.replace('_weight', ''))
    ax.legend(loc='best', fontsize=7)


def _curves(ax, first):
    curve = first['curves']['masked_validation']
    ax.plot(range(1, len(curve) + 1), curve, c='tab:red', label='masked phase')
    full = first['curves']['full_retrain_validation']
    ax.plot(range(1, len(full) + 1), full, c='tab:green', label='full retrain (best wd)')
    v = first['validation']
    for key, colour, label in (('ceiling', 'k', 'ceiling (fold-in)'),
                               ('bias_only', 'tab:orange', 'floor: bias only'),
                               ('global_mean', 'tab:purple', 'floor: global mean')):
        if v.get(key) is not None:
            ax.axhline(v[key], c=colour, ls='--', lw=1, label='%s %.4f' % (label, v[key]))
    ax.axvline(first['choices']['masked_epoch'], c='tab:red', ls=':', lw=1,
               label='epoch kept (best validation)')
    low = min(min(curve), min(full), *(x for x in v.values() if x is not None))
    high = max(curve[0], full[0], *(x for x in v.values() if x is not None))
    ax.set_ylim(low - 0.03 * (high - low), high + 0.03 * (high - low))
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation RMSE')
    ax.set_title('learning curves on validation ratings')
    ax.legend(fontsize=7)


def _old_curve(ax, first):
    curve = first['curves']['old_model_validation']
    ax.plot(range(1, len(curve) + 1), curve, marker='o', ms=3, c='0.3')
    ax.axvline(first['choices']['old_epoch'], c='0.3', ls=':', lw=1, label='epoch kept')
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation RMSE')
    ax.set_title('the old model (before growth), wd %g' % first['choices']['old_wd'])
    ax.legend(fontsize=7)


def _last_column(ax, key, tables):
    trained = np.asarray(tables['new'][key], np.float64)[:, -1]
    init = np.asarray(tables['init'][key], np.float64)[:, -1]
    best = np.asarray(tables['ceiling'][key], np.float64)[:, -1]
    ax.scatter(best, init, s=5, c='tab:blue', alpha=0.5, label='at init')
    ax.scatter(best, trained, s=5, c='tab:red', label='after masked training')
    lo, hi = float(min(best.min(), trained.min())), float(max(best.max(), trained.max()))
    ax.plot([lo, hi], [lo, hi], c='k', lw=1, ls='--', label='y = x')
    ax.set_xlabel('ceiling: optimal last-column entry')
    ax.set_ylabel('last-column entry')
    ax.set_title('%s: the trained dimension' % key.replace('_weight', ''))
    ax.legend(fontsize=7)


def plot_report(report, path):
    """Draw the first seed's report (needs ``'_tables'`` in it) into ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    first = report['per_seed'][0]
    tables = first['_tables']
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    if report['mode'] == 'grow':
        d = report['data']
        _projection(axes[0, 0], MEMBER, tables, d['old_users'])
        _projection(axes[0, 1], BOOK, tables, d['old_items'])
    else:
        _last_column(axes[0, 0], MEMBER, tables)
        _last_column(axes[0, 1], BOOK, tables)
    _curves(axes[1, 0], first)
    _old_curve(axes[1, 1], first)
    fig.suptitle('masked-opt demo, %s, seed %d' % (report['data']['source'], first['seed']))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
