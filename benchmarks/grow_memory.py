"""Peak memory and time of growing a large embedding table with masked_opt.grow_table.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/grow_memory.py [ROWS] [DIM] [NEW_ROWS]``
(default 10_000_000 x 64 float32, 1% new rows). Prints the extra peak resident memory while
growing, in units of the old table's size: the old table is already in memory, so "2x its
memory" means an extra of about 1.0 (the grown copy). Statistics of the old rows are streamed
in chunks of 65536 rows (exact, O(dim^2) memory).
"""
import resource
import sys
import time

import mxnet as mx

import masked_opt as mo


def main(rows=10_000_000, dim=64, new_rows=None):
    new_rows = new_rows or rows // 100
    table_bytes = rows * dim * 4
    old = mx.nd.random.normal(shape=(rows, dim))
    old.wait_to_read()
    mo.grow_table(mx.nd.random.normal(shape=(1000, dim)), 10).wait_to_read()  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for init in ('mean_cov', 'zeros'):
        start = time.perf_counter()
        new = mo.grow_table(old, new_rows, init, seed=0)
        new.wait_to_read()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print('grow %d x %d float32 (%.2f GB) by %d rows, init=%s: %.1f s, extra peak memory '
              '%.2f GB = %.3f x the old table'
              % (rows, dim, table_bytes / 1e9, new_rows, init, seconds, (peak - base) / 1e9,
                 (peak - base) / table_bytes))
        del new


if __name__ == '__main__':
    main(*map(int, sys.argv[1:]))
