"""Swap MXNet's sparse Embedding for masked_opt's O(batch) lookup, in a Symbol or a Gluon Block.

MXNet 1.9.1's CPU backward of ``Embedding(sparse_grad=True)`` (and of ``SparseEmbedding``)
makes three passes over every row of the table per step, whatever the batch
(``SparseEmbeddingOpBackwardRspImpl<cpu>`` in ``src/operator/tensor/indexing_op.cc``: a
table-sized workspace, a fill, a serial prefix sum). The native operator
``masked_opt_lookup`` (``masked_opt/_native/lookup.cc``) gives the same forward bits and the
same row_sparse gradient bits in O(batch): :func:`convert_embeddings` puts it in place of
every such layer, keeping names, shapes, attributes, outputs and ``Parameter`` objects, so
``Module``, ``Trainer``, ``'masked'``, checkpoints and ``arg_params`` work unchanged. Layers it
cannot serve are left as they are and named in one log line, with the reason.
"""
import json
import logging

import mxnet as mx

from . import native
from ._mxnet_workarounds import guard_module_bind

__all__ = ['convert_embeddings', 'check_bind', 'OP']

#: The native operator's name (``mx.nd.masked_opt_lookup`` / ``mx.sym.masked_opt_lookup``).
OP = native.LOOKUP_OP
# MXNet operators whose sparse-gradient form the lookup replaces, by Symbol JSON op name.
_SPARSE_OPS = ('Embedding', '_contrib_SparseEmbedding')
_log = logging.getLogger('masked_opt')


def _is_true(text):
    return str(text).strip().lower() in ('true', '1')


def _report(kind, converted, left):
    """Log the one line that says what was converted and what was left, and why."""
    parts = ['masked_opt.convert_embeddings(%s): converted %d to %s' % (kind, len(converted), OP)]
    if converted:
        parts[0] += ' (%s)' % ', '.join(converted)
    if left:
        parts.append('left %d as MXNet has them: %s' % (
            len(left), '; '.join('%s: %s' % (name, why) for name, why in left)))
    (_log.warning if any(why != _DENSE for _, why in left) else _log.info)('; '.join(parts))


_DENSE = 'dense gradient (sparse_grad=False: its backward is no O(table) pass to remove)'


def _no_native():
    """Why the lookup cannot be used in this process, or None."""
    if native.available():
        return None
    return 'native library not available (%s)' % native.status().reason


# ------------------------------------------------------------------------------- Symbol
def _convert_symbol(sym, ctx):
    guard_module_bind(check_bind)   # if masked_opt was imported before mxnet.module
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    converted, left = [], []
    blocker = _no_native()
    if blocker is None and any(c.device_type != 'cpu' for c in ctx):
        blocker = 'context %s (the lookup runs on CPU only)' % ', '.join(map(str, ctx))
    for node in nodes:
        if node['op'] not in _SPARSE_OPS:
            continue
        attrs = node.get('attrs', {})
        if node['op'] == 'Embedding' and not _is_true(attrs.get('sparse_grad', 'False')):
            left.append((node['name'], _DENSE))
            continue
        weight = nodes[node['inputs'][1][0]]
        why = blocker
        if why is None and weight['op'] != 'null':
            why = 'its weight is computed by %s, not a variable' % weight['op']
        if why is not None:
            left.append((node['name'], why))
            continue
        # MXNet's callback into the library sizes a buffer from the sum of the inputs' ndim;
        # an unknown weight shape (ndim -1) crashes it, so the weight carries its shape.
        wattrs = weight.setdefault('attrs', {})
        shape = (int(attrs['input_dim']), int(attrs['output_dim']))
        if '__shape__' not in wattrs:
            wattrs['__shape__'] = str(shape)
        node['op'] = OP
        converted.append(node['name'])
    if not converted:
        _report('Symbol', converted, left)
        return sym
    out = mx.sym.load_json(json.dumps(graph))
    _report('Symbol', converted, left)
    return out


