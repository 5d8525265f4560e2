"""Adding rows to trained embedding tables: new words, users, items.

After a model is trained, new ids arrive. Growing a table means: keep every old row
bit-for-bit, append one row per new id, start the new rows somewhere sensible, and return the
mask that trains only them (:func:`~masked_opt.train_rows_from` with the old row count). The
entry points, one per place a table lives:

- :func:`grow_table` -- one NDArray or numpy array;
- :func:`grow_params` -- Module's ``arg_params`` dict (as from ``mx.model.load_checkpoint``);
  an output layer's 1-D bias grows with its weight (new classes of a classifier);
- :func:`grow_embedding` -- a Gluon ``nn.Embedding`` or ``contrib.nn.SparseEmbedding``, in place;
- :func:`grow_dense` -- a Gluon ``nn.Dense`` output layer (weight rows and bias), in place;
- :func:`grow_vocab` -- the id -> row map that goes with a table.

How new rows start (``init``), all seeded:

``'mean_cov'`` (default)
    Rows drawn from a normal with the old rows' mean and full covariance, so a new row looks
    like a random old row: same typical norm, same correlations between latent dimensions,
    same scale of dot products with the other table. That is what makes new rows "comparable"
    to old ones from the first step, and the optimizer then moves them at the scale it moved
    the old rows. The covariance is sampled through its symmetric PSD square root
    (``scipy.linalg.eigh``, negative round-off eigenvalues clipped to 0), which is exact for a
    rank-deficient covariance (e.g. a latent dimension that never trained): samples stay in
    the subspace the old rows span. Hugging Face's ``resize_token_embeddings`` instead scales
    the covariance by 1e-9 (every new row is almost the mean) and falls back to the bare mean
    when the covariance is not positive-definite.
``'normal_like'``
    Independent normal per dimension with the old rows' mean and standard deviation
    (ignores correlations).
``'mean'``
    Every new row is the mean of the old rows (all new rows identical).
``'zeros'``
    All zeros. In a dot-product model a zero user and a zero item give each other zero
    gradient, so new-user x new-item pairs cannot learn from each other: avoid it there.
``('copy', rows)``
    New row ``k`` is a copy of old row ``rows[k]`` (e.g. a new item starting as a known one).
callable
    ``init(shape, rng)`` returning an array of ``shape = (n_new, dim)``; ``rng`` is a seeded
    ``numpy.random.Generator``. Floating results are cast to the table's dtype.

Large tables: the old rows' statistics are *streamed*, exactly (not subsampled), over chunks
of 65536 rows, merging chunk means and scatter matrices (Chan et al.), so the estimate needs
O(D^2) memory, never O(V*D^2); the host never holds more than one chunk of the old table.
The grown table is one ``concat``: old table + new table, about 2x the old table's memory at
the peak (10M x 64 float32: +1.03x measured, ``benchmarks/grow_memory.py``). A row_sparse
table (``SparseEmbedding``) needs one more transient copy of its stored rows, because MXNet
1.9 builds a ``RowSparseNDArray`` by copying its data array.

Everything is checked before anything is built or changed: a bad request raises a
``ValueError``/``TypeError`` that names the parameter, and leaves the input as it was.
"""
import collections
import numbers
import zlib

import mxnet as mx
import numpy as np
import scipy.linalg

from .masks import train_rows_from

__all__ = ['INIT_METHODS', 'DEFAULT_INIT', 'BIAS_INIT', 'row_stats', 'init_rows', 'grow_table',
           'grow_params', 'grow_embedding', 'grow_dense', 'grow_vocab', 'VocabGrowth']

#: The names accepted by ``init`` (besides a callable).
INIT_METHODS = ('mean_cov', 'normal_like', 'mean', 'zeros', 'copy')
#: The default ``init``: new rows drawn from the old rows' mean and covariance.
DEFAULT_INIT = 'mean_cov'
#: The default ``init`` of a 1-D bias grown with its weight: the old entries' mean.
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


