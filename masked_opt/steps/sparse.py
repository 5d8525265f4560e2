"""The pure row_sparse strategy: the trainable rows a row_sparse gradient holds, gathered.

The reference path for a row_sparse gradient (``Embedding(sparse_grad=True)``), for every
optimizer, mask, dtype and context: read the gradient's row ids on the host, select the
trainable ones, and hand the wrapped optimizer those rows of the block (lazy, like MXNet's
``lazy_update=True``) or every trainable row (``lazy_update=False``). Index arrays of a step
are uploaded as one packed array. See :class:`SparseRows`.

>>> import mxnet as mx, numpy as np
>>> from masked_opt.update import BlockPlan
>>> from masked_opt.steps.sparse import SparseRows
>>> w = mx.nd.arange(8).reshape((4, 2))
>>> plan = BlockPlan(w.shape, np.array([0., 0., 1., 1.]), None, w.context, w.dtype)
>>> g = mx.nd.sparse.row_sparse_array((np.ones((2, 2), 'float32'), [1, 3]), shape=(4, 2))
>>> SparseRows(plan, g, lazy=True).gather_weight(w).asnumpy().tolist()   # row 3 only
[[6.0, 7.0]]
"""
import ctypes

import numpy as np
from mxnet import ndarray as nd
from mxnet.base import _LIB, NDArrayHandle, check_call
from mxnet.context import cpu

from ..row_ids import check_row_ids
from ..update import storage_view
from .base import BlockStep

__all__ = ['SparseRows']


def _host_row_ids(grad):
    """The row ids of a row_sparse array, on the host, after one engine round trip.

    ``grad.indices`` waits for ``grad`` (``wait_to_read``) and then pushes a copy of the ids
    and waits for it: two waits. ``MXNDArrayGetAuxNDArray`` alone pushes that copy behind
    whatever still writes ``grad`` and waits once. ``asnumpy`` of the copy, which is ready,
    then costs no round trip on CPU (it reads in the calling thread).
    """
    handle = NDArrayHandle()
    check_call(_LIB.MXNDArrayGetAuxNDArray(grad.handle, ctypes.c_int(0), ctypes.byref(handle)))
    return nd.NDArray(handle).asnumpy()


def _upload(values, ctx, dtype):
    """``nd.array(values, ctx=ctx, dtype=dtype)`` for a numpy array, without blocking Python.

    ``nd.array`` (and ``_sync_copyfrom``) push a write onto the engine and wait for it, behind
    whatever the worker is still running: every upload becomes a wait. Instead the values are
    copied straight into the memory of a fresh CPU NDArray (``nd.empty``; ``MXNDArrayGetData``
    allocates it): no engine operation has seen that array yet, so nothing can race with the
    copy, and every operator pushed afterwards reads the values. ``as_in_context`` to another
    device is an asynchronous copy. SparseRows uploads a few small index arrays every step.

    Not ``nd.from_numpy(zero_copy=True)``, which is as fast: its NDArray frees the numpy buffer
    through a Python callback, run by whichever thread drops the last reference. When that is
    an engine worker finishing an operator while Python shuts down, the callback cannot take
    the GIL, the worker thread is unwound through C++ and the process aborts ("terminate called
    without an active exception"), in about one script in three that exits right after
    training on this path (``tests/test_exit.py``).
    """
    host = np.ascontiguousarray(values, dtype=dtype)
    out = nd.empty(host.shape, ctx=cpu(), dtype=host.dtype)   # memory MXNet owns and frees
    if host.size:
        ptr = ctypes.c_void_p()
        check_call(_LIB.MXNDArrayGetData(out.handle, ctypes.byref(ptr)))
        ctypes.memmove(ptr, host.ctypes.data, host.nbytes)
    return out if out.context == ctx else out.as_in_context(ctx)




