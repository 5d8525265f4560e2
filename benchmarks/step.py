"""The optimizer step alone: masked_opt against the wrapped optimizer unmasked.

One ``(n, dim)`` table, one gradient (dense, or row_sparse with the rows of a batch of 1024 ids,
as ``Embedding(sparse_grad=True)`` produces it), and ``Optimizer.update`` called directly: no
network, so the ratio is the cost of the update paths themselves. Masks: new rows (1% of rows
trainable) and a latent split (1 of 8 columns).

Run: ``python -m benchmarks.step [--quick]``.
"""
import argparse
import itertools

import mxnet as mx
import numpy as np

import masked_opt as mo

from .harness import interleaved, pin_array_placement, table
from .training import OPTIMIZERS, n_old, n_train_cols

NAME = 'table_weight'


def _masks(kind, n, dim):
    if kind == 'rows':
        return mo.train_rows_from(n_old(n))
    return mo.train_cols(range(dim - n_train_cols(dim), dim))


def _grad(n, dim, sparse, batch, rng):
    if not sparse:
        return mx.nd.array(rng.normal(size=(n, dim)).astype(np.float32))
    ids = np.unique(rng.randint(0, n, batch))
    return mx.nd.sparse.row_sparse_array(
        (rng.normal(size=(ids.size, dim)).astype(np.float32), ids), shape=(n, dim))


def steps_for(opt, n, dim, sparse, batch=1024, seed=0):
    """name -> one-step callable for unmasked, masked rows and masked cols.

    Examples
    --------
    >>> from benchmarks.step import steps_for
    >>> sorted(steps_for('adam', 1000, 8, sparse=True))
    ['cols', 'rows', 'unmasked']
    """
    rng = np.random.RandomState(seed)
    grad = _grad(n, dim, sparse, batch, rng)
    params = dict(OPTIMIZERS[opt], rescale_grad=1.0 / batch)
    out = {}
    for kind in ('unmasked', 'rows', 'cols'):
        weight = mx.nd.array(rng.uniform(-0.1, 0.1, (n, dim)).astype(np.float32))
        if kind == 'unmasked':
            optimizer = mx.optimizer.create(opt, param_idx2name={0: NAME}, **params)
        else:
            optimizer = mo.Masked(base=opt, masks={NAME: _masks(kind, n, dim)},
                                  param_idx2name={0: NAME}, **params)
        state = optimizer.create_state_multi_precision(0, weight)
        out[kind] = _bind(optimizer, weight, grad, state)
    return out


def _bind(optimizer, weight, grad, state):
    def step():
        optimizer.update_multi_precision(0, weight, grad, state)
    return step


def run(quick=False, log=print):
    """Time every setting; return the markdown table.

    Examples
    --------
    >>> from benchmarks.step import run
    >>> 'unmasked' in run(quick=True, log=lambda s: None)
    True
    """
    sizes = [(2000, 8)] if quick else [(100_000, 8), (100_000, 64), (1_000_000, 8),
                                       (1_000_000, 64)]
    rounds = 5
    rows = []
    for opt, (n, dim), sparse in itertools.product(OPTIMIZERS, sizes, (False, True)):
        res = interleaved(steps_for(opt, n, dim, sparse), rounds=rounds,
                          min_seconds=0.02 if quick else 0.2)
        base = res['unmasked']['median']
        rows.append([opt, n, dim, 'sparse' if sparse else 'dense',
                     '%.3f' % (base * 1e3),
                     '%.3f (x%.2f)' % (res['rows']['median'] * 1e3,
                                       base / res['rows']['median']),
                     '%.3f (x%.2f)' % (res['cols']['median'] * 1e3,
                                       base / res['cols']['median'])])
        log('step: %s' % ' | '.join(map(str, rows[-1])))
    return table(['optimizer', 'rows', 'dim', 'gradient', 'unmasked ms/step',
                  'masked new rows 1%: ms/step (speed x unmasked)',
                  'masked latent 1/8: ms/step (speed x unmasked)'], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, seconds')
    args = parser.parse_args(argv)
    pin_array_placement()   # before anything is allocated: see its docstring
    print(run(quick=args.quick))


if __name__ == '__main__':
    main()