def _append(table, kind, rows):
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


def grow_table(table, n_new, init=DEFAULT_INIT, *, seed=0, name='table'):
    """Return ``table`` with ``n_new`` rows appended; the input is not modified.

    Parameters
    ----------
    table : NDArray, RowSparseNDArray or numpy.ndarray
        The trained 2-D table.
    n_new : int
        Rows to add (> 0).
    init, seed, name
        As in :func:`init_rows`.

    Returns
    -------
    same type as ``table``
        Shape ``(n_old + n_new, dim)``, same dtype and context; rows ``< n_old`` are
        bit-identical copies of the old rows. Train it with ``mo.train_rows_from(n_old)``.

    Examples
    --------
    >>> import mxnet as mx
    >>> import masked_opt as mo
    >>> old = mx.nd.random.normal(shape=(50, 4))
    >>> new = mo.grow_table(old, 10, 'mean_cov', seed=0)
    >>> new.shape, bool((new[:50] == old).asnumpy().all())
    ((60, 4), True)
    """
    kind = _table_kind(table, name)
    n_new = _check_n_new(n_new, name)
    rows = _new_rows(table, kind, n_new, init, _rng(seed, name), name)
    return _append(table, kind, rows)


# ---------------------------------------------------------------------------- Module world
def _bias_of(name, arg_params):
    """``'fc_bias'`` for ``'fc_weight'`` when it exists and is 1-D (an output layer's bias)."""
    if not name.endswith('_weight'):
        return None
    bias = name[:-len('_weight')] + '_bias'
    table = arg_params.get(bias)
    return bias if table is not None and len(table.shape) == 1 else None


