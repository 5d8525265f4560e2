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
import mxnet as mx
import numpy as np

from . import _row_init
from ._gluon_grow import grow_dense, grow_embedding
from ._row_init import (
    _check_init,
    _check_n_new,
    _new_rows,
    _rng,
    _table_kind,
    append_rows,
    init_rows,
    row_stats,
)
from ._vocab import VocabGrowth, grow_vocab
from .masks import train_rows_from

__all__ = ['INIT_METHODS', 'DEFAULT_INIT', 'BIAS_INIT', 'row_stats', 'init_rows', 'grow_table',
           'grow_params', 'grow_embedding', 'grow_dense', 'grow_vocab', 'VocabGrowth']

#: The names accepted by ``init`` (besides a callable).
INIT_METHODS = _row_init.INIT_METHODS
#: The default ``init``: new rows drawn from the old rows' mean and covariance.
DEFAULT_INIT = _row_init.DEFAULT_INIT
#: The default ``init`` of a 1-D bias grown with its weight: the old entries' mean.
BIAS_INIT = _row_init.BIAS_INIT


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
    return append_rows(table, kind, rows)


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
        grown = append_rows(table, kind, rows[name])
        params[name] = grown.reshape((-1,)) if flat else grown
    masks = {name: train_rows_from(table.shape[0]) for name, (table, _, _, _) in plan.items()}
    return params, masks


# The Gluon helpers live in their own module; they are part of this one's API.
