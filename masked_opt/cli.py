"""Command line: ``masked-opt demo`` (also ``python -m masked_opt demo``).

The forum's job end to end, on the forum's unmodified matrix-factorisation model
(``member_embedding``, ``book_embedding``, prediction ``1 - <member, book>``):

``--mode grow`` (default): vocabulary growth
    1. train the model with ``Module.fit`` on the old users and items;
    2. grow both tables with the users and items that arrived later
       (:func:`~masked_opt.grow_params`, ``init='mean_cov'``);
    3. train only the new rows with the ``'masked'`` optimizer;
    4. report: frozen entries changed (on the bits), RMSE of old pairs before/after, RMSE of
       new pairs at initialisation / after / with a full retrain from scratch on all the data,
       how the new rows compare with the old (norms, Kolmogorov-Smirnov distance), wall times.
``--mode latent-split``: the forum's first case
    train a model with ``latent_dim - 1`` dimensions, append one latent dimension to both
    tables and train only that column (``train_cols``); compare with a full retrain.

Data: synthetic ratings from hidden low-rank factors (seeded; default), or ``--data PATH``
in MovieLens format, split by time at ``--cutoff`` (default 0.8: the last 20% of ratings by
time bring the new users and items). Exit code 0 when the frozen entries are bit-identical,
1 when not, 2 on bad input (one-line message, no traceback).
"""
import argparse
import json
import math
import os
import sys
import time

import mxnet as mx
import numpy as np
import scipy.stats
from tqdm import tqdm

from . import grow as _grow
from .data import (
    DEFAULT_CUTOFF,
    DataError,
    Ratings,
    load_ratings,
    random_split,
    synthetic_split,
    time_split,
)
from .masks import train_cols

__all__ = ['main', 'run_demo', 'format_report']

MEMBER, BOOK = 'member_embedding_weight', 'book_embedding_weight'

# Defaults sized to finish in about a minute on 2 cores, whole demo included.
DEFAULTS = dict(users=600, items=400, new_users=120, new_items=80, per_user=40, latent_dim=8,
                epochs=30, new_epochs=None, batch_size=128, learning_rate=0.01, seed=0,
                init=_grow.DEFAULT_INIT, cutoff=DEFAULT_CUTOFF)


class CliError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------- the model
def forum_mf(n_users, n_items, latent_dim):
    """The forum's model, unchanged: ``LinearRegressionOutput(1 - <member, book>)``.

    Examples
    --------
    >>> from masked_opt.cli import forum_mf
    >>> forum_mf(10, 5, 8).list_arguments()
    ['member', 'member_embedding_weight', 'book', 'book_embedding_weight', 'label']
    """
    y_true = mx.symbol.Variable('label')
    user = mx.symbol.Embedding(name='member_embedding', data=mx.symbol.Variable('member'),
                               input_dim=n_users, output_dim=latent_dim)
    book = mx.symbol.Embedding(name='book_embedding', data=mx.symbol.Variable('book'),
                               input_dim=n_items, output_dim=latent_dim)
    dot = 1 - mx.symbol.Flatten(mx.symbol.sum_axis(user * book, axis=1))
    return mx.symbol.LinearRegressionOutput(data=dot, label=y_true)


def rmse(params, ratings):
    """RMSE of the forum model with ``params`` on ``ratings``, computed in float64 on the host.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.cli import rmse
    >>> from masked_opt.data import Ratings
    >>> p = {'member_embedding_weight': np.ones((2, 1)), 'book_embedding_weight': np.ones((1, 1))}
    >>> rmse(p, Ratings(np.array([0, 1]), np.array([0, 0]), np.array([0.0, 1.0])))
    0.7071067811865476
    """
    if len(ratings.label) == 0:
        return None
    users, items = _host(params[MEMBER]), _host(params[BOOK])
    pred = 1.0 - (users[ratings.user] * items[ratings.item]).sum(axis=1)
    return float(np.sqrt(np.mean((pred - ratings.label.astype(np.float64)) ** 2)))


def _host(a):
    return (a.asnumpy() if hasattr(a, 'asnumpy') else np.asarray(a)).astype(np.float64)


