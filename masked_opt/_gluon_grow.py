"""Growing Gluon layers in place: ``nn.Embedding`` rows, ``nn.Dense`` output units.

Part of :mod:`masked_opt.grow` (imported from there); kept apart so that module stays about
arrays and Module's dicts.
"""
import mxnet as mx

from ._row_init import (
    BIAS_INIT,
    DEFAULT_INIT,
    _check_n_new,
    _new_rows,
    _rng,
    _table_kind,
    append_rows,
)
from .masks import train_rows_from

__all__ = ['grow_embedding', 'grow_dense']


def grow_embedding(block, n_new, init=DEFAULT_INIT, *, seed=0, parent=None):
    """Grow a trained Gluon ``nn.Embedding`` / ``contrib.nn.SparseEmbedding`` in place.

    The block keeps its Parameter object, hence its name, contexts, dtype, storage type and
    ``grad_stype``; only the data (and gradient buffers) get ``n_new`` more rows, identical
    on every context. Old rows are bit-identical to the trained table, wherever training left
    it: a ``SparseEmbedding`` trained by a Trainer is updated on the kvstore (a server's, for a
    dist kvstore) and the layer itself holds only the rows of its last batch, so every row is
    pulled from there first (MXNet's ``Parameter.list_row_sparse_data``).

    Parameters
    ----------
    block : mxnet.gluon.nn.Embedding or mxnet.gluon.contrib.nn.SparseEmbedding
        Initialized (trained) embedding block.
    n_new : int
        Rows to add (> 0).
    init, seed
        As in :func:`init_rows`; ``seed`` streams are derived from the parameter's name.
    parent : mxnet.gluon.Block, optional
        The network holding ``block``. A hybridized network caches its graph with the old
        ``input_dim``; passing it here drops those caches (as ``net.hybridize()`` again would).

    Returns
    -------
    Mask
        ``train_rows_from(n_old)``: key it by ``block.weight`` in a **new** Trainer (a Trainer
        made before growing holds optimizer states and kvstore buffers of the old shape).

    Examples
    --------
    >>> import mxnet as mx
    >>> import masked_opt as mo
    >>> emb = mx.gluon.nn.Embedding(10, 4)
    >>> emb.initialize()
    >>> old = emb.weight.data().asnumpy()
    >>> mask = mo.grow_embedding(emb, 3, seed=0)
    >>> emb.weight.shape, emb(mx.nd.array([12])).shape
    ((13, 4), (1, 4))
    >>> bool((emb.weight.data().asnumpy()[:10] == old).all())
    True
    >>> trainer = mx.gluon.Trainer(emb.collect_params(), 'masked',
    ...                            {'base': 'adam', 'masks': {emb.weight: mask}})
    """
    from mxnet.gluon.contrib.nn import SparseEmbedding
    if not isinstance(block, (mx.gluon.nn.Embedding, SparseEmbedding)):
        raise TypeError('grow_embedding: expected an nn.Embedding or contrib.nn.SparseEmbedding'
                        ', received %s. For an nn.Dense output layer use grow_dense; for other '
                        'layers grow the parameter with grow_table.' % type(block).__name__)
    n_new = _check_n_new(n_new, block.weight.name)
    _check_parent(block, parent, 'grow_embedding')
    datas, rows = _grown_data(block.weight, n_new, init, seed)
    _grow_param(block.weight, datas, rows)
    block._kwargs['input_dim'] = block.weight.shape[0]
    _clear_caches(block, parent)
    return train_rows_from(datas[0].shape[0])


def _check_parent(block, parent, who):
    if parent is not None and not any(b is block for b in _walk(parent)):
        raise ValueError('%s: parent %s does not contain the layer %s; pass the network that '
                         'holds it' % (who, parent.name, block.name))


def _grown_data(param, n_new, init, seed):
    """Check ``param`` and compute its new rows (1-D: entries); nothing is changed yet."""
    name = param.name
    if param._data is None:
        raise ValueError('%s: parameter %r is not initialized; expected a trained layer (call '
                         'initialize(), run a forward pass for deferred shapes, and train it '
                         'first)' % (name, name))
    datas = _trained_copies(param)
    table = datas[0].reshape((-1, 1)) if len(datas[0].shape) == 1 else datas[0]
    kind = _table_kind(table, name)
    return datas, _new_rows(table, kind, n_new, init, _rng(seed, name), name)