def _lookup_weights(sym):
    """Names of the weight variables that feed a ``masked_opt_lookup`` node of `sym`."""
    text = sym.tojson()
    if OP not in text:
        return []
    nodes = json.loads(text)['nodes']
    return [nodes[n['inputs'][1][0]]['name'] for n in nodes if n['op'] == OP]


def check_bind(sym, grad_req='write', inputs_need_grad=False):
    """Refuse, before binding, the gradient requests the lookup cannot honour.

    The native op gets no ``req``: MXNet's Embedding fails on ``grad_req='add'`` for its weight
    and on a gradient for its ids at the first backward, while the op would overwrite the
    weight's gradient and leave the ids' unwritten. ``Module.bind`` calls this (importing
    masked_opt wraps it), so a converted Symbol refuses what MXNet's Embedding refuses.

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> emb = mx.sym.Embedding(mx.sym.Variable('ids'), input_dim=9, output_dim=2,
    ...                        sparse_grad=True, name='e')
    >>> mo.convert.check_bind(mo.convert_embeddings(emb), grad_req='add')
    Traceback (most recent call last):
    ...
    ValueError: grad_req='add' for e_weight, which masked_opt_lookup computes: ...
    """
    weights = _lookup_weights(sym)
    if not weights:
        return
    if isinstance(grad_req, str):
        reqs = dict.fromkeys(weights, grad_req)
    elif isinstance(grad_req, dict):
        reqs = {w: grad_req.get(w, 'write') for w in weights}
    else:
        reqs = dict(zip(sym.list_arguments(), grad_req, strict=False))
    added = [w for w in weights if reqs.get(w) == 'add']
    if added:
        raise ValueError(
            "grad_req='add' for %s, which masked_opt_lookup computes: MXNet's sparse Embedding "
            "refuses to accumulate its row_sparse gradient (\"req != write\"), and so does the "
            "converted lookup. Bind with grad_req='write' (or 'null' to freeze the table)"
            % ', '.join(added))
    if inputs_need_grad:
        raise ValueError(
            'inputs_need_grad=True with masked_opt_lookup in the graph: MXNet\'s Embedding does '
            'not compute a gradient for its ids ("doesn\'t support calculate data gradient"), '
            'nor does the converted lookup. Bind with inputs_need_grad=False')


# ------------------------------------------------------------------------------- Gluon
def _blocks(block, prefix=''):
    """(path, block) for `block` and every block under it, parents first."""
    yield prefix or block.name, block
    for name, child in block._children.items():
        yield from _blocks(child, (prefix + '.' if prefix else '') + name)


def _layer_blocker(layer):
    """Why `layer` (a sparse-gradient embedding) cannot be converted, or None."""
    if layer.weight.grad_req == 'add':
        return "grad_req='add' (MXNet's Embedding refuses it at backward; left to do so)"
    if mx.util.is_np_array():
        return 'numpy mode (mx.npx.set_np): the lookup is registered in mx.nd/mx.sym only'
    try:
        ctxs = layer.weight.list_ctx()
    except RuntimeError:   # not initialised yet: converted; GPUs use MXNet's op (see forward)
        ctxs = []
    gpus = [c for c in ctxs if c.device_type != 'cpu']
    if gpus:
        return 'initialised on %s (the lookup runs on CPU only)' % ', '.join(map(str, gpus))
    return None