def grow_params(arg_params, add, init=DEFAULT_INIT, *, seed=0):
    """Grow tables in a Module ``arg_params`` dict; return new params and masks.

    A 2-D parameter (an embedding, an output layer's weight) gets rows; a 1-D parameter (a
    bias) gets entries. An output layer's bias grows **together with its weight**: growing
    ``'fc_weight'`` by ``n`` also grows ``'fc_bias'`` by ``n`` when it exists with one entry
    per weight row (new classes of a classifier; ``init`` ``'mean'`` for it unless given).

    Parameters
    ----------
    arg_params : dict of str to NDArray
        As from ``mx.model.load_checkpoint`` or ``Module.get_params()[0]``. Not modified.
    add : dict of str to int
        Rows to add per parameter, e.g. ``{'book_embedding_weight': 120}``.
    init : str, tuple, callable or dict, default 'mean_cov'
        One init for every table, or a dict name -> init (see :func:`init_rows`). A 1-D
        parameter is treated as a one-column table (``'mean_cov'`` draws from a normal with
        the old entries' mean and variance).
    seed : int or None, default 0
        Each table gets its own stream derived from ``seed`` and its name, so the result does
        not depend on dict order.

    Returns
    -------
    params : dict of str to NDArray
        A new dict: grown tables are new arrays, other entries are the same objects.
    masks : dict of str to Mask
        ``train_rows_from(n_old)`` per grown parameter (biases included), for
        ``optimizer_params['masks']``.

    Raises
    ------
    ValueError, TypeError
        Unknown names, rows to add that are not positive integers, tables that are not 1-D or
        2-D or not floating, a bias grown by another count than its weight, non-finite old
        rows, bad init; raised before anything is built.

    Examples
    --------
    >>> import mxnet as mx
    >>> import masked_opt as mo
    >>> old = {'book_embedding_weight': mx.nd.random.normal(shape=(20, 8)),
    ...        'member_embedding_weight': mx.nd.random.normal(shape=(30, 8))}
    >>> params, masks = mo.grow_params(old, {'book_embedding_weight': 5})
    >>> params['book_embedding_weight'].shape
    (25, 8)
    >>> masks
    {'book_embedding_weight': Mask(rows=from 20)}

    A classifier's output layer: the bias follows its weight.

    >>> head = {'fc_weight': mx.nd.ones((3, 4)), 'fc_bias': mx.nd.array([0.1, 0.2, 0.3])}
    >>> params, masks = mo.grow_params(head, {'fc_weight': 2})
    >>> params['fc_weight'].shape, [round(float(b), 2) for b in params['fc_bias'].asnumpy()]
    ((5, 4), [0.1, 0.2, 0.3, 0.2, 0.2])
    >>> sorted(masks)
    ['fc_bias', 'fc_weight']

    Then rebuild the symbol with the new sizes and call
    ``mod.fit(..., arg_params=params, optimizer='masked',
    optimizer_params={'base': 'adam', 'masks': masks})``.
    """
    if not isinstance(add, dict) or not add:
        raise TypeError('add: expected a non-empty dict {parameter name: rows to add}, '
                        'received %r' % (add,))
    unknown = sorted(set(add) - set(arg_params))
    if unknown:
        raise ValueError('grow_params: unknown parameter names %s; known names are %s'
                         % (unknown, sorted(arg_params)))
    add = dict(add)
    inits = dict(init) if isinstance(init, dict) else {k: init for k in add}
    for name in sorted(add):
        bias = _bias_of(name, arg_params)
        if bias is None or len(arg_params[name].shape) != 2 or \
                arg_params[bias].shape[0] != arg_params[name].shape[0]:
            continue
        if bias in add and add[bias] != add[name]:
            raise ValueError('%s: grows by %r but its weight %s by %r; an output layer needs '
                             'one bias entry per weight row: grow both by the same count (or '
                             'leave the bias out, it follows its weight)'
                             % (bias, add[bias], name, add[name]))
        add[bias] = add[name]
        if bias not in inits:
            inits[bias] = inits.get(name, DEFAULT_INIT) if isinstance(init, dict) and \
                bias in init else BIAS_INIT
    extra = sorted(set(inits) - set(add))
    if extra:
        raise ValueError('init: names %s are not being grown; expected a subset of %s'
                         % (extra, sorted(add)))
    # Check every table and init first: a bad entry must not leave a half-grown result.
    plan = {}
    for name in sorted(add):
        table = arg_params[name]
        flat = len(table.shape) == 1 and isinstance(table, (np.ndarray, mx.nd.NDArray)) and \
            getattr(table, 'stype', 'default') == 'default'
        as_table = table.reshape((-1, 1)) if flat else table
        kind = _table_kind(as_table, name)
        n_new = _check_n_new(add[name], name)
        _check_init(inits.get(name, DEFAULT_INIT), as_table.shape[0], n_new, name)
        plan[name] = (as_table, kind, n_new, flat)
    rows = {name: _new_rows(table, kind, n_new, inits.get(name, DEFAULT_INIT),
                            _rng(seed, name), name)
            for name, (table, kind, n_new, _) in plan.items()}
    params = dict(arg_params)
    for name, (table, kind, _, flat) in plan.items():
        grown = _append(table, kind, rows[name])
        params[name] = grown.reshape((-1,)) if flat else grown
    masks = {name: train_rows_from(table.shape[0]) for name, (table, _, _, _) in plan.items()}
    return params, masks


# ---------------------------------------------------------------------------- vocabularies
class VocabGrowth(collections.namedtuple('VocabGrowth', 'vocab added n_old mask')):
    """Result of :func:`grow_vocab`.

    Attributes
    ----------
    vocab : dict
        Extended id -> row map (old entries unchanged).
    added : list
        The new ids, in the order their rows were given (first appearance in ``new_ids``).
    n_old : int
        Rows of the table before growing; new rows are ``n_old, n_old + 1, ...``.
    mask : Mask
        ``train_rows_from(n_old)``.
    """

    @property
    def n_new(self):
        """Rows to add to the table (``len(added)``)."""
        return len(self.added)


def _id_kind(value):
    if isinstance(value, (bool, np.bool_)):
        return 'bool'
    if isinstance(value, (numbers.Integral, np.integer)):
        return 'int'
    return type(value).__name__