def _trained_copies(param):
    """Every context's copy of the parameter, each holding the whole trained table.

    A dense Parameter's copies are the trained table: a Trainer that updates on a kvstore pulls
    the new weights into them after every step. A row_sparse one (``SparseEmbedding``) is
    updated on the kvstore only (Gluon forces ``update_on_kvstore``), and each forward pulls
    just the rows of its batch, before that step's update: the local copies hold stale rows of
    the last batch, and the trained table lives on the kvstore (a server's, for a dist
    kvstore). So every row is pulled first, with MXNet's own ``list_row_sparse_data``, which
    writes the whole table into every context's copy.
    """
    if param._stype == 'row_sparse' and param._trainer is not None:
        ids = mx.nd.arange(param.shape[0], dtype='int64')
        param.list_row_sparse_data(ids)
    return list(param._data)


def _grow_param(param, datas, rows):
    """Append ``rows`` to every context's copy; keep the Parameter (name, ctx, dtype, stypes)."""
    grown = []
    for d in datas:
        flat = len(d.shape) == 1
        table = d.reshape((-1, 1)) if flat else d
        out = append_rows(table, _table_kind(table, param.name), rows)
        grown.append(out.reshape((-1,)) if flat else out)
    param._shape = tuple(grown[0].shape)
    param._data = grown
    param._init_grad()  # fresh gradient buffers of the new shape, same grad_stype and grad_req
    # A Trainer made before growing holds states and kvstore buffers of the old shape; a
    # row_sparse Parameter refuses a second Trainer while it still points to the first one.
    param._trainer = None


def _clear_caches(block, parent):
    for b in _walk(parent if parent is not None else block):
        if hasattr(b, '_clear_cached_op'):
            b._clear_cached_op()


def grow_dense(block, n_new, init=DEFAULT_INIT, *, bias_init=BIAS_INIT, seed=0, parent=None):
    """Grow a trained Gluon ``nn.Dense`` output layer by ``n_new`` units (classes), in place.

    The weight gets ``n_new`` rows and the bias ``n_new`` entries; both keep their Parameter
    objects (names, contexts, dtype). Old rows and entries are bit-identical, so the logits of
    the old classes do not change. Train with the returned masks in a **new** Trainer.

    Parameters
    ----------
    block : mxnet.gluon.nn.Dense
        Initialized (trained) layer whose outputs are the classes.
    n_new : int
        Units to add (> 0).
    init : str, tuple or callable, default 'mean_cov'
        How the new weight rows start (see :func:`~masked_opt.init_rows`).
    bias_init : str, tuple or callable, default 'mean'
        How the new bias entries start (``'mean'``: the old classes' mean bias).
    seed : int, default 0
        Streams derived from each parameter's name.
    parent : mxnet.gluon.Block, optional
        The network holding ``block``; pass it when the network is hybridized, so its cached
        graph (built for the old number of units) is dropped.

    Returns
    -------
    dict of Parameter to Mask
        ``{block.weight: train_rows_from(n_old), block.bias: train_rows_from(n_old)}`` (no bias
        entry when the layer has none): pass it as the ``'masks'`` of the new Trainer.

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.grow import grow_dense
    >>> head = mx.gluon.nn.Dense(3, in_units=4)
    >>> head.initialize()
    >>> x = mx.nd.random.normal(shape=(2, 4))
    >>> before = head(x).asnumpy()
    >>> masks = grow_dense(head, 2, seed=0)
    >>> head.weight.shape, head.bias.shape, head(x).shape
    ((5, 4), (5,), (2, 5))
    >>> bool((head(x).asnumpy()[:, :3] == before).all())     # old logits, bit for bit
    True
    >>> trainer = mx.gluon.Trainer(head.collect_params(), 'masked',
    ...                            {'base': 'adam', 'masks': masks})
    """
    if not isinstance(block, mx.gluon.nn.Dense):
        raise TypeError('grow_dense: expected an nn.Dense layer, received %s. For an Embedding '
                        'use grow_embedding.' % type(block).__name__)
    n_new = _check_n_new(n_new, block.weight.name)
    _check_parent(block, parent, 'grow_dense')
    params = [(block.weight, init)] + ([(block.bias, bias_init)] if block.bias is not None
                                       else [])
    plans = [(p, _grown_data(p, n_new, i, seed)) for p, i in params]   # everything checked first
    n_old = block.weight.shape[0]
    for p, (datas, rows) in plans:
        _grow_param(p, datas, rows)
    block._units = n_old + n_new
    _clear_caches(block, parent)
    return {p: train_rows_from(n_old) for p, _ in params}


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


# Documented as part of masked_opt.grow, where they are imported from.
grow_embedding.__module__ = grow_dense.__module__ = 'masked_opt.grow'
