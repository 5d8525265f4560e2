"""Scale run: 10M rows, 1% new rows, row_sparse gradients; step time against 100k rows.

The forum's model with ``n_items`` = 10M book rows (the table that grew; its last 1% train) and
100k member rows, against the same with 100k book rows, side by side in one process, Adam
(wd = 0), batch 1024, a few hundred steps at 10M. To tell the cost that follows the table
from the update's, each size is also timed for forward + backward alone, for the optimizer
update alone (``Module.update`` on the last gradients) and for MXNet's sparse ``Embedding``
backward alone (imperative), and MXNet's profiler lists the most expensive operators.

Run: ``python -m benchmarks.scale [--quick]``.
"""
import argparse
import itertools

import mxnet as mx

import masked_opt as mo

from .harness import (
    gib,
    interleaved,
    peak_rss_bytes,
    pin_array_placement,
    profile_ops,
    reset_peak_rss,
    table,
)
from .models import DATA_NAMES, LABEL_NAMES, batches, forum_mf
from .training import OPTIMIZERS, n_old

FULL = {'users': 100_000, 'small': 100_000, 'large': 10_000_000, 'dim': 64, 'batch': 1024,
        'rounds': 5, 'steps_per_round': 50}
QUICK = {'users': 2_000, 'small': 2_000, 'large': 20_000, 'dim': 8, 'batch': 64,
         'rounds': 5, 'steps_per_round': 5}


def _module(n_users, n_items, dim, batch):
    mod = mx.mod.Module(forum_mf(n_users, n_items, dim, sparse_grad=True),
                        data_names=DATA_NAMES, label_names=LABEL_NAMES)
    mod.bind([(d, (batch,)) for d in DATA_NAMES], [(lb, (batch,)) for lb in LABEL_NAMES])
    mod.init_params(mx.init.Uniform(0.1))
    mod.init_optimizer(kvstore='local', optimizer='masked', optimizer_params=dict(
        OPTIMIZERS['adam'], base='adam',
        masks={'book_embedding_weight': mo.train_rows_from(n_old(n_items))}))
    return mod


def steps_for(cfg):
    """name -> callable: full step, forward+backward, update alone, for both sizes.

    Examples
    --------
    >>> from benchmarks.scale import QUICK, steps_for
    >>> sorted(steps_for(QUICK))[:3]
    ['emb_backward large', 'emb_backward small', 'fwd_bwd large']
    """
    out = {}
    for size in ('small', 'large'):
        mod = _module(cfg['users'], cfg[size], cfg['dim'], cfg['batch'])
        data = itertools.cycle(batches(cfg['users'], cfg[size], cfg['batch'], 8))

        def step(mod=mod, data=data):
            mod.forward_backward(next(data))
            mod.update()

        def fwd_bwd(mod=mod, data=data):
            mod.forward_backward(next(data))

        out['step ' + size] = step
        out['fwd_bwd ' + size] = fwd_bwd
        out['update ' + size] = mod.update
        weight = mod._exec_group.execs[0].arg_dict['book_embedding_weight']
        out['emb_backward ' + size] = _embedding_backward(weight, cfg['batch'])
    return out


def _embedding_backward(weight, batch):
    """MXNet's sparse Embedding backward alone, imperative (so the profiler sees it alone).

    Runs on a copy-free view of the model's table: ``attach_grad`` only adds a row_sparse
    gradient buffer to it.
    """
    from mxnet import autograd
    rows, dim = weight.shape
    table = weight.reshape(weight.shape)   # a second handle on the same memory
    table.attach_grad(stype='row_sparse')
    ids = mx.nd.array(mx.nd.random.randint(0, rows, (batch,)).asnumpy())

    def step():
        with autograd.record():
            out = mx.nd.Embedding(ids, table, input_dim=rows, output_dim=dim,
                                  sparse_grad=True)
        out.backward()
    return step


def run(quick=False, log=print):
    """Interleaved timing; returns the results and a markdown table.

    Examples
    --------
    >>> from benchmarks.scale import run
    >>> run(quick=True, log=lambda s: None)['results']['rows']
    20000
    """
    cfg = QUICK if quick else FULL
    reset_peak_rss()   # this run's peak, not the earlier parts' of `python -m benchmarks`
    steps = steps_for(cfg)
    res = interleaved(steps, rounds=cfg['rounds'], fixed_steps=cfg['steps_per_round'], log=log)
    res = {name: r['median'] for name, r in res.items()}
    rows = []
    for what in ('step', 'fwd_bwd', 'update', 'emb_backward'):
        small, large = res[what + ' small'], res[what + ' large']
        rows.append([what, '%.2f' % (small * 1e3), '%.2f' % (large * 1e3),
                     '%.2f' % (large / small)])
    # Where the time goes at each size: MXNet's profiler over a few full steps.
    profiles = {size: profile_ops(steps['step ' + size], 10) +
                profile_ops(steps['emb_backward ' + size], 10, top=1)
                for size in ('small', 'large')}
    results = {'rows': cfg['large'], 'small_rows': cfg['small'],
               'ratio': res['step large'] / res['step small'], 'peak_rss': peak_rss_bytes(),
               'times': res, 'profiles': profiles}
    head = ['part of a step', 'ms at %d book rows' % cfg['small'],
            'ms at %d book rows' % cfg['large'], 'ratio']
    note = ('peak RSS of this process (both models): %s; steps at %d rows: %d'
            % (gib(results['peak_rss']), cfg['large'],
               2 + cfg['rounds'] * cfg['steps_per_round']))
    prof = table(['book rows', 'operator (MXNet profiler, 10 steps)', 'calls', 'total ms'],
                 [[cfg[size], '`%s`' % name, calls, '%.1f' % ms]
                  for size in ('small', 'large') for name, calls, ms in profiles[size]])
    return {'results': results, 'markdown': '\n\n'.join([table(head, rows), note, prof])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, seconds')
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    print(run(quick=args.quick)['markdown'])


if __name__ == '__main__':
    main()
