"""Command line: masked-opt demo (also python -m masked_opt demo).

The forum's job end to end, on the forum's unmodified matrix-factorisation model
(member_embedding, book_embedding, prediction 1 - <member, book>), once per seed:

--mode grow (default): vocabulary growth
    train the model on the old users and items; grow both tables with the users and items
    that arrived later (new rows drawn from the old rows' mean and covariance); train only
    the new rows with the 'masked' optimizer (Adam, learning rate halved every 40 epochs).
    Report: frozen entries changed (compared on the bits); RMSE on the new-pair test ratings
    of the new rows at init, after masked training, of the ceiling (the best new rows given
    the frozen old ones: ridge fold-in per new row), of a full retrain from scratch and of
    two floors (global mean; bias only mu + b_u + b_i); the gap of masked training to the
    ceiling; a breakdown by pair type; how the new rows' norms compare with the old ones.
--mode latent-split: the forum's first case
    train a model with latent-dim - 1 dimensions, append one latent dimension to both
    tables and train only that column; the ceiling is the best last column given the others.

wd and the number of epochs of every training run are chosen on validation ratings carved
out of the training ratings; the test ratings are used once, at the end. Every figure is the
mean +- sd over --seeds seeds (per-seed values in --json).

Data: synthetic ratings from hidden low-rank factors (default), or --data PATH in MovieLens
format, split by time at --cutoff (default 0.8: users and items first seen in the last 20%
of ratings are new), or, with --new-items/--new-users FRACTION, whole items/users held out at
random. A --data file holds at least 20 ratings; ids and timestamps are integers that fit
int64, ratings numbers within +-1e6 (every rating equal is fine). Figures that rest on fewer
than 50 test ratings, or 50 training ratings of the masked phase, carry a note saying how
uncertain they are. Exit code 0 when the frozen entries are bit-identical, 1 when not, 2 on
bad input or a training run that diverges (one-line message, no traceback).
"""
import argparse
import json
import math
import os
import sys

from . import grow as _grow
from .demo import run_seeds
from .demo.data import DEFAULT_CUTOFF, DataError
from .demo.files import holdout_split, load_ratings, random_split, time_split
from .demo.plot import PlotError
from .demo.report import format_report
from .demo.run import DemoError
from .demo.synthetic import synthetic_split

__all__ = ['main']

SYNTHETIC = dict(users=600, items=400, new_users=120, new_items=80, per_user=40)


class CliError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


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


