"""How the rows added to a table start: the old rows' statistics and the ``init`` methods.

Part of :mod:`masked_opt.grow` (imported from there, where ``init`` is described); kept apart
so that module stays about where tables live. The statistics are streamed over chunks of
the old table, exactly (Chan et al.), so a 10M-row table never sits on the host at once.
"""
import collections
import numbers
import zlib

import mxnet as mx
import numpy as np
import scipy.linalg

# The public values are re-exported, with their descriptions, by masked_opt.grow.
INIT_METHODS = ('mean_cov', 'normal_like', 'mean', 'zeros', 'copy')
DEFAULT_INIT = 'mean_cov'
BIAS_INIT = 'mean'

# Rows read to the host at once when streaming statistics: 65536 x 64 float64 = 32 MB.
_CHUNK_ROWS = 1 << 16

RowStats = collections.namedtuple('RowStats', 'count mean cov')
RowStats.__doc__ = """Statistics of a table's rows: ``count``, ``mean`` (D,), ``cov`` (D, D)
or None (float64, ``ddof=1``)."""


# ---------------------------------------------------------------------------- validation
def _table_kind(table, name):
    """'nd', 'rsp' or 'np'; checks 2-D and floating dtype."""
    if isinstance(table, mx.nd.sparse.RowSparseNDArray):
        kind = 'rsp'
    elif isinstance(table, mx.nd.NDArray):
        if table.stype != 'default':
            raise TypeError('%s: expected a dense or row_sparse table, received storage type '
                            '%r' % (name, table.stype))
        kind = 'nd'
    elif isinstance(table, np.ndarray):
        kind = 'np'
    else:
        raise TypeError('%s: expected an mxnet NDArray or a numpy array, received %s'
                        % (name, type(table).__name__))
    if len(table.shape) != 2:
        raise ValueError('%s: expected a 2-D table (rows x dim), received shape %s. Only '
                         'embedding-like parameters and output layers (weight rows; grow_params '
                         'grows a 1-D bias with its weight) can grow rows.'
                         % (name, tuple(table.shape)))
    if not np.issubdtype(np.dtype(table.dtype), np.floating):
        raise TypeError('%s: expected a floating-point table (float16/32/64), received dtype '
                        '%s' % (name, np.dtype(table.dtype)))
    return kind


def _check_n_new(n_new, name):
    if isinstance(n_new, bool) or not isinstance(n_new, numbers.Integral) or n_new <= 0:
        raise ValueError('%s: expected a positive integer number of rows to add, received %r'
                         % (name, n_new))
    return int(n_new)


