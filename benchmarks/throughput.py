"""Training throughput of the forum's model: masked_opt against plain training and the workarounds.

One process per setting (optimizer, rows, dim) holds every method side by side and times them in
interleaved rounds (:func:`benchmarks.harness.interleaved`); the ratios are steps/s of each
method over steps/s of plain unmasked training with dense gradients (``x plain``) and with
row_sparse gradients (``x plain sparse``), measured in that same process. Peak RSS needs a
process per method (:func:`peak_rss`).

The one_hot workaround (B) runs only where it can: its activations are ``batch x rows`` floats,
and MXNet's ``one_hot`` aborts from 2**29 elements on; at larger sizes its memory is computed
(:func:`benchmarks.models.one_hot_bytes`) and reported instead.

Run: ``python -m benchmarks.throughput [--quick]``.
"""
import argparse
import json
import sys

from .harness import (
    gib,
    interleaved,
    peak_rss_bytes,
    peak_rss_of,
    pin_array_placement,
    table,
    time_chunk,
)
from .models import ONE_HOT_MAX_ELEMENTS, one_hot_bytes
from .training import METHODS, OPTIMIZERS, build

FULL = {'sizes': [(100_000, 8), (100_000, 64), (1_000_000, 8), (1_000_000, 64)],
        'batch': 1024, 'rounds': 7, 'min_seconds': 1.0,
        'rss_sizes': [(1_000_000, 64), (100_000, 64)], 'rss_steps': 3}
# --quick: one tiny setting timed in this process, and two RSS subprocesses (plain, masked
# sparse rows) for Adam: it checks that everything runs, its numbers mean nothing.
QUICK = {'sizes': [(2_000, 8)], 'batch': 64, 'rounds': 5, 'min_seconds': 0.01,
         'rss_sizes': [(2_000, 8)], 'rss_steps': 2, 'in_process': True,
         'rss_methods': ['plain', 'rows_sparse'], 'rss_optimizers': ['adam']}

# The methods of the full run: rows_pure is for benchmarks.pair (new rows on the pure dense
# path); cols_pure stays, "latent split dense / pure dense path" is a target's ratio.
TIMED = [m for m in METHODS if m != 'rows_pure']

# The one_hot workaround's limit, with a margin for the rest of the process.
ONE_HOT_MAX_BYTES = 8 * 2 ** 30


def methods_for(n, batch):
    """Every method that can run at this size (one_hot only where it fits).

    Examples
    --------
    >>> from benchmarks.throughput import methods_for
    >>> 'onehot' in methods_for(100_000, 1024), 'onehot' in methods_for(1_000_000, 1024)
    (True, False)
    """
    fits = (batch * n < ONE_HOT_MAX_ELEMENTS and one_hot_bytes(batch, n) <= ONE_HOT_MAX_BYTES)
    return [m for m in TIMED if m != 'onehot' or fits]


def measure(opt, n, dim, batch, rounds, min_seconds, log=None):
    """Median seconds per step of every method of one setting, side by side in this process.

    Examples
    --------
    >>> from benchmarks.throughput import measure
    >>> r = measure('sgd', 500, 8, 32, rounds=5, min_seconds=0.0)
    >>> sorted(r)[:3]
    ['cols', 'cols_sparse', 'onehot']
    """
    steps = build(methods_for(n, batch), opt, n, dim, batch=batch)
    res = interleaved(steps, rounds=rounds, min_seconds=min_seconds, log=log)
    return {m: r['median'] for m, r in res.items()}


def _child(config):
    """Entry of a subprocess: one setting side by side, or one method's peak RSS."""
    if config.get('rss_method'):
        method = config['rss_method']
        step = build([method], config['opt'], config['n'], config['dim'],
                     batch=config['batch'])[method]
        seconds = time_chunk(step, config['steps'])
        return {'peak_rss': peak_rss_bytes(), 'seconds': seconds}
    times = measure(config['opt'], config['n'], config['dim'], config['batch'],
                    config['rounds'], config['min_seconds'])
    return {'times': times, 'peak_rss': peak_rss_bytes()}


