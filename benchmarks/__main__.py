"""Run every benchmark and check the targets: ``python -m benchmarks [--quick]``.

Parts (``--only`` picks some): ``step`` (the optimizer step alone), ``throughput`` (the
forum's model, every method side by side, and peak RSS per method), ``state`` (Adam state
bytes), ``scale`` (10M rows against 100k, MXNet's sparse Embedding against the converted
lookup). Markdown tables go to stdout (and ``--out``),
progress to stderr. The full run takes ~10 minutes on 2 cores; ``--quick`` runs tiny
sizes in well under a minute to check that everything works (its numbers mean nothing).
"""
import argparse
import os
import sys
import time

from . import scale, state, step, throughput
from .harness import pin_array_placement

PARTS = ('step', 'throughput', 'state', 'scale')


def _worst(values):
    return min(values) if values else float('nan')


def targets(out):
    """Rows (target, measured, verdict) from the results of the parts that ran.

    Examples
    --------
    >>> from benchmarks.__main__ import targets
    >>> targets({})
    []
    """
    rows = []

    def add(target, value, ok, detail):
        rows.append([target, detail, 'met' if ok else 'missed'])

    if 'throughput' in out:
        res = out['throughput']['results']

        def ratios(a, b, where=lambda r: True):
            return ['%s %d/%d: %.2f' % (r['opt'], r['n'], r['dim'],
                                        r['times'][b] / r['times'][a])
                    for r in res if where(r) and a in r['times'] and b in r['times']], \
                   [r['times'][b] / r['times'][a]
                    for r in res if where(r) and a in r['times'] and b in r['times']]
        big = lambda r: r['dim'] >= 64   # noqa: E731  (100k x 64 and 1M x 64)
        small = lambda r: r['dim'] < 64   # noqa: E731  (100k x 8, 1M x 8; --quick's size)
        for target, a, b, bar, where in [
                # The native-kernel targets (sparse gradients), per size.
                ('new rows sparse >= 0.95x plain sparse at d = 8', 'rows_sparse',
                 'plain_sparse', 0.95, small),
                ('new rows sparse >= 1.05x plain sparse at d = 64', 'rows_sparse',
                 'plain_sparse', 1.05, big),
                ('latent split sparse >= 0.9x plain sparse at d = 8', 'cols_sparse',
                 'plain_sparse', 0.9, small),
                ('latent split sparse >= 1.0x plain sparse at d = 64', 'cols_sparse',
                 'plain_sparse', 1.0, big),
                ('latent split sparse >= 0.9x split-embedding (A) sparse at d = 8',
                 'cols_sparse', 'split_sparse', 0.9, small),
                ('latent split sparse >= 0.95x split-embedding (A) sparse at d = 64',
                 'cols_sparse', 'split_sparse', 0.95, big),
                ('latent split dense >= 0.8x split-embedding (A) dense at d = 64', 'cols',
                 'split', 0.8, big),
                # The in-place column update against the copy-out/copy-back path it replaced.
                ('latent split dense >= 1.0x the pure dense path at d = 8', 'cols',
                 'cols_pure', 1.0, small),
                ('latent split dense >= 1.15x the pure dense path at d = 64', 'cols',
                 'cols_pure', 1.15, big),
                ('new rows dense >= 1.4x plain dense (no regression)', 'rows', 'plain', 1.4,
                 None),
                ('>= 10x the one_hot workaround at 100k (masked rows, sparse)', 'rows_sparse',
                 'onehot', 10.0, lambda r: r['n'] == 100_000),
                ('>= 10x the one_hot workaround at 100k (masked rows, dense)', 'rows',
                 'onehot', 10.0, lambda r: r['n'] == 100_000)]:
            text, values = ratios(a, b, where or (lambda r: True))
            if values:
                add(target, _worst(values), _worst(values) >= bar,
                    'worst %.2f; %s' % (_worst(values), ', '.join(text)))
        rss = {}
        for r in out['throughput']['rss']:
            rss.setdefault((r['opt'], r['n'], r['dim']), {})[r['rss_method']] = r['peak_rss']
        text, values = [], []
        for (opt, n, dim), m in rss.items():
            for method in ('rows', 'cols', 'rows_sparse', 'cols_sparse'):
                if method in m and 'plain' in m:
                    values.append(m[method] / m['plain'])
                    text.append('%s %d/%d %s: %.2f' % (opt, n, dim, method, values[-1]))
        if values:
            add('peak RSS <= plain unmasked training', max(values), max(values) <= 1.0,
                'worst %.2f; %s' % (max(values), ', '.join(text)))
    if 'state' in out:
        values = [r['rows'] / r['plain'] for r in out['state']['results']]
        add('Adam state for 1% trainable rows <= 2% of unmasked', max(values),
            max(values) <= 0.02, 'worst %.4f over %d sizes' % (max(values), len(values)))
    if 'scale' in out:   # 10M rows against 100k, converted lookup against MXNet's Embedding
        for target, value, ok, detail in scale.targets(out['scale']['results']):
            add(target, value, ok, detail)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, well under a minute')
    parser.add_argument('--only', nargs='+', choices=PARTS, default=list(PARTS))
    parser.add_argument('--out', help='also write the markdown report to this file')
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    os.environ.setdefault('OMP_NUM_THREADS', '1')   # for the subprocesses; see docs

    def log(message):
        print(message, file=sys.stderr, flush=True)

    start = time.time()
    out, report = {}, []
    modules = {'step': step, 'throughput': throughput, 'state': state, 'scale': scale}
    for part in PARTS:
        if part not in args.only:
            continue
        t0 = time.time()
        result = modules[part].run(quick=args.quick, log=log)
        if isinstance(result, str):   # step.run returns its table
            result = {'markdown': result}
        out[part] = result
        report.append('## %s (%.0f s)\n\n%s' % (part, time.time() - t0, result['markdown']))
    from .harness import table
    rows = targets(out)
    if rows:
        report.append('## targets%s\n\n%s' % (
            ' (--quick: tiny sizes, the verdicts mean nothing)' if args.quick else '',
            table(['target', 'measured (ratio)', 'verdict'], rows)))
    report.append('total %.0f s' % (time.time() - start))
    text = '\n\n'.join(report)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