def _train(n_users, n_items, latent_dim, train, *, epochs, batch_size, learning_rate, seed,
           progress, desc, evaluate, optimizer='adam', optimizer_params=None, arg_params=None):
    """Module.fit on ``train``; returns (params as numpy, per-epoch ``evaluate(params)``, s)."""
    mx.random.seed(seed)
    np.random.seed(seed)  # NDArrayIter shuffles with numpy's global generator
    it = mx.io.NDArrayIter({'member': train.user.astype(np.float32),
                            'book': train.item.astype(np.float32)},
                           {'label': train.label}, batch_size=min(batch_size, len(train.label)),
                           shuffle=True)
    mod = mx.mod.Module(forum_mf(n_users, n_items, latent_dim), data_names=['member', 'book'],
                        label_names=['label'], context=mx.cpu())
    curve = []
    n_batches = math.ceil(len(train.label) / it.batch_size)
    bar = tqdm(total=epochs * n_batches, desc=desc, unit='batch', disable=not progress,
               leave=False, file=sys.stderr)

    def on_epoch(epoch, symbol, args, auxs):
        curve.append(evaluate({k: v.asnumpy() for k, v in args.items()}))
        bar.set_postfix_str('test RMSE %.4f' % curve[-1])

    start = time.perf_counter()
    mod.fit(it, num_epoch=epochs, optimizer=optimizer,
            optimizer_params=dict(optimizer_params or {}, learning_rate=learning_rate),
            initializer=mx.init.Normal(0.1), arg_params=arg_params,
            batch_end_callback=lambda _: bar.update(1), epoch_end_callback=on_epoch)
    seconds = time.perf_counter() - start
    bar.close()
    params = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
    return params, curve, seconds



def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _changed(before, after):
    return int(np.count_nonzero(_bits(before) != _bits(after)))


def _norm_comparison(table, n_old):
    norms = np.linalg.norm(table.astype(np.float64), axis=1)
    old, new = norms[:n_old], norms[n_old:]
    if new.size == 0:
        return None
    ks = scipy.stats.ks_2samp(old, new)
    return {'old_norm_mean': float(old.mean()), 'old_norm_std': float(old.std()),
            'new_norm_mean': float(new.mean()), 'new_norm_std': float(new.std()),
            'ks_statistic': float(ks.statistic), 'ks_pvalue': float(ks.pvalue)}


def _concat(a, b):
    return Ratings(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))


# ---------------------------------------------------------------------------- the two modes
def run_demo(split, *, mode='grow', latent_dim=8, epochs=30, new_epochs=None, batch_size=128,
             learning_rate=0.01, seed=0, init=_grow.DEFAULT_INIT, progress=True):
    """Run the demo on a :class:`~masked_opt.data.Split`; return the report as a dict.

    ``new_epochs`` (the masked phase) defaults to 60 for ``'grow'``: new rows see only the
    ratings that involve them, a small share of an epoch; and to 10 for ``'latent-split'``,
    where one column trains on all ratings.

    Examples
    --------
    >>> from masked_opt.cli import run_demo
    >>> from masked_opt.data import synthetic_split
    >>> r = run_demo(synthetic_split(40, 30, 8, 6, per_user=8), epochs=2, new_epochs=2,
    ...              progress=False)
    >>> r['frozen_entries_changed'], r['ok']
    (0, True)
    """
    if new_epochs is None:
        new_epochs = 60 if mode == 'grow' else 10
    common = dict(batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                  progress=progress)
    if mode == 'grow':
        report = _run_grow(split, latent_dim, epochs, new_epochs, init, common)
    elif mode == 'latent-split':
        report = _run_latent_split(split, latent_dim, epochs, new_epochs, common)
    else:
        raise CliError("mode: expected 'grow' or 'latent-split', received %r" % (mode,))
    report['settings'] = dict(mode=mode, latent_dim=latent_dim, epochs=epochs,
                              new_epochs=new_epochs, batch_size=batch_size,
                              learning_rate=learning_rate, optimizer='adam', seed=seed,
                              init=init if mode == 'grow' else None)
    report['data'] = dict(split.sizes(), source=split.source, noise=split.noise)
    return report


