"""Scale run: 10M-row tables against 100k, MXNet's sparse Embedding against the converted lookup.

The forum's model with ``n_items`` = 10M book rows and with 100k book rows (100k member rows
both times), d = 16, batch 1024, Adam and SGD, sparse gradients, two methods: plain (the
optimizer alone) and new rows (``'masked'``, the book table's last 1% train). Each model is
timed as built (MXNet's ``Embedding(sparse_grad=True)``, whose CPU backward makes three passes
over every table row) and converted by :func:`masked_opt.convert_embeddings` (the O(batch)
native lookup), and the lookup alone (one (rows, 16) table, 1024 ids, forward + backward).

Two interleaved groups, so that a ratio's two sides always ran side by side: converted against
unconverted (every setting), and the converted settings among themselves (10M against 100k:
MXNet's 10M backward flushes the caches, which would charge the lookups run next to it).
Converted and unconverted models of one size share their weights (``shared_module``); each
has its own optimizer. Peak RSS: one fresh process per model (plain Adam at 10M).

Run: ``python -m benchmarks.scale [--quick]`` (about 2-3 minutes; ``--quick`` seconds).
"""
import argparse
import json

import mxnet as mx

import masked_opt as mo

from .harness import (
    gib,
    interleaved,
    peak_rss_bytes,
    peak_rss_of,
    pin_array_placement,
    table,
)
from .models import DATA_NAMES, LABEL_NAMES, batches, forum_mf
from .training import OPTIMIZERS, n_old, stepper

FULL = {'users': 100_000, 'small': 100_000, 'large': 10_000_000, 'dim': 16, 'batch': 1024,
        'rounds': 7, 'min_seconds': 0.25, 'opts': ('adam', 'sgd')}
QUICK = {'users': 2_000, 'small': 2_000, 'large': 20_000, 'dim': 8, 'batch': 64,
         'rounds': 3, 'min_seconds': 0.0, 'opts': ('adam', 'sgd')}
METHODS = ('plain', 'rows')
SIZES = ('small', 'large')


def _key(opt, method, size, conv):
    return '%s %s %s %s' % (opt, method, size, 'conv' if conv else 'mxnet')


def _models(cfg, size):
    """name -> step callable for every (opt, method, converted?) at one table size."""
    n = cfg[size]
    shapes = [(d, (cfg['batch'],)) for d in DATA_NAMES]
    labels = [(lb, (cfg['batch'],)) for lb in LABEL_NAMES]
    sym = forum_mf(cfg['users'], n, cfg['dim'], sparse_grad=True)
    conv = mo.convert_embeddings(sym)
    data = batches(cfg['users'], n, cfg['batch'], 8)
    owner, mods = None, {}
    for opt in cfg['opts']:
        for method in METHODS:
            for converted in (False, True):
                mod = mx.mod.Module(conv if converted else sym, data_names=DATA_NAMES,
                                    label_names=LABEL_NAMES)
                mod.bind(shapes, labels, shared_module=owner)
                if owner is None:
                    mod.init_params(mx.init.Uniform(0.1))
                    owner = mod
                mods[opt, method, converted] = mod
    # Optimizers only once every module is bound: a module bound with a shared_module whose
    # optimizer exists borrows that optimizer.
    steps = {}
    for (opt, method, converted), mod in mods.items():
        params = dict(OPTIMIZERS[opt])
        if method == 'rows':
            params = dict(params, base=opt, masks={
                'book_embedding_weight': mo.train_rows_from(n_old(n))})
        mod.init_optimizer(kvstore='local', optimizer='masked' if method == 'rows' else opt,
                           optimizer_params=params)
        steps[_key(opt, method, size, converted)] = stepper(mod, data)
    return steps