def _count_or_share(text):
    """A count (synthetic data) or a share in [0, 1) (with --data): checked in _load_split."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError('expected a non-negative number, received %r' % text)
    return text


def _parser():
    parser = _Parser(prog='masked-opt', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    sub.add_parser('info', help='which update path runs here: the native sparse operators or '
                   'the pure MXNet path, and why')
    demo = sub.add_parser('demo', help='grow a trained recommender with new users and items '
                          'and train only the new rows (see demo --help)',
                          description=__doc__.split('\n\n', 1)[1],
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument('--mode', choices=['grow', 'latent-split'], default='grow',
                      help='grow: add users/items, train only them (default); latent-split: '
                      'train only the last latent dimension')
    demo.add_argument('--data', metavar='PATH', help='MovieLens-format ratings '
                      '(user<TAB>item<TAB>rating<TAB>timestamp, like u.data) instead of '
                      'synthetic ones')
    demo.add_argument('--cutoff', type=float, default=None, help='with --data: the quantile '
                      'of timestamps after which first-seen users/items are new (default %g)'
                      % DEFAULT_CUTOFF)
    demo.add_argument('--json', action='store_true', help='print the report as JSON')
    demo.add_argument('--plot', metavar='FILE.png', help='draw the run: the verdict on the '
                      'frozen entries, the gap to the ceiling per epoch (log scale, every seed) '
                      'and test RMSE per model (.png, .pdf or .svg)')
    demo.add_argument('--init', default=_grow.DEFAULT_INIT,
                      choices=[m for m in _grow.INIT_METHODS if m != 'copy'],
                      help='how new rows start (default %(default)s)')
    demo.add_argument('--seed', type=_non_negative_int, default=0,
                      help='first seed (default %(default)s)')
    demo.add_argument('--seeds', type=_positive(int), default=3,
                      help='number of seeds, --seed, --seed + 1, ... (default %(default)s)')
    demo.add_argument('--epochs', type=_positive(int), default=40,
                      help='most epochs of the old model and of the full retrain '
                      '(default %(default)s; the best epoch on validation is kept)')
    demo.add_argument('--retrain-learning-rate', type=_positive(float), default=0.03,
                      help='Adam learning rate of the old model and of the full retrain '
                      '(default %(default)s)')
    demo.add_argument('--retrain-halve-every', type=_positive(int), default=8,
                      help='halve it every that many epochs (default %(default)s)')
    demo.add_argument('--new-epochs', type=_positive(int), default=None,
                      help='epochs of the masked training (default 240 for grow, 60 for '
                      'latent-split)')
    demo.add_argument('--halve-every', type=_positive(int), default=None,
                      help='halve the masked phase\'s learning rate every that many epochs '
                      '(default 40 for grow, 15 for latent-split)')
    demo.add_argument('--batch-size', type=_positive(int), default=128)
    demo.add_argument('--learning-rate', type=_positive(float), default=0.01,
                      help='Adam learning rate of the masked phase (default %(default)s)')
    demo.add_argument('--latent-dim', type=_positive(int), default=8)
    for flag, key, what in (('--users', 'users', 'old users'), ('--items', 'items', 'old items'),
                            ('--per-user', 'per_user', 'ratings per user')):
        demo.add_argument(flag, type=_positive(int), default=None,
                          help='synthetic data: %s (default %d)' % (what, SYNTHETIC[key]))
    for flag, key in (('--new-users', 'new_users'), ('--new-items', 'new_items')):
        demo.add_argument(flag, type=_count_or_share, default=None,
                          help='synthetic data: how many new %s (default %d); with --data: the '
                          'share of %s ids held out at random as new ones (e.g. 0.1), instead '
                          'of the time split' % (key[4:], SYNTHETIC[key], key[4:-1]))
    demo.add_argument('--no-progress', action='store_true', help='no progress bar (one bar for '
                      'the whole run: seed, stage and the time left in all)')
    return parser


def _synthetic_sizes(args):
    sizes = {}
    for key in SYNTHETIC:
        value = getattr(args, key)
        if value is None:
            value = SYNTHETIC[key]
        elif key.startswith('new_'):
            if not float(value).is_integer():
                raise CliError('--%s %s: expected a whole number of new rows for synthetic data '
                               '(a share like 0.1 needs --data)' % (key.replace('_', '-'), value))
            value = int(float(value))
        sizes[key] = value
    if args.mode == 'grow' and sizes['new_users'] + sizes['new_items'] == 0:
        raise CliError('--new-users and --new-items are both 0: nothing to grow')
    if sizes['per_user'] > sizes['items']:
        raise CliError('--per-user %d: expected at most --items %d (each user rates distinct '
                       'items)' % (sizes['per_user'], sizes['items']))
    return sizes


def _split_maker(args):
    """``seed -> Split`` for the chosen data; every input check happens here, before training."""
    if args.data is None:
        if args.cutoff is not None:
            raise CliError('--cutoff %s: only applies with --data (the synthetic data has no '
                           'timestamps); drop it or add --data PATH' % args.cutoff)
        sizes = _synthetic_sizes(args)
        if args.mode == 'latent-split':
            sizes.update(new_users=0, new_items=0)

        def make(seed):
            return synthetic_split(sizes['users'], sizes['items'], sizes['new_users'],
                                   sizes['new_items'], per_user=sizes['per_user'],
                                   rank=args.latent_dim, seed=seed)
        make(args.seed)  # sizes so small that a set is empty fail now, with a message
        return make
    for flag in ('users', 'items', 'per_user'):
        if getattr(args, flag) is not None:
            raise CliError('--%s: only applies to synthetic data, not with --data'
                           % flag.replace('_', '-'))
    raw = load_ratings(args.data)
    source = os.path.basename(args.data)
    shares = {k: getattr(args, k) for k in ('new_users', 'new_items')}
    if args.mode == 'latent-split':
        return lambda seed: random_split(raw, seed=seed, source=source)
    if any(v is not None for v in shares.values()):
        if args.cutoff is not None:
            raise CliError('--cutoff with --new-users/--new-items: choose one split (time '
                           'cut-off, or ids held out at random)')
        values = {k: float(v) if v is not None else 0.0 for k, v in shares.items()}
        holdout_split(raw, seed=args.seed, source=source, **values)
        return lambda seed: holdout_split(raw, seed=seed, source=source, **values)
    cutoff = DEFAULT_CUTOFF if args.cutoff is None else args.cutoff
    time_split(raw, cutoff, seed=args.seed, source=source)
    return lambda seed: time_split(raw, cutoff, seed=seed, source=source)


def native_info():
    """What ``masked-opt info`` prints: versions and which update paths run.

    The native operators (row_sparse gradients), and the in-place column update for dense
    gradients with the result of its self-check against MXNet's kernels
    (:mod:`masked_opt.inplace_check`, run here if it has not run).

    Examples
    --------
    >>> from masked_opt.cli import native_info
    >>> text = native_info()
    >>> 'native sparse operators:' in text and 'in-place dense update:' in text
    True
    """
    import mxnet as mx

    from . import __version__, inplace_check, native
    st = native.status()
    if st.loaded:
        path = 'loaded from %s (contiguous 0/1 blocks with SGD/Adam on CPU run natively)' % st.path
    else:
        path = 'not used, the pure MXNet path runs (same bits, slower): %s' % st.reason
    ip = inplace_check.status()
    if ip.usable:
        inplace = ('used (SGD/Adam, one range of rows and columns, CPU): matched MXNet %s\'s '
                   'kernels bit for bit on %d cases' % (mx.__version__, ip.cases))
    else:
        inplace = 'off, the pure dense path runs (same bits, slower): %s' % ip.reason
    return 'masked_opt %s, mxnet %s\nnative sparse operators: %s\nin-place dense update: %s' % (
        __version__, mx.__version__, path, inplace)


def main(argv=None):
    """Entry point of ``masked-opt``; returns the exit code (0 ok, 1 check failed, 2 input).

    Examples
    --------
    >>> from masked_opt.cli import main
    >>> main(['demo', '--users', '30', '--items', '20', '--new-users', '5', '--new-items',
    ...       '4', '--per-user', '6', '--epochs', '1', '--new-epochs', '1', '--seeds', '1',
    ...       '--no-progress', '--json']) # doctest: +ELLIPSIS
    {...}
    0
    """
    try:
        args = _parser().parse_args(argv)
        if args.command == 'info':
            print(native_info())
            return 0
        # MXNet logs "Subgraph backend MKLDNN is activated." at every bind, ten times a seed,
        # into the progress bar; read at bind time, so setting it here is early enough.
        os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')
        if args.plot:
            from .demo.plot import check_target
            check_target(args.plot)
        if args.mode == 'latent-split' and args.latent_dim < 2:
            raise CliError('--latent-dim %d: latent-split trains the last of at least 2 latent '
                           'dimensions; use --latent-dim 2 or more' % args.latent_dim)
        make_split = _split_maker(args)
        settings = dict(latent_dim=args.latent_dim, epochs=args.epochs,
                        new_epochs=args.new_epochs, halve_every=args.halve_every,
                        batch_size=args.batch_size, learning_rate=args.learning_rate,
                        retrain_learning_rate=args.retrain_learning_rate,
                        retrain_halve_every=args.retrain_halve_every, init=args.init)
        report = run_seeds(make_split, range(args.seed, args.seed + args.seeds),
                           mode=args.mode, progress=not args.no_progress, **settings)
    except (CliError, DataError, DemoError, PlotError) as err:
        print('masked-opt: error: %s' % err, file=sys.stderr)
        return 2
    if args.plot:
        from .demo.plot import plot_report
        plot_report(report, args.plot)
        report['plot'] = args.plot
    for seed_report in report['per_seed']:
        seed_report.pop('_tables', None)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print('\n'.join(format_report(report)))
        if args.plot:
            print('plot written to %s' % args.plot)
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