def _run_grow(split, dim, epochs, new_epochs, init, common):
    t_total = time.perf_counter()

    # 1. the old model
    old, curve_old, t_old = _train(split.n_old_users, split.n_old_items, dim, split.old_train,
                                   epochs=epochs, desc='1/3 train old rows',
                                   evaluate=lambda p: rmse(p, split.old_test), **common)

    # 2. grow both tables (only those that got new rows)
    start = time.perf_counter()
    add = {k: n for k, n in ((MEMBER, split.n_new_users), (BOOK, split.n_new_items)) if n}
    grown, masks = _grow.grow_params({k: mx.nd.array(v) for k, v in old.items()}, add, init,
                                     seed=common['seed'])
    grown_np = {k: v.asnumpy() for k, v in grown.items()}
    t_grow = time.perf_counter() - start

    # 3. train only the new rows, with the masked optimizer; the other table stays as it is
    def evaluate_new(p):
        return rmse(p, split.new_test)
    if len(masks) < 2:
        masks.update({k: _grow.train_rows_from(old[k].shape[0]) for k in (MEMBER, BOOK)
                      if k not in masks})
    new, curve_new, t_new = _train(
        split.n_users, split.n_items, dim, split.new_train, epochs=new_epochs,
        desc='2/3 train new rows (masked)', evaluate=evaluate_new, optimizer='masked',
        optimizer_params={'base': 'adam', 'masks': masks},
        arg_params={k: mx.nd.array(v) for k, v in grown_np.items()}, **common)

    # 4. the reference: everything retrained from scratch on all training data
    everything = _concat(split.old_train, split.new_train)
    full, curve_full, t_full = _train(split.n_users, split.n_items, dim, everything,
                                      epochs=epochs, desc='3/3 full retrain',
                                      evaluate=evaluate_new, **common)

    frozen = sum(_changed(old[k], new[k][:old[k].shape[0]]) for k in (MEMBER, BOOK))
    frozen_total = sum(old[k].size for k in (MEMBER, BOOK))
    trained = sum(_changed(grown_np[k][old[k].shape[0]:], new[k][old[k].shape[0]:])
                  for k in (MEMBER, BOOK))
    before_old, after_old = rmse(old, split.old_test), rmse(new, split.old_test)
    report = {
        'mode': 'grow',
        'frozen_entries_changed': frozen,
        'frozen_entries': frozen_total,
        'new_entries_changed': trained,
        'new_entries': sum(new[k].size - old[k].size for k in (MEMBER, BOOK)),
        'rmse': {'old_pairs_before': before_old, 'old_pairs_after': after_old,
                 'old_pairs_full_retrain': rmse(full, split.old_test),
                 'new_pairs_init': rmse(grown_np, split.new_test),
                 'new_pairs_after': rmse(new, split.new_test),
                 'new_pairs_full_retrain': rmse(full, split.new_test),
                 'new_pairs_train_after': rmse(new, split.new_train)},
        'comparability': {
            'at_init': {'member': _norm_comparison(grown_np[MEMBER], split.n_old_users),
                        'book': _norm_comparison(grown_np[BOOK], split.n_old_items)},
            'after': {'member': _norm_comparison(new[MEMBER], split.n_old_users),
                      'book': _norm_comparison(new[BOOK], split.n_old_items)}},
        'curves': {'old_pairs_phase1': curve_old, 'new_pairs_masked': curve_new,
                   'new_pairs_full_retrain': curve_full},
        'seconds': {'train_old': t_old, 'grow': t_grow, 'train_new_masked': t_new,
                    'full_retrain': t_full, 'total': time.perf_counter() - t_total},
    }
    report['ok'] = frozen == 0 and before_old == after_old
    report['_tables'] = {'old': old, 'init': grown_np, 'new': new}
    return report