def lookup_step(rows, dim, batch, converted):
    """Forward + backward of one (rows, dim) table for `batch` ids, imperative (as Gluon runs).

    Examples
    --------
    >>> from benchmarks.scale import lookup_step
    >>> lookup_step(1000, 4, 16, converted=False)()
    """
    from mxnet import autograd
    table = mx.nd.random.uniform(shape=(rows, dim))
    table.attach_grad(stype='row_sparse')
    ids = mx.nd.array(mx.nd.random.randint(0, rows, (batch,)).asnumpy())
    op = getattr(mx.nd, mo.convert.OP if converted else 'Embedding')

    def step():
        with autograd.record():
            out = op(ids, table, input_dim=rows, output_dim=dim, sparse_grad=True)
        out.backward()
    return step


def run(quick=False, log=print):
    """Both interleaved groups and the peak RSS children; returns results and markdown.

    ``python -m benchmarks --quick`` runs it (tests/test_benchmarks_smoke.py); its keys:

    Examples
    --------
    >>> from benchmarks.scale import QUICK, METHODS, SIZES
    >>> [' '.join((opt, m, size)) for opt in QUICK['opts'] for m in METHODS for size in SIZES][:2]
    ['adam plain small', 'adam plain large']
    """
    cfg = QUICK if quick else FULL
    mo.convert.native.available()
    steps = {}
    for size in SIZES:
        steps.update(_models(cfg, size))
        for converted in (False, True):
            steps[_key('-', 'lookup', size, converted)] = lookup_step(
                cfg[size], cfg['dim'], cfg['batch'], converted)
    log('scale: converted against MXNet (%d settings, both sizes)' % (len(steps) // 2))
    res = interleaved(steps, rounds=cfg['rounds'], min_seconds=cfg['min_seconds'], log=log)
    vs = {name: r['median'] for name, r in res.items()}
    log('scale: converted settings, 10M against 100k')
    conv = {k: s for k, s in steps.items() if k.endswith('conv')}
    res = interleaved(conv, rounds=cfg['rounds'], min_seconds=cfg['min_seconds'], log=log)
    alone = {name: r['median'] for name, r in res.items()}
    settings = [(opt, m) for opt in cfg['opts'] for m in METHODS] + [('-', 'lookup')]
    conv_over_mxnet, large_over_small = {}, {}
    rows = []
    for opt, method in settings:
        t = {(size, c): vs[_key(opt, method, size, c)] for size in SIZES for c in (0, 1)}
        for size in SIZES:
            conv_over_mxnet['%s %s %s' % (opt, method, size)] = t[size, 0] / t[size, 1]
        ratio = alone[_key(opt, method, 'large', 1)] / alone[_key(opt, method, 'small', 1)]
        large_over_small['%s %s' % (opt, method)] = ratio
        rows.append([opt, method] + ['%.2f' % (t[k] * 1e3) for k in
                                     (('small', 0), ('small', 1), ('large', 0), ('large', 1))]
                    + ['%.2f' % (t['small', 0] / t['small', 1]),
                       '%.1f' % (t['large', 0] / t['large', 1]),
                       '%.2f' % (t['large', 0] / t['small', 0]), '%.2f' % ratio])
    log('scale: peak RSS, one process per model')
    rss = {c: peak_rss_of('benchmarks.scale', dict(cfg, converted=c)) for c in (False, True)}
    small, large = cfg['small'], cfg['large']
    head = ['optimizer', 'method', 'ms MXNet %d' % small, 'ms converted %d' % small,
            'ms MXNet %d' % large, 'ms converted %d' % large,
            'converted / MXNet %d (speed)' % small, 'converted / MXNet %d (speed)' % large,
            'MXNet %d / %d (time)' % (large, small),
            'converted %d / %d (time, own group)' % (large, small)]
    note = ('ms per step (forward + backward + update; `lookup`: one table, forward + backward '
            'alone), median of %d interleaved rounds; d = %d, batch %d. Peak RSS of one process '
            'per model, plain Adam at %d rows: MXNet %s, converted %s (x%.2f).'
            % (cfg['rounds'], cfg['dim'], cfg['batch'], large, gib(rss[False]['peak_rss']),
               gib(rss[True]['peak_rss']), rss[True]['peak_rss'] / rss[False]['peak_rss']))
    results = {'rows': large, 'small_rows': small, 'conv_over_mxnet': conv_over_mxnet,
               'large_over_small': large_over_small, 'times': vs, 'times_conv': alone,
               'rss': {str(k): v['peak_rss'] for k, v in rss.items()},
               'rss_ratio': rss[True]['peak_rss'] / rss[False]['peak_rss']}
    return {'results': results, 'markdown': table(head, rows) + '\n\n' + note}


def targets(r):
    """(target, worst value, met, detail) rows for ``python -m benchmarks``'s targets table.

    Examples
    --------
    >>> from benchmarks.scale import targets
    >>> r = {'rows': 10, 'small_rows': 1, 'rss_ratio': 0.9, 'large_over_small': {
    ...     '- lookup': 1.2, 'adam plain': 1.5, 'adam rows': 1.9},
    ...     'conv_over_mxnet': {'adam plain small': 1.1, 'adam plain large': 30.0}}
    >>> [(t.split(',')[0], ok) for t, _, ok, _ in targets(r)][:2]
    [('lookup forward+backward', True), ('forum-model step', True)]
    """
    big, small = r['rows'], r['small_rows']
    los, cvm = r['large_over_small'], r['conv_over_mxnet']
    out = []

    def add(target, pairs, bar, worst=max):
        if pairs:
            value = worst(v for _, v in pairs)
            ok = value <= bar if worst is max else value >= bar
            out.append((target, value, ok, 'worst %.2f; %s' % (value, ', '.join(
                '%s: %.2f' % kv for kv in pairs))))
    add('lookup forward+backward, converted, %d / %d rows <= 1.5 (time)' % (big, small),
        [(k, v) for k, v in los.items() if k.endswith('lookup')], 1.5)
    add('forum-model step, plain sparse, converted, %d / %d rows <= 2 (time)' % (big, small),
        [(k, v) for k, v in los.items() if k.endswith(' plain')], 2.0)
    add('forum-model step, masked new rows (1%%), converted, %d / %d rows <= 2 (time)'
        % (big, small), [(k, v) for k, v in los.items() if k.endswith(' rows')], 2.0)
    for size, n, bar in (('small', small, 1.0), ('large', big, 10.0)):
        add('converted / unconverted step at %d rows >= %g (speed)' % (n, bar),
            [(k[:-len(size) - 1], v) for k, v in cvm.items()
             if k.endswith(' ' + size) and 'lookup' not in k], bar, worst=min)
    out.append(('peak RSS, converted / unconverted, %d rows <= 1.0' % big, r['rss_ratio'],
                r['rss_ratio'] <= 1.0, '%.2f' % r['rss_ratio']))
    return out


def _child(cfg):
    """One plain-Adam model at the large size, a few steps; prints its peak RSS (JSON)."""
    n = cfg['large']
    sym = forum_mf(cfg['users'], n, cfg['dim'], sparse_grad=True)
    if cfg['converted']:
        sym = mo.convert_embeddings(sym)
    mod = mx.mod.Module(sym, data_names=DATA_NAMES, label_names=LABEL_NAMES)
    mod.bind([(d, (cfg['batch'],)) for d in DATA_NAMES],
             [(lb, (cfg['batch'],)) for lb in LABEL_NAMES])
    mod.init_params(mx.init.Uniform(0.1))
    mod.init_optimizer(kvstore='local', optimizer='adam', optimizer_params=OPTIMIZERS['adam'])
    step = stepper(mod, batches(cfg['users'], n, cfg['batch'], 4))
    for _ in range(5):
        step()
    mx.nd.waitall()
    print(json.dumps({'peak_rss': peak_rss_bytes()}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, seconds')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    if args.child:
        return _child(json.loads(args.child))
    out = run(quick=args.quick)
    print(out['markdown'])
    print()
    print(table(['target', 'measured', 'verdict'],
                [[t, d, 'met' if ok else 'missed'] for t, _, ok, d in targets(out['results'])]))


if __name__ == '__main__':
    main()
