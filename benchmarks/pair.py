"""Two or more methods of one setting, side by side.

``python -m benchmarks.pair OPT ROWS DIM M1 M2 ...``

Prints each method's steps/s over the first method's, timed in interleaved rounds in one
process (as :mod:`benchmarks.throughput` does for all methods). Run it from two checkouts to
compare code versions on the same ratio, e.g. whether a change made ``rows`` slower against
``plain``::

    git worktree add /tmp/before <commit>
    (cd /tmp/before && OMP_NUM_THREADS=1 python -m benchmarks.pair sgd 1000000 8 plain rows)
    OMP_NUM_THREADS=1 python -m benchmarks.pair sgd 1000000 8 plain rows

``--builds N`` builds every method N times, each on arrays of its own, and times all builds
interleaved; a method's time is the median over its builds' medians. One build's speed depends
on where its arrays land in memory: three builds of the same unmasked Adam step (100k x 64)
ran at 34.5, 41.2 and 33.3 ms per step side by side, so a ratio between single builds carries
about +-20% of placement alone. That was before the benchmarks pinned where arrays sit in their
pages (:func:`benchmarks.harness.pin_array_placement`); since, builds of one method agree
within a few percent, and ``--builds`` checks that they do.

``--profile STEPS`` then prints, per method, the operators that took the most time (MXNet's
profiler over STEPS more steps): where a ratio comes from.
"""
import argparse
import statistics

from .harness import interleaved, pin_array_placement, profile_ops
from .training import METHODS, OPTIMIZERS, build


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('opt', choices=sorted(OPTIMIZERS))
    parser.add_argument('rows', type=int)
    parser.add_argument('dim', type=int)
    parser.add_argument('methods', nargs='+', choices=sorted(METHODS))
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--min-seconds', type=float, default=1.0)
    parser.add_argument('--builds', type=int, default=1,
                        help='builds of each method, each on arrays of its own (implies '
                        '--separate when > 1); a method is timed as the median over its builds')
    parser.add_argument('--profile', type=int, default=0, metavar='STEPS',
                        help="after timing, run STEPS more steps of each method's first build "
                        "under MXNet's profiler and print where its step's time goes")
    parser.add_argument('--separate', action='store_true',
                        help='each method on arrays of its own (by default methods of one '
                        'model family share their weight arrays, as in benchmarks.throughput)')
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    if args.builds < 1:
        parser.error('--builds: expected at least 1, received %d' % args.builds)
    steps = {}   # (method, build) -> step
    if args.separate or args.builds > 1:
        # Builds alternate between methods (A1 B1 A2 B2 ...), so that no method gets all
        # the early (or late) allocations.
        for k in range(args.builds):
            for m in args.methods:
                steps[(m, k)] = build([m], args.opt, args.rows, args.dim, batch=1024)[m]
    else:
        shared = build(args.methods, args.opt, args.rows, args.dim, batch=1024)
        steps = {(m, 0): shared[m] for m in args.methods}
    res = interleaved(steps, rounds=args.rounds, min_seconds=args.min_seconds)
    median = {m: statistics.median(res[(m, k)]['median'] for k in range(args.builds))
              for m in args.methods}
    first = median[args.methods[0]]
    print('%s %d x %d: %s' % (args.opt, args.rows, args.dim, ', '.join(
        '%s x%.3f' % (m, first / median[m]) for m in args.methods)))
    if args.builds > 1:
        print('  ms/step per build: %s' % '; '.join(
            '%s %s' % (m, ' '.join('%.2f' % (1000 * res[(m, k)]['median'])
                                   for k in range(args.builds))) for m in args.methods))
    if args.profile > 0:
        for m in args.methods:
            ops = profile_ops(steps[(m, 0)], args.profile, top=6)
            print('  %s, ms/step by operator: %s' % (m, '; '.join(
                '%s %.2f' % (name, ms / args.profile) for name, _, ms in ops)))


if __name__ == '__main__':
    main()