def grow_vocab(vocab, new_ids, *, n_rows=None):
    """Extend an id -> row map with new ids; old ids keep their rows.

    Parameters
    ----------
    vocab : dict
        Old map from ids (user ids, item ids, words; hashable) to distinct row numbers.
    new_ids : iterable
        Ids that arrived. Ids already in ``vocab`` and repeats are skipped (no duplicate
        rows); the others get rows ``n_rows, n_rows + 1, ...`` in order of first appearance.
    n_rows : int, optional
        Rows of the table before growing; default ``max(row) + 1`` (0 for an empty vocab).
        Give it when the table has rows no id maps to (padding, unknown token).

    Returns
    -------
    VocabGrowth
        ``(vocab, added, n_old, mask)``; ``vocab`` is a new dict.

    Raises
    ------
    TypeError
        If new ids are not of the old ids' type (e.g. ``'17'`` among int ids), an id is
        unhashable, or a row is not an integer.
    ValueError
        If old rows repeat, are negative or do not fit in ``n_rows``.

    Examples
    --------
    >>> import masked_opt as mo
    >>> g = mo.grow_vocab({'alice': 0, 'bob': 1}, ['carol', 'bob', 'dan', 'carol'])
    >>> g.vocab
    {'alice': 0, 'bob': 1, 'carol': 2, 'dan': 3}
    >>> g.added, g.n_old, g.n_new
    (['carol', 'dan'], 2, 2)
    """
    if not isinstance(vocab, dict):
        raise TypeError('vocab: expected a dict {id: row}, received %s' % type(vocab).__name__)
    rows = list(vocab.values())
    for key, row in vocab.items():
        if isinstance(row, bool) or not isinstance(row, (numbers.Integral, np.integer)):
            raise TypeError('vocab: id %r maps to %r; expected an integer row number'
                            % (key, row))
    rows_arr = np.asarray(rows, dtype=np.int64)
    if rows_arr.size and rows_arr.min() < 0:
        raise ValueError('vocab: row numbers must be non-negative, received %d'
                         % rows_arr.min())
    unique, counts = np.unique(rows_arr, return_counts=True)
    if np.any(counts > 1):
        raise ValueError('vocab: rows %s are used by several ids; expected one row per id'
                         % unique[counts > 1][:10].tolist())
    needed = int(rows_arr.max()) + 1 if rows_arr.size else 0
    if n_rows is None:
        n_rows = needed
    elif isinstance(n_rows, bool) or not isinstance(n_rows, numbers.Integral) or \
            n_rows < needed:
        raise ValueError('n_rows: expected an integer >= %d (the largest row in vocab + 1), '
                         'received %r' % (needed, n_rows))
    if isinstance(new_ids, (str, bytes)):
        raise TypeError('new_ids: expected an iterable of ids, received the single string %r; '
                        'wrap it in a list' % (new_ids,))
    new_ids = list(new_ids)
    kinds = {_id_kind(k) for k in vocab}
    for new in new_ids:
        try:
            hash(new)
        except TypeError:
            raise TypeError('new_ids: id %r is unhashable; expected ids like the old ones '
                            '(%s)' % (new, ', '.join(sorted(kinds)))) from None
        if kinds and _id_kind(new) not in kinds:
            raise TypeError('new_ids: id %r is %s but the old ids are %s; convert the ids to '
                            'one type (is a user id read as text?)'
                            % (new, _id_kind(new), ', '.join(sorted(kinds))))
    out = dict(vocab)
    added = []
    for new in new_ids:
        if new not in out:
            out[new] = int(n_rows) + len(added)
            added.append(new)
    return VocabGrowth(out, added, int(n_rows), train_rows_from(int(n_rows)))


# The Gluon helpers live in their own module; they are part of this one's API.
from ._gluon_grow import grow_dense, grow_embedding  # noqa: E402  (uses the helpers above)
