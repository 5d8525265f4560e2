"""Adam state bytes, masked against unmasked, for the tables of the throughput benchmark.

The states are created by the optimizers themselves (``create_state``) and their NDArrays
counted; unmasked Adam at 10M rows (5 GiB) is computed from its shape instead of allocated.

Run: ``python -m benchmarks.state [--quick]``.
"""
import argparse

import mxnet as mx
import numpy as np

import masked_opt as mo

from .harness import table
from .training import n_old, n_train_cols

NAME = 'table_weight'


def nbytes(state):
    """Bytes of the NDArrays of a (possibly nested) optimizer state.

    Examples
    --------
    >>> import mxnet as mx
    >>> from benchmarks.state import nbytes
    >>> nbytes((mx.nd.zeros((2, 3)), [mx.nd.zeros(4)], None))
    40
    """
    if isinstance(state, mx.nd.NDArray):
        return state.size * np.dtype(state.dtype).itemsize
    if isinstance(state, (list, tuple)):
        return sum(nbytes(s) for s in state)
    return 0


def state_bytes(n, dim, mask=None, allocate=True):
    """Bytes of Adam's state for an ``(n, dim)`` float32 table, optionally masked.

    Examples
    --------
    >>> import masked_opt as mo
    >>> from benchmarks.state import state_bytes
    >>> state_bytes(1000, 8), state_bytes(1000, 8, mo.train_rows_from(990))
    (64000, 640)
    """
    if mask is None and not allocate:
        return 2 * n * dim * 4   # mean and variance, float32
    weight = mx.nd.zeros((n, dim))
    if mask is None:
        opt = mx.optimizer.create('adam', param_idx2name={0: NAME})
    else:
        opt = mo.Masked(base='adam', masks={NAME: mask}, param_idx2name={0: NAME})
    out = nbytes(opt.create_state(0, weight))
    del weight
    return out


def run(quick=False, log=print):
    """The table: unmasked, new rows (1%), latent split (1/8) for each size.

    Examples
    --------
    >>> from benchmarks.state import run
    >>> 'x0.010' in run(quick=True, log=lambda s: None)['markdown']
    True
    """
    sizes = ([(10_000, 8)] if quick
             else [(100_000, 8), (100_000, 64), (1_000_000, 8), (1_000_000, 64),
                   (10_000_000, 64)])
    rows, results = [], []
    for n, dim in sizes:
        plain = state_bytes(n, dim, allocate=n <= 1_000_000)
        new = state_bytes(n, dim, mo.train_rows_from(n_old(n)))
        split = state_bytes(n, dim, mo.train_cols(range(dim - n_train_cols(dim), dim)))
        results.append({'n': n, 'dim': dim, 'plain': plain, 'rows': new, 'cols': split})
        rows.append([n, dim, '%.1f MiB%s' % (plain / 2 ** 20, '' if n <= 1_000_000
                                             else ' (computed)'),
                     '%.2f MiB (x%.3f)' % (new / 2 ** 20, new / plain),
                     '%.1f MiB (x%.3f)' % (split / 2 ** 20, split / plain)])
        log('state: %s' % ' | '.join(map(str, rows[-1])))
    return {'results': results, 'markdown': table(
        ['rows', 'dim', 'unmasked Adam', 'masked new rows 1%', 'masked latent 1/8'], rows)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, seconds')
    args = parser.parse_args(argv)
    print(run(quick=args.quick, log=lambda s: None)['markdown'])


if __name__ == '__main__':
    main()