class SparseRows(BlockStep):
    """The trainable rows one row_sparse gradient touches, for one update.

    Lazy semantics (the default, like MXNet's ``lazy_update=True``): only rows that are in the
    gradient *and* trainable are read, updated and written; the work is O(rows in batch x D).
    With ``lazy=False`` every trainable row is updated, absent rows with a zero gradient
    (MXNet's standard update restricted to the block).

    Host round trip, by necessity: MXNet 1.9.1 has no operator that reads a row_sparse
    array's row ids or builds one from device arrays without a host sync (``.indices``,
    ``.data`` and ``row_sparse_array`` all wait), and the ids decide the shape of the rows to
    update. So this step reads the gradient's ids once (one engine round trip, see
    :func:`_host_row_ids`), selects the trainable ones by a binary search in the plan's sorted
    row ids, and uploads every index array of the step as one packed array (views of it cost
    no operator); everything else runs on the weight's device. On GPU the
    ``Embedding(sparse_grad=True)`` backward that produced the gradient has already
    synchronised twice in-op (its bound check and the copy of its unique-row count to the
    host).

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan on this context.
    grad : RowSparseNDArray
        The gradient, with sorted unique row ids (as MXNet produces them).
    lazy : bool
        Update only rows present in ``grad`` (True) or every trainable row (False).
    """

    name = 'sparse'

    def __init__(self, plan, grad, lazy):
        self.plan = plan
        self._views = {}   # id(row_sparse array) -> (array, dense storage view), this step
        if lazy:
            ids = _host_row_ids(grad)
            check_row_ids(ids, plan.shape[0], plan.name)   # before anything is written
            hit, pos = plan.positions(ids)
            rows = ids[hit]
        else:
            # sparse.retain (plan.retained_rows) binary-searches the ids as if sorted and drops
            # the rows it misses; this path waits for the gradient anyway (.data), so its ids
            # are checked on the host as on the lazy path (one more copy of at most a batch).
            check_row_ids(_host_row_ids(grad), plan.shape[0], plan.name)
            hit = None
            rows, pos = plan.row_ids, np.arange(plan.row_ids.size)
        self.empty = rows.size == 0
        if self.empty:
            return
        if lazy:
            packed = self._pack(plan, rows, pos, hit, ids.size)
        else:   # the same every step: uploaded once per plan
            packed = plan.remember('sparse_pack', None,
                                   lambda: self._pack(plan, rows, pos, hit, 0))
        (self._rows32, self._pos, self._gids, self._scatter_index, batch_rows) = packed
        if not lazy:
            g_rows = plan.retained_rows(grad)
        elif len(plan.shape) == 2:
            # Embedding's lookup into a row_sparse table (FComputeEx on CPU and GPU) reads the
            # selected rows without grad.data, which would be a second wait and a full copy.
            g_rows = nd.Embedding(self._rows32, grad, input_dim=plan.shape[0],
                                  output_dim=plan.shape[1])
        elif batch_rows is None:   # every row of the batch trains (e.g. a column mask)
            g_rows = grad.data
        else:
            g_rows = nd.take(grad.data, batch_rows, axis=0)
        self._pos_index = self._pos.reshape((1, -1))
        self._grad = plan.take_cols(g_rows)
        if plan.fractional:
            self.complement = {t: nd.take(k, self._pos, axis=0)
                               for t, k in plan.complement.items()}

    @staticmethod
    def _pack(plan, rows, pos, hit, n_ids):
        """Upload this step's index arrays as one array; return views of it.

        Returns ``(rows, positions, group ids, scatter index, batch rows to keep)``: the rows
        (for the gradient lookup and the row scatter), their block positions (the rows
        themselves when every row trains), the rows of the ``(V*D/k, k)`` view for an
        aligned column group, the ``(2, n*C)`` scatter index for other column masks, and
        which rows of an N-D gradient's data train (None: all).
        """
        n = rows.size
        named = [('rows', rows)]
        same_pos = plan.all_rows and hit is not None   # lazy, all rows: positions == ids
        if not same_pos:
            named.append(('pos', pos))
        if plan.group is not None:
            named.append(('group', plan.group_ids(rows)))
        elif not plan.all_cols:
            cols = plan.col_ids
            named.append(('scatter', np.concatenate([np.repeat(rows, cols.size),
                                                     np.tile(cols, n)])))
        if hit is not None and len(plan.shape) != 2 and hit.size != n_ids:
            named.append(('batch_rows', hit))
        flat = _upload(np.concatenate([a for _, a in named]), plan.ctx, plan.index_dtype)
        views, at = {}, 0
        for name, a in named:
            views[name] = flat[at:at + a.size]   # basic slicing: a view, no operator
            at += a.size
        rows_nd = views['rows']
        if 'scatter' in views:
            scatter = views['scatter'].reshape((2, -1))
        else:
            scatter = rows_nd.reshape((1, -1)) if plan.all_cols else None
        return (rows_nd, views.get('pos', rows_nd), views.get('group'), scatter,
                views.get('batch_rows'))

    def _dense(self, full):
        """``full`` itself, or the dense storage view of a row_sparse one (kept this step)."""
        if full.stype != 'row_sparse':
            return full
        if id(full) not in self._views:
            self._views[id(full)] = (full, storage_view(full))
        return self._views[id(full)][1]

    def gather(self, full):
        """The selected rows (trainable columns only) of a weight-shaped array."""
        full = self._dense(full)
        view = self.plan.group_view(full)
        if view is not None:
            return nd.take(view, self._gids, axis=0, mode='clip')
        return self.plan.take_cols(nd.take(full, self._rows32, axis=0, mode='clip'))

    gather_weight = gather

    def gather_grad(self, grad):
        """The gradient's selected rows, dense."""
        return self._grad

    def scatter(self, rows, full):
        """Write the selected rows back into a weight-shaped array; nothing else changes."""
        sparse = full.stype == 'row_sparse'
        full = self._dense(full)
        view = self.plan.group_view(full)
        if view is not None:
            nd._internal._scatter_set_nd(lhs=view, rhs=rows, indices=self._gids.reshape(
                (1, -1)), shape=view.shape, out=view)
        else:
            n = self._scatter_index.shape[1]
            nd._internal._scatter_set_nd(lhs=full, rhs=rows.reshape((n,) + full.shape[
                (1 if self.plan.all_cols else 2):]), indices=self._scatter_index,
                shape=full.shape, out=full)
        if sparse:
            full.wait_to_read()   # the view's writes are done before anyone reads the weight

    def state_view(self, block_state):
        """The selected rows of a block-shaped state."""
        return nd.take(block_state, self._pos, axis=0, mode='clip')

    def state_store(self, view, block_state):
        """Write updated state rows back into the block-shaped state."""
        nd._internal._scatter_set_nd(lhs=block_state, rhs=view, indices=self._pos_index,
                                     shape=block_state.shape, out=block_state)
