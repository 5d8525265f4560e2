"""Gluon layers that compute ``nn.Embedding(sparse_grad=True)`` / ``SparseEmbedding`` with
masked_opt's native lookup.

Not built directly: :func:`masked_opt.convert_embeddings` switches an existing layer's class to
one of these, so the object, its ``Parameter`` and its place in every parent stay the same
(a Block refuses a child of another class). Imported by the first conversion, not by
``import masked_opt``: a kvstore server imports masked_opt while mxnet is still importing,
before ``mx.gluon`` exists.

Examples
--------
>>> import mxnet as mx, masked_opt as mo
>>> from masked_opt.lookup_layers import LookupEmbedding
>>> net = mo.convert_embeddings(mx.gluon.nn.Embedding(10, 2, sparse_grad=True))
>>> isinstance(net, LookupEmbedding) or not mo.native.available()
True
"""
import mxnet as mx
import numpy as np

from .native import LOOKUP_OP as OP

__all__ = ['LookupEmbedding', 'LookupSparseEmbedding']


def _check_grads(layer, x):
    """Refuse what MXNet's Embedding refuses and the native op cannot see (it gets no `req`)."""
    if not mx.autograd.is_recording():
        return
    if layer.weight.grad_req == 'add':
        raise ValueError(
            "%s: grad_req='add' on %s: MXNet's sparse Embedding refuses to accumulate its "
            "row_sparse gradient (\"doesn't support weight gradient calculation with req != "
            "write\"), and so does the converted lookup. Use grad_req='write', or sum the "
            "gradients yourself" % (layer.name, layer.weight.name))
    if isinstance(x, mx.nd.NDArray) and x.grad is not None:
        raise ValueError(
            "%s: the ids have a gradient attached; MXNet's Embedding does not compute a "
            "gradient for its ids (\"doesn't support calculate data gradient\"), nor does the "
            "converted lookup. Do not attach_grad() to the ids" % layer.name)


def _attrs(layer):
    """The layer's Embedding attributes, its dtype as a name: MXNet turns ``dtype=np.float32``
    into ``'float32'`` for its own operators, but passes a library operator ``str(value)``."""
    return dict(layer._kwargs, dtype=np.dtype(layer._kwargs['dtype']).name)


class LookupEmbedding(mx.gluon.nn.Embedding):
    """``nn.Embedding(sparse_grad=True)`` computed by ``masked_opt_lookup``.

    Not built directly: :func:`masked_opt.convert_embeddings` switches an existing layer to this
    class, so its ``Parameter`` and its place in the parent stay the same.
    """

    def forward(self, x, *args):
        _check_grads(self, x)
        return super().forward(x, *args)

    def hybrid_forward(self, F, x, weight):
        if isinstance(weight, mx.nd.NDArray) and weight.context.device_type != 'cpu':
            return super().hybrid_forward(F, x, weight)   # CPU-only op: MXNet's on GPUs
        return getattr(F, OP)(x, weight, name='fwd', **_attrs(self))


class LookupSparseEmbedding(mx.gluon.contrib.nn.SparseEmbedding):
    """``contrib.nn.SparseEmbedding`` (row_sparse weight) computed by ``masked_opt_lookup``."""

    def forward(self, x):
        _check_grads(self, x)
        weight = self.weight.row_sparse_data(x)
        if weight.context.device_type != 'cpu':
            return super().forward(x)
        return getattr(mx.nd, OP)(x, weight, name='fwd', **_attrs(self))