def run_settings(cfg, log=print):
    """Every (optimizer, size) setting, each in its own process; returns the results list."""
    out = []
    for opt in OPTIMIZERS:
        for n, dim in cfg['sizes']:
            config = {'opt': opt, 'n': n, 'dim': dim, 'batch': cfg['batch'],
                      'rounds': cfg['rounds'], 'min_seconds': cfg['min_seconds']}
            if cfg.get('in_process'):
                res = _child(config)
            else:
                res = peak_rss_of('benchmarks.throughput', config)
            out.append(dict(config, times=res['times']))
            log('throughput %s n=%d d=%d: %s' % (opt, n, dim, ', '.join(
                '%s %.1f/s' % (m, 1 / t) for m, t in res['times'].items())))
    return out


def peak_rss(cfg, log=print):
    """Peak RSS of each method trained alone in a fresh process (Adam and SGD)."""
    out = []
    for opt in cfg.get('rss_optimizers', OPTIMIZERS):
        for n, dim in cfg['rss_sizes']:
            for method in cfg.get('rss_methods') or methods_for(n, cfg['batch']):
                config = {'opt': opt, 'n': n, 'dim': dim, 'batch': cfg['batch'],
                          'rss_method': method, 'steps': cfg['rss_steps']}
                res = peak_rss_of('benchmarks.throughput', config)
                out.append(dict(config, peak_rss=res['peak_rss']))
                log('rss %s n=%d d=%d %s: %s' % (opt, n, dim, method, gib(res['peak_rss'])))
    return out


def _fmt(t, ref):
    return '%.1f (x%.2f)' % (1 / t, ref / t)


def throughput_table(results):
    """Markdown: steps/s and ratios of every method, one row per setting."""
    order = TIMED
    header = ['optimizer', 'rows', 'dim'] + ['%s steps/s (x plain)' % m for m in order]
    rows = []
    for r in results:
        t = r['times']
        cells = [_fmt(t[m], t['plain']) if m in t else 'infeasible (%s)' % gib(
            one_hot_bytes(r['batch'], r['n'])) for m in order]
        rows.append([r['opt'], r['n'], r['dim']] + cells)
    return table(header, rows)


def ratio_table(results):
    """Markdown: the ratios the targets name, one row per setting."""
    rows = []
    for r in results:
        t = r['times']

        def x(a, b, t=t):
            return '%.2f' % (t[b] / t[a])
        rows.append([r['opt'], r['n'], r['dim'], x('rows', 'plain'), x('cols', 'plain'),
                     x('rows_sparse', 'plain_sparse'), x('cols_sparse', 'plain_sparse'),
                     x('cols_sparse', 'split_sparse'), x('cols', 'split'),
                     x('cols', 'cols_pure'),
                     x('rows_sparse', 'onehot') if 'onehot' in t else 'n/a',
                     x('rows', 'onehot') if 'onehot' in t else 'n/a'])
    return table(['optimizer', 'rows', 'dim', 'rows dense / plain', 'cols dense / plain',
                  'rows sparse / plain sparse', 'cols sparse / plain sparse',
                  'cols sparse / (A) sparse', 'cols dense / (A) dense',
                  'cols dense / pure dense path',
                  'rows sparse / (B) one_hot', 'rows dense / (B) one_hot'], rows)


def rss_table(rss):
    """Markdown: peak RSS per method, with the ratio to plain dense training."""
    by = {}
    for r in rss:
        by.setdefault((r['opt'], r['n'], r['dim']), {})[r['rss_method']] = r['peak_rss']
    rows = []
    for (opt, n, dim), m in by.items():
        rows.append([opt, n, dim] + ['%s (x%.2f)' % (gib(m[k]), m[k] / m['plain'])
                                     if k in m else '-' for k in TIMED])
    return table(['optimizer', 'rows', 'dim'] + TIMED, rows)


def run(quick=False, log=print):
    """Every setting and the peak RSS runs; returns results and markdown tables.

    Examples
    --------
    >>> from benchmarks.throughput import run
    >>> out = run(quick=True, log=lambda s: None)   # ~20 s: two subprocesses
    >>> [r['opt'] for r in out['results']]
    ['sgd', 'adam']
    """
    cfg = QUICK if quick else FULL
    results = run_settings(cfg, log=log)
    rss = peak_rss(cfg, log=log)
    return {'results': results, 'rss': rss,
            'markdown': '\n\n'.join([throughput_table(results), ratio_table(results),
                                      rss_table(rss)])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, seconds')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    print(run(quick=args.quick, log=lambda s: print(s, file=sys.stderr))['markdown'])


if __name__ == '__main__':
    main()