def _run_latent_split(split, dim, epochs, new_epochs, common):
    if dim < 2:
        raise CliError('--latent-dim: latent-split needs at least 2 dimensions, received %d'
                       % dim)
    train = _concat(split.old_train, split.new_train)
    test = _concat(split.old_test, split.new_test)
    t_total = time.perf_counter()

    def evaluate(p):
        return rmse(p, test)
    small, curve_small, t_small = _train(split.n_users, split.n_items, dim - 1, train,
                                         epochs=epochs, desc='1/3 train %d dims' % (dim - 1),
                                         evaluate=evaluate, **common)
    # Append one latent column per table, spread like the trained columns (normal with the
    # mean column standard deviation); a zero column would get zero gradient on both sides.
    rng = np.random.default_rng(common['seed'])
    start = time.perf_counter()
    grown = {}
    for k, table in small.items():
        spread = table.std(axis=0).mean()
        column = (spread * rng.standard_normal((table.shape[0], 1))).astype(table.dtype)
        grown[k] = np.concatenate([table, column], axis=1)
    t_grow = time.perf_counter() - start
    masks = {k: train_cols([dim - 1]) for k in grown}
    after, curve_after, t_after = _train(
        split.n_users, split.n_items, dim, train, epochs=new_epochs,
        desc='2/3 train last dim (masked)', evaluate=evaluate, optimizer='masked',
        optimizer_params={'base': 'adam', 'masks': masks},
        arg_params={k: mx.nd.array(v) for k, v in grown.items()}, **common)
    full, curve_full, t_full = _train(split.n_users, split.n_items, dim, train, epochs=epochs,
                                      desc='3/3 full retrain', evaluate=evaluate, **common)
    frozen = sum(_changed(small[k], after[k][:, :dim - 1]) for k in small)
    report = {
        'mode': 'latent-split',
        'frozen_entries_changed': frozen,
        'frozen_entries': sum(v.size for v in small.values()),
        'new_entries_changed': sum(_changed(grown[k][:, -1], after[k][:, -1]) for k in small),
        'new_entries': sum(v.shape[0] for v in small.values()),
        'rmse': {'test_before': rmse(small, test), 'test_init': rmse(grown, test),
                 'test_after': rmse(after, test), 'test_full_retrain': rmse(full, test)},
        'curves': {'test_phase1': curve_small, 'test_masked': curve_after,
                   'test_full_retrain': curve_full},
        'seconds': {'train_old': t_small, 'grow': t_grow, 'train_new_masked': t_after,
                    'full_retrain': t_full, 'total': time.perf_counter() - t_total},
    }
    report['ok'] = frozen == 0
    report['_tables'] = {'old': small, 'init': grown, 'new': after}
    return report


# ---------------------------------------------------------------------------- output
def _f(x):
    return 'n/a' if x is None else '%.4f' % x


def format_report(report):
    """The report as text lines (what ``masked-opt demo`` prints without ``--json``).

    Examples
    --------
    >>> from masked_opt.cli import format_report, run_demo
    >>> from masked_opt.data import synthetic_split
    >>> report = run_demo(synthetic_split(30, 20, 5, 4, per_user=5), epochs=1, new_epochs=1,
    ...                   progress=False)
    >>> print(format_report(report)[3])
    frozen entries changed (old rows, compared on the bits): 0 of 400  OK
    """
    d, s, r, t = report['data'], report['settings'], report['rmse'], report['seconds']
    lines = ['masked-opt demo: %s on %s' % (
        'vocabulary growth' if s['mode'] == 'grow' else 'latent split', d['source'])]
    lines.append('  users %d old + %d new, items %d old + %d new, latent dim %d, Adam lr %g, '
                 'batch %d' % (d['old_users'], d['new_users'], d['old_items'], d['new_items'],
                               s['latent_dim'], s['learning_rate'], s['batch_size']))
    lines.append('  ratings: old train %d, old test %d, new train %d, new test %d'
                 % (d['old_train'], d['old_test'], d['new_train'], d['new_test']))
    ok = report['frozen_entries_changed'] == 0
    what = 'old rows' if s['mode'] == 'grow' else 'first %d columns' % (s['latent_dim'] - 1)
    lines.append('frozen entries changed (%s, compared on the bits): %d of %d  %s'
                 % (what, report['frozen_entries_changed'], report['frozen_entries'],
                    'OK' if ok else 'FAILED'))
    lines.append('trained entries changed: %d of %d'
                 % (report['new_entries_changed'], report['new_entries']))
    noise = '' if d['noise'] is None else '   (label noise, the best possible: %.4f)' % d['noise']
    if s['mode'] == 'grow':
        same = r['old_pairs_before'] == r['old_pairs_after']
        lines.append('RMSE old pairs: before %s  after %s  (%s)   full retrain %s' % (
            _f(r['old_pairs_before']), _f(r['old_pairs_after']),
            'identical' if same else 'CHANGED', _f(r['old_pairs_full_retrain'])))
        lines.append('RMSE new pairs: at init %s  after masked training %s  full retrain %s%s'
                     % (_f(r['new_pairs_init']), _f(r['new_pairs_after']),
                        _f(r['new_pairs_full_retrain']), noise))
        lines.append('comparability of new rows with old rows (row norms, mean +- std; '
                     'KS = Kolmogorov-Smirnov distance of the norm distributions):')
        for when in ('at_init', 'after'):
            for table, c in report['comparability'][when].items():
                if c is None:
                    continue
                lines.append('  %-7s %-6s old %.3f +- %.3f   new %.3f +- %.3f   KS %.3f '
                             '(p %.2g)' % (when.replace('_', ' '), table, c['old_norm_mean'],
                                           c['old_norm_std'], c['new_norm_mean'],
                                           c['new_norm_std'], c['ks_statistic'], c['ks_pvalue']))
    else:
        lines.append('RMSE test: %d dims %s  + last dim at init %s  after masked training %s  '
                     'full retrain %d dims %s%s' % (
                         s['latent_dim'] - 1, _f(r['test_before']), _f(r['test_init']),
                         _f(r['test_after']), s['latent_dim'], _f(r['test_full_retrain']), noise))
    lines.append('wall time: train old %.1f s, grow %.2f s, train new (masked) %.1f s, full '
                 'retrain %.1f s, total %.1f s' % (t['train_old'], t['grow'],
                                                   t['train_new_masked'], t['full_retrain'],
                                                   t['total']))
    return lines


