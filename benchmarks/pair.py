"""Two or more methods of one setting, side by side.

``python -m benchmarks.pair OPT ROWS DIM M1 M2 ...``

Prints each method's steps/s over the first method's, timed in interleaved rounds in one
process (as :mod:`benchmarks.throughput` does for all methods). Run it from two checkouts to
compare code versions on the same ratio, e.g. whether a change made ``rows`` slower against
``plain``::

    git worktree add /tmp/before <commit>
    (cd /tmp/before && OMP_NUM_THREADS=1 python -m benchmarks.pair sgd 1000000 8 plain rows)
    OMP_NUM_THREADS=1 python -m benchmarks.pair sgd 1000000 8 plain rows
"""
import argparse

from .harness import interleaved
from .training import METHODS, OPTIMIZERS, build


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('opt', choices=sorted(OPTIMIZERS))
    parser.add_argument('rows', type=int)
    parser.add_argument('dim', type=int)
    parser.add_argument('methods', nargs='+', choices=sorted(METHODS))
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--min-seconds', type=float, default=1.0)
    parser.add_argument('--separate', action='store_true',
                        help='each method on arrays of its own (by default methods of one '
                        'model family share their weight arrays, as in benchmarks.throughput)')
    args = parser.parse_args(argv)
    if args.separate:
        steps = {}
        for m in args.methods:
            steps.update(build([m], args.opt, args.rows, args.dim, batch=1024))
    else:
        steps = build(args.methods, args.opt, args.rows, args.dim, batch=1024)
    res = interleaved(steps, rounds=args.rounds, min_seconds=args.min_seconds)
    first = res[args.methods[0]]['median']
    print('%s %d x %d: %s' % (args.opt, args.rows, args.dim, ', '.join(
        '%s x%.3f' % (m, first / res[m]['median']) for m in args.methods)))


if __name__ == '__main__':
    main()