def _convert_block(block):
    from mxnet import gluon

    from .lookup_layers import LookupEmbedding, LookupSparseEmbedding
    converted, left, hybrid = [], [], []
    blocker = _no_native()
    for path, b in _blocks(block):
        if isinstance(b, gluon.HybridBlock):
            hybrid.append(b)
        if isinstance(b, (LookupEmbedding, LookupSparseEmbedding)):
            continue
        if type(b) is gluon.nn.Embedding and not b._kwargs.get('sparse_grad'):
            left.append((path, _DENSE))
            continue
        if type(b) is gluon.nn.Embedding:
            cls = LookupEmbedding
        elif type(b) is gluon.contrib.nn.SparseEmbedding:
            cls = LookupSparseEmbedding
        else:
            continue   # subclasses may change forward: not ours to replace
        why = blocker or _layer_blocker(b)
        if why is not None:
            left.append((path, why))
            continue
        # A parent refuses a child of another class; switching the class keeps the object,
        # its Parameter and its name in every parent.
        b.__class__ = cls
        converted.append(path)
    if converted:
        for b in hybrid:   # a hybridized parent would keep running its cached graph
            b._clear_cached_op()
    _report(type(block).__name__, converted, left)
    return block


def convert_embeddings(model, ctx=None):
    """Replace every sparse-gradient embedding lookup by masked_opt's O(batch) native lookup.

    Every ``Embedding(sparse_grad=True)`` (and ``contrib.SparseEmbedding``) gets the native
    operator ``masked_opt_lookup``: the same forward bits and the same row_sparse weight
    gradient bits as MXNet 1.9.1's, but a backward that costs O(batch * dim + batch log batch)
    instead of three passes over every row of the table. Dense-gradient embeddings, GPU
    contexts and a process without the native library keep MXNet's layer; one log line on the
    ``'masked_opt'`` logger says what was converted and what was left, and why (a warning when
    a sparse-gradient layer was left).

    Parameters
    ----------
    model : mxnet.symbol.Symbol or mxnet.gluon.Block
        A Symbol: a new Symbol is returned with the same argument names, attributes and
        outputs (each converted weight variable gets ``__shape__``, which the native op needs).
        A Block: converted in place (the same layers and ``Parameter`` objects, before or after
        ``initialize``, hybridized or not; hybridized parents drop their cached graph) and
        returned.
    ctx : Context or list of Context, optional
        For a Symbol only: the contexts it will be bound to. A GPU among them leaves the Symbol
        as it is (the lookup runs on CPU only). A Block's contexts are read from its Parameters.

    Returns
    -------
    Symbol or Block

    Notes
    -----
    A JSON file saved from a converted Symbol names ``masked_opt_lookup``: call
    ``masked_opt.native.available()`` (which loads the library) before loading it; the
    parameter files are the same as the unconverted model's. The lookup cannot see a gradient
    request: a Gluon layer refuses ``grad_req='add'`` and ids with an attached gradient, as
    MXNet's Embedding does; ``Module.bind`` refuses them for a converted Symbol
    (:func:`check_bind`). An executor bound by hand (``simple_bind``) is not checked. A Block
    that will live on a GPU: convert it after ``initialize`` (it is then left as it is); a
    converted layer called imperatively on a GPU runs MXNet's Embedding, but a hybridized
    graph traced before the Parameters' context is known would name the CPU-only lookup.

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> ids = mx.sym.Variable('ids')
    >>> emb = mx.sym.Embedding(ids, input_dim=1000, output_dim=4, sparse_grad=True, name='emb')
    >>> conv = mo.convert_embeddings(emb)
    >>> conv.list_arguments() == emb.list_arguments()
    True
    >>> net = mx.gluon.nn.Embedding(1000, 4, sparse_grad=True)
    >>> mo.convert_embeddings(net) is net
    True
    """
    if isinstance(model, mx.sym.Symbol):
        if ctx is None:
            ctx = []
        elif isinstance(ctx, mx.Context):
            ctx = [ctx]
        return _convert_symbol(model, list(ctx))
    if isinstance(model, mx.gluon.Block):
        if ctx is not None:
            raise TypeError('convert_embeddings: ctx is for a Symbol; a Block\'s contexts are '
                            'those of its Parameters (got ctx=%r)' % (ctx,))
        return _convert_block(model)
    raise TypeError('convert_embeddings expects an mxnet Symbol or a gluon Block, got %s; '
                    'pass the network (mx.sym...) or the Block itself' % type(model).__name__)