def _check_plot_target(path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CliError("--plot needs matplotlib, which is not installed: pip install "
                       "'masked_opt[plot]' (or pip install matplotlib)") from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError('--plot %s: folder %s does not exist' % (path, folder))
    if not path.lower().endswith(('.png', '.pdf', '.svg')):
        raise CliError('--plot %s: expected a file name ending in .png, .pdf or .svg' % path)


def _plot_report(report, path):
    """Old vs new embeddings (2-D PCA of each table) and the learning curves, into ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tables = report['_tables']
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    grow_mode = report['mode'] == 'grow'
    sizes = {MEMBER: report['data']['old_users'], BOOK: report['data']['old_items']}
    for ax, key in zip(axes[:2], (MEMBER, BOOK), strict=True):
        new = tables['new'][key].astype(np.float64)
        n_old = sizes[key] if grow_mode else new.shape[0]
        centre = new[:n_old].mean(axis=0)
        _, _, vt = np.linalg.svd(new[:n_old] - centre, full_matrices=False)
        xy = (new - centre) @ vt[:2].T
        ax.scatter(xy[:n_old, 0], xy[:n_old, 1], s=6, c='0.6', label='old rows')
        if grow_mode and new.shape[0] > n_old:
            init = (tables['init'][key].astype(np.float64) - centre) @ vt[:2].T
            ax.scatter(init[n_old:, 0], init[n_old:, 1], s=10, marker='x', c='tab:blue',
                       label='new rows at init')
            ax.scatter(xy[n_old:, 0], xy[n_old:, 1], s=10, c='tab:red',
                       label='new rows trained')
        ax.set_title('%s (PCA of old rows)' % key.replace('_weight', ''))
        ax.legend(loc='best', fontsize=8)
    for name, curve in report['curves'].items():
        axes[2].plot(range(1, len(curve) + 1), curve, marker='o', label=name.replace('_', ' '))
    axes[2].set_xlabel('epoch')
    axes[2].set_ylabel('test RMSE')
    axes[2].set_title('learning curves')
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(message)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError('expected a positive %s, received %r'
                                             % (kind.__name__, text)) from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError('expected a positive %s, received %r'
                                             % (kind.__name__, text))
        return value
    return parse


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError('expected a non-negative integer, received %r' % text)
    return value


def _parser():
    parser = _Parser(prog='masked-opt', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    demo = sub.add_parser('demo', help='grow a trained recommender with new users and items '
                          'and train only the new rows (see --help)',
                          description=__doc__.split('\n\n', 1)[1],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    demo.add_argument('--mode', choices=['grow', 'latent-split'], default='grow',
                      help='grow: add users/items, train only them (default); latent-split: '
                      'train only the last latent dimension')
    demo.add_argument('--data', metavar='PATH', help='MovieLens-format ratings '
                      '(user<TAB>item<TAB>rating<TAB>timestamp, like u.data) instead of '
                      'synthetic ones')
    demo.add_argument('--cutoff', type=float, default=d['cutoff'], help='with --data: the '
                      'quantile of timestamps after which first-seen users/items are new '
                      '(default %(default)s)')
    demo.add_argument('--json', action='store_true', help='print the report as JSON')
    demo.add_argument('--plot', metavar='FILE.png', help='draw embeddings and learning curves '
                      '(needs matplotlib: pip install masked_opt[plot])')
    demo.add_argument('--init', default=d['init'], choices=[m for m in _grow.INIT_METHODS
                                                            if m != 'copy'],
                      help='how new rows start (default %(default)s)')
    demo.add_argument('--seed', type=_non_negative_int, default=d['seed'])
    demo.add_argument('--epochs', type=_positive(int), default=d['epochs'],
                      help='epochs of the first model and of the full retrain '
                      '(default %(default)s)')
    demo.add_argument('--new-epochs', type=_positive(int), default=d['new_epochs'],
                      help='epochs of the masked training (default 60 for grow, 10 for '
                      'latent-split)')
    demo.add_argument('--batch-size', type=_positive(int), default=d['batch_size'])
    demo.add_argument('--learning-rate', type=_positive(float), default=d['learning_rate'])
    demo.add_argument('--latent-dim', type=_positive(int), default=d['latent_dim'])
    for flag, key, what in (('--users', 'users', 'old users'), ('--items', 'items', 'old items'),
                            ('--per-user', 'per_user', 'ratings per user')):
        demo.add_argument(flag, type=_positive(int), default=d[key],
                          help='synthetic data: %s (default %%(default)s)' % what)
    demo.add_argument('--new-users', type=_non_negative_int, default=d['new_users'],
                      help='synthetic data: new users (default %(default)s)')
    demo.add_argument('--new-items', type=_non_negative_int, default=d['new_items'],
                      help='synthetic data: new items (default %(default)s)')
    demo.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


def _load_split(args):
    if args.data is None:
        if args.mode == 'grow' and args.new_users + args.new_items == 0:
            raise CliError('--new-users and --new-items are both 0: nothing to grow')
        new = (0, 0) if args.mode == 'latent-split' else (args.new_users, args.new_items)
        return synthetic_split(args.users, args.items, *new, per_user=args.per_user,
                               rank=args.latent_dim, seed=args.seed)
    raw = load_ratings(args.data)
    source = os.path.basename(args.data)
    if args.mode == 'latent-split':
        return random_split(raw, seed=args.seed, source=source)
    return time_split(raw, args.cutoff, seed=args.seed, source=source)


def main(argv=None):
    """Entry point of ``masked-opt``; returns the exit code (0 ok, 1 check failed, 2 input).

    Examples
    --------
    >>> from masked_opt.cli import main
    >>> main(['demo', '--users', '30', '--items', '20', '--new-users', '5', '--new-items',
    ...       '4', '--per-user', '6', '--epochs', '1', '--new-epochs', '1', '--no-progress',
    ...       '--json']) # doctest: +ELLIPSIS
    {...}
    0
    """
    try:
        args = _parser().parse_args(argv)
        if args.plot:
            _check_plot_target(args.plot)
        if args.per_user > args.items and args.data is None:
            raise CliError('--per-user %d: expected at most --items %d (each user rates '
                           'distinct items)' % (args.per_user, args.items))
        split = _load_split(args)
    except (CliError, DataError) as err:
        print('masked-opt: error: %s' % err, file=sys.stderr)
        return 2
    report = run_demo(split, mode=args.mode, latent_dim=args.latent_dim, epochs=args.epochs,
                      new_epochs=args.new_epochs, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, seed=args.seed, init=args.init,
                      progress=not args.no_progress)
    if args.plot:
        _plot_report(report, args.plot)
        report['plot'] = args.plot
    tables = report.pop('_tables')
    del tables
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print('\n'.join(format_report(report)))
        if args.plot:
            print('plot written to %s' % args.plot)
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