def _check_init(init, n_old, n_new, name):
    """Normalise ``init`` to (method, copy_rows or None); raise before any work."""
    if callable(init):
        return 'callable', None
    if isinstance(init, tuple) and len(init) == 2 and init[0] == 'copy':
        rows = np.asarray(init[1])
        if rows.ndim != 1 or rows.shape[0] != n_new or not (
                rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise ValueError("%s: ('copy', rows) expects %d integer row numbers (one per new "
                             "row), received %r" % (name, n_new, init[1]))
        if rows.size and (rows.min() < 0 or rows.max() >= n_old):
            raise ValueError("%s: ('copy', rows) row numbers must be old rows in [0, %d), "
                             "received %d" % (name, n_old, rows.min() if rows.min() < 0
                                              else rows.max()))
        return 'copy', rows.astype(np.int64)
    if init == 'copy':
        raise ValueError("%s: init='copy' needs the rows to copy: pass ('copy', rows) with one "
                         "old row number per new row" % name)
    if not isinstance(init, str) or init not in INIT_METHODS:
        raise ValueError("%s: unknown init %r; expected one of %s, ('copy', rows) or a callable "
                         "init(shape, rng)" % (name, init, list(INIT_METHODS[:-1])))
    if init in ('mean_cov', 'normal_like') and n_old < 2:
        raise ValueError("%s: init=%r estimates a spread from the old rows and needs at least 2 "
                         "of them, received %d. Use 'mean', 'zeros' or a callable."
                         % (name, init, n_old))
    if init == 'mean' and n_old < 1:
        raise ValueError("%s: init='mean' needs at least one old row, received an empty table. "
                         "Use 'zeros' or a callable." % name)
    return init, None


def _rng(seed, name=''):
    """A Generator seeded by ``seed`` and, for several tables, by the table's name."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or seed < 0):
        raise TypeError('seed: expected a non-negative integer, a numpy Generator or None, '
                        'received %r' % (seed,))
    if seed is None:
        return np.random.default_rng()
    # crc32 of the name: a stable per-table stream, independent of dict order.
    return np.random.default_rng([int(seed), zlib.crc32(name.encode('utf-8'))])


# ---------------------------------------------------------------------------- statistics
def _chunks(table, kind, chunk_rows):
    """Yield float64 host copies of consecutive row chunks (stored rows for row_sparse)."""
    data = table.data if kind == 'rsp' else table
    n = data.shape[0]
    for start in range(0, n, chunk_rows):
        part = data[start:min(n, start + chunk_rows)]
        part = part.asnumpy() if kind != 'np' else part
        yield start, np.asarray(part, dtype=np.float64)


def _merge(a, b):
    """Chan et al.'s pairwise merge of (count, mean, scatter) triples."""
    n_a, mean_a, s_a = a
    n_b, mean_b, s_b = b
    if n_a == 0:
        return b
    if n_b == 0:
        return a
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    if s_a is None:
        return n, mean, None
    if s_a.ndim == 1:
        return n, mean, s_a + s_b + delta * delta * (n_a * n_b / n)
    return n, mean, s_a + s_b + np.outer(delta, delta) * (n_a * n_b / n)


def row_stats(table, *, what='cov', chunk_rows=_CHUNK_ROWS, name='table'):
    """Mean and covariance of a table's rows, streamed over row chunks; checks finiteness.

    Parameters
    ----------
    table : NDArray, RowSparseNDArray or numpy.ndarray
        2-D floating table. Rows a row_sparse table does not store count as zero rows.
    what : {'cov', 'var', 'mean'}
        Full covariance (D, D), per-dimension variance (D,), or the mean only (cov None).
    chunk_rows : int
        Rows copied to the host at a time.
    name : str
        Used in error messages.

    Returns
    -------
    RowStats
        ``(count, mean, cov)`` in float64; ``cov`` uses ``ddof=1`` (None if count < 2).

    Raises
    ------
    ValueError
        If a row holds NaN or Inf (the message gives the first such row).

    Examples
    --------
    >>> import numpy as np
    >>> import masked_opt as mo
    >>> s = mo.row_stats(np.array([[1., 0.], [3., 2.]]))
    >>> s.mean.tolist(), s.cov.tolist()
    ([2.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    kind = _table_kind(table, name)
    dim = table.shape[1]
    acc = (0, np.zeros(dim), None if what == 'mean' else
           np.zeros(dim) if what == 'var' else np.zeros((dim, dim)))
    for start, x in _chunks(table, kind, chunk_rows):
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            if kind == 'rsp':
                row = int(table.indices[row].asscalar())
            raise ValueError('%s: old row %d holds NaN or Inf (%d such rows in this chunk); '
                             'expected finite old rows. Fix or drop them before growing.'
                             % (name, row, int(bad.sum())))
        mean = x.mean(axis=0)
        centred = x - mean
        if what == 'mean':
            scatter = None
        elif what == 'var':
            scatter = np.einsum('ij,ij->j', centred, centred)
        else:
            scatter = centred.T @ centred
        acc = _merge(acc, (x.shape[0], mean, scatter))
    if kind == 'rsp':
        # Rows a row_sparse table does not store are zeros: one block of them.
        missing = table.shape[0] - table.data.shape[0]
        zero_scatter = None if acc[2] is None else np.zeros_like(acc[2])
        acc = _merge(acc, (missing, np.zeros(dim), zero_scatter))
    count, mean, scatter = acc
    cov = None if scatter is None or count < 2 else scatter / (count - 1)
    return RowStats(count, mean, cov)


# ---------------------------------------------------------------------------- new rows
def _psd_sqrt_factor(cov):
    """``F`` with ``F @ F.T == cov`` for a symmetric PSD (possibly singular) ``cov``.

    Cholesky fails on a singular covariance; the eigendecomposition does not. Round-off
    leaves eigenvalues like +-1e-17 * max on a rank-deficient matrix, and their square roots
    (~3e-9) would leak samples out of the old rows' subspace: eigenvalues below
    ``1e6 * eps * max`` count as 0, the cut-off ``scipy.stats.multivariate_normal`` uses.
    """
    eigval, eigvec = scipy.linalg.eigh(cov)
    cutoff = 1e6 * np.finfo(np.float64).eps * max(float(eigval.max()), 0.0)
    return eigvec * np.sqrt(np.where(eigval > cutoff, eigval, 0.0))


def _take_rows(table, kind, rows):
    """Host float64 copy of the given old rows."""
    if kind == 'np':
        return np.asarray(table[rows], dtype=np.float64)
    if kind == 'nd':
        idx = mx.nd.array(rows, ctx=table.context, dtype='int64')
        return mx.nd.take(table, idx, axis=0).asnumpy().astype(np.float64)
    stored = table.indices.asnumpy()
    pos = np.searchsorted(stored, rows)
    pos = np.minimum(pos, max(stored.size - 1, 0))
    present = stored.size > 0
    out = np.zeros((rows.size, table.shape[1]))
    if present:
        hit = stored[pos] == rows
        if hit.any():
            idx = mx.nd.array(pos[hit], ctx=table.context, dtype='int64')
            out[hit] = mx.nd.take(table.data, idx, axis=0).asnumpy()
    return out


def _new_rows(table, kind, n_new, init, rng, name):
    n_old, dim = table.shape
    method, copy_rows = _check_init(init, n_old, n_new, name)
    need = {'mean_cov': 'cov', 'normal_like': 'var', 'mean': 'mean'}.get(method, 'mean')
    # Always one pass: it is also the check that the old rows are finite.
    stats = row_stats(table, what=need, name=name)
    dtype = np.dtype(table.dtype)
    if method == 'zeros':
        rows = np.zeros((n_new, dim))
    elif method == 'mean':
        rows = np.tile(stats.mean, (n_new, 1))
    elif method == 'normal_like':
        rows = stats.mean + rng.standard_normal((n_new, dim)) * np.sqrt(stats.cov)
    elif method == 'mean_cov':
        factor = _psd_sqrt_factor(stats.cov)
        rows = stats.mean + rng.standard_normal((n_new, dim)) @ factor.T
    elif method == 'copy':
        rows = _take_rows(table, kind, copy_rows)
    else:
        rows = init((n_new, dim), rng)
        if isinstance(rows, mx.nd.NDArray):
            rows = rows.asnumpy()
        rows = np.asarray(rows)
        if rows.shape != (n_new, dim):
            raise ValueError('%s: init callable returned shape %s; expected (%d, %d) = '
                             '(rows to add, dim)' % (name, rows.shape, n_new, dim))
        if not np.issubdtype(rows.dtype, np.floating):
            raise TypeError('%s: init callable returned dtype %s; expected floating-point '
                            'values (they are cast to the table dtype %s)'
                            % (name, rows.dtype, dtype))
    rows = rows.astype(dtype)
    if not np.isfinite(rows).all():
        raise ValueError('%s: the new rows are not finite in %s (init=%r); expected finite '
                         'values. A callable or a float16 table out of range?'
                         % (name, dtype, init if not callable(init) else 'callable'))
    return rows


def init_rows(table, n_new, init=DEFAULT_INIT, *, seed=0, name='table'):
    """Compute ``n_new`` new rows for ``table`` without growing it.

    Parameters
    ----------
    table : NDArray, RowSparseNDArray or numpy.ndarray
        The trained 2-D table (old rows).
    n_new : int
        Rows to make (> 0).
    init : str, tuple or callable, default 'mean_cov'
        ``'mean_cov'``, ``'normal_like'``, ``'mean'``, ``'zeros'``, ``('copy', rows)`` or
        ``init(shape, rng)``; see the module documentation.
    seed : int, numpy.random.Generator or None, default 0
        Same seed, same rows. None draws fresh entropy.
    name : str
        Used in error messages.

    Returns
    -------
    numpy.ndarray
        ``(n_new, dim)`` in the table's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import masked_opt as mo
    >>> old = np.random.default_rng(0).normal(size=(100, 4)).astype('float32')
    >>> new = mo.init_rows(old, 3, seed=1)
    >>> new.shape, new.dtype.name
    ((3, 4), 'float32')
    >>> bool((mo.init_rows(old, 3, seed=1) == new).all())
    True
    >>> mo.init_rows(old, 2, ('copy', [5, 7])).tolist() == old[[5, 7]].tolist()
    True
    """
    kind = _table_kind(table, name)
    n_new = _check_n_new(n_new, name)
    return _new_rows(table, kind, n_new, init, _rng(seed, name), name)


# Documented as part of masked_opt.grow, where they are imported from.
row_stats.__module__ = init_rows.__module__ = 'masked_opt.grow'


def append_rows(table, kind, rows):
    """Old table with ``rows`` appended; old rows copied bit for bit."""
    if kind == 'np':
        return np.concatenate([table, rows], axis=0)
    new = mx.nd.array(rows, ctx=table.context, dtype=table.dtype)
    if kind == 'nd':
        # One concat: the output (old + new rows) is the only table-sized allocation.
        return mx.nd.concat(table, new, dim=0)
    n_old = table.shape[0]
    data = mx.nd.concat(table.data, new, dim=0)
    indices = mx.nd.concat(table.indices, mx.nd.arange(n_old, n_old + rows.shape[0],
                                                       ctx=table.context,
                                                       dtype=table.indices.dtype), dim=0)
    return mx.nd.sparse.row_sparse_array((data, indices), shape=(n_old + rows.shape[0],
                                                                 table.shape[1]),
                                         ctx=table.context, dtype=table.dtype)
