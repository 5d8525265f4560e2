"""The trainable block of a masked parameter, on one context: gather, scatter, blend.

The core idea of masked_opt: gather the trainable block (rows with a non-zero row scale x
columns with a non-zero column scale) out of the weight and the gradient, let the wrapped
optimizer update that small block as if it were a parameter of its own, and write the block
back. Frozen entries are never read into the update and never written, so they stay
bit-identical whatever the optimizer does (weight decay, momentum, NaN gradients, norms).

Operators used on the update path, each with a GPU kernel (``FCompute<gpu>``) and no host
sync in MXNet 1.9.1: ``take`` (mode ``clip``) and ``_scatter_set_nd`` (in place);
``_slice_assign`` (in place) and ``slice`` when the trainable rows and columns are contiguous
ranges (``train_rows_from``, ``train_cols(range(a, b))``); ``broadcast_sub`` (what ``x - y``
on two NDArrays runs in 1.9.1), ``broadcast_mul`` and ``_copyto`` for fractional scales. A 2-D
weight whose trainable columns are one aligned group of ``k`` columns (``c0 % k == 0`` and
``D % k == 0``) is read through its ``(V*D/k, k)`` reshape, a view that shares the weight's
memory and engine variable (no operator): the block is one ``take`` of rows
``row * D/k + c0/k`` of that view, and, where the block is not one contiguous range, the
write-back one row scatter into it.
``tests/gpu/test_gpu_no_sync.py`` records the operators a step runs and checks this list.
Index arrays are int32 and unique (scatter has no bound check and duplicate indices race on
GPU), and they are made once per context by :class:`BlockPlan` and reused every step. The
dense path gathers the weight block into a buffer the plan keeps (``out=``) instead of
allocating a block-sized array every step. The row_sparse path (:class:`SparseStep`) adds
``Embedding`` (a lookup into the row_sparse gradient: FComputeEx on CPU and GPU, with an
in-op bound check on GPU) and ``slice_axis`` (a contiguous column range of whole rows), and
reads the gradient's row ids on the host once per step. A row_sparse weight (kvstore) is
read and written through a dense view of its storage (DLPack), by the same ``take`` and
``_scatter_set_nd``, between two waits (see :func:`_storage_view`).
"""
import ctypes

import numpy as np
from mxnet import ndarray as nd
from mxnet.base import _LIB, NDArrayHandle, check_call
from mxnet.context import cpu

from .row_ids import check_row_ids

# nd.array(numpy) uploads synchronously; it is only called when a plan is built, once per
# parameter and context, never per step (SparseStep's per-step uploads use _upload).


def _index_dtype(limit):
    """int32 when every index is below ``limit`` <= 2**31, else int64."""
    return np.int32 if limit <= np.iinfo(np.int32).max + 1 else np.int64


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


def _contiguous(ids):
    """True when ``ids`` (sorted, unique) is one run ``a, a+1, ..., b-1`` of at least one."""
    return ids.size > 0 and int(ids[-1]) - int(ids[0]) + 1 == ids.size


def _upload(values, ctx, dtype):
    """``nd.array(values, ctx=ctx, dtype=dtype)`` for a numpy array, without blocking Python.

    ``nd.array`` (and ``_sync_copyfrom``) push a write onto the engine and wait for it, behind
    whatever the worker is still running: every upload becomes a wait. Instead the values are
    copied straight into the memory of a fresh CPU NDArray (``nd.empty``; ``MXNDArrayGetData``
    allocates it): no engine operation has seen that array yet, so nothing can race with the
    copy, and every operator pushed afterwards reads the values. ``as_in_context`` to another
    device is an asynchronous copy. SparseStep uploads a few small index arrays every step.

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


class BlockPlan:
    """Device-side index arrays and scales for one masked parameter on one context.

    Parameters
    ----------
    shape : tuple of int
        Full shape of the weight.
    rows, cols : numpy.ndarray or None
        Row and column scales from :meth:`masked_opt.Mask.resolve` (None means all ones).
    ctx : mxnet.context.Context
        Where the weight lives.
    dtype : numpy dtype
        dtype of the weight; fractional scales are stored in it.
    name : str, optional
        The parameter's name, for error messages.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> w = mx.nd.arange(8).reshape((4, 2))
    >>> plan = BlockPlan(w.shape, np.array([0., 0., 1., 1.]), None, w.context, w.dtype)
    >>> plan.gather(w).asnumpy().tolist()
    [[4.0, 5.0], [6.0, 7.0]]
    """

    def __init__(self, shape, rows, cols, ctx, dtype, name=None):
        self.shape = tuple(shape)
        self.name = name
        self.ctx = ctx
        n_rows = self.shape[0]
        row_ids = np.arange(n_rows) if rows is None else np.flatnonzero(rows)
        self.row_ids = row_ids
        self.all_rows = row_ids.size == n_rows
        if cols is None:
            col_ids = None if len(self.shape) < 2 else np.arange(self.shape[1])
            self.all_cols = True
        else:
            col_ids = np.flatnonzero(cols)
            self.all_cols = col_ids.size == self.shape[1]
        self.col_ids = col_ids
        self.block_shape = (row_ids.size,) + (
            self.shape[1:] if col_ids is None else (col_ids.size,) + self.shape[2:])
        self.empty = 0 in self.block_shape
        self.whole = self.all_rows and self.all_cols

        def upload(a):
            return nd.array(a, ctx=ctx, dtype='int32')

        self._rows64 = nd.array(row_ids, ctx=ctx, dtype='int64')  # for sparse.retain
        self._sparse_pack = None   # SparseStep(lazy=False): its index arrays, uploaded once
        # Contiguous rows and columns: slice / _slice_assign, no index arrays (see module doc).
        self._slice = None
        if _contiguous(row_ids) and (col_ids is None or _contiguous(col_ids)):
            begin, end = (int(row_ids[0]),), (int(row_ids[-1]) + 1,)
            # Rows only: slice axis 0 alone, so that a state with one entry per row (shape
            # (V, 1), GroupAdaGrad) is cut like the weight.
            if not self.all_cols:
                begin, end = begin + (int(col_ids[0]),), end + (int(col_ids[-1]) + 1,)
            self._slice = (begin, end)
        self._buffers = {}   # dense path: 'weight' -> block-shaped array reused every step
        # One aligned group of k columns of a 2-D weight: (c0 / k, D / k, k), see group_view().
        self.group = None
        if (len(self.shape) == 2 and not self.all_cols and _contiguous(col_ids)
                and int(col_ids[0]) % col_ids.size == 0 and self.shape[1] % col_ids.size == 0):
            k = col_ids.size
            self.group = (int(col_ids[0]) // k, self.shape[1] // k, k)
        self.index_dtype = (np.int32 if self.group is None
                            else _index_dtype(n_rows * self.group[1]))
        self._take_cols = None if self.all_cols else upload(col_ids)  # also for SparseStep
        # A contiguous column range is cut from whole rows with slice_axis (take_cols).
        self._col_range = (None if self.all_cols or not _contiguous(col_ids)
                           else (int(col_ids[0]), int(col_ids[-1]) + 1))
        self._take_rows = self._scatter_index = self._group_ids = None
        if self.group is not None and not self.empty:
            # take() of the block's rows of the (V*D/k, k) view: one pass, no strided slice.
            self._group_ids = nd.array(self.group_ids(row_ids), ctx=ctx, dtype=self.index_dtype)
        elif self._slice is None and not self.empty:
            self._take_rows = None if self.all_rows else upload(row_ids)
            if self.all_cols:
                self._scatter_index = upload(row_ids[None, :])
            else:
                self._scatter_index = upload(np.stack([np.repeat(row_ids, col_ids.size),
                                                       np.tile(col_ids, row_ids.size)]))
        # Scales strictly inside (0, 1) need a blend; store 1 - s so that s == 1 blends to the
        # inner optimizer's result exactly (new - 0 * d == new), see blend().
        scale = np.ones(self.block_shape[:2] if col_ids is not None else self.block_shape[:1])
        if rows is not None:
            scale = scale * rows[row_ids].reshape((-1,) + (1,) * (scale.ndim - 1))
        if cols is not None:
            scale = scale * cols[col_ids][None, :]
        if np.all(scale == 1.0):
            self._keep = None
        else:
            keep = (1.0 - scale).reshape(scale.shape + (1,) * (len(self.block_shape) - scale.ndim))
            # In the weight's dtype, and in float32 for the master copy of multi_precision.
            self._keep = {np.dtype(t): nd.array(keep, ctx=ctx, dtype=t)
                          for t in {np.dtype(dtype), np.dtype(np.float32)}}
        self.fractional = self._keep is not None

    def positions(self, ids):
        """Which of the sorted unique row ids ``ids`` train, and their block positions.

        Returns ``(keep, pos)``: ``ids[keep]`` are the trainable ones, at rows ``pos`` of the
        block. A binary search in the sorted trainable ids: host memory O(trainable rows).
        """
        if self.all_rows:
            return np.arange(ids.size), ids
        if self.row_ids.size == 0:
            return np.arange(0), np.arange(0)
        pos = np.searchsorted(self.row_ids, ids)
        found = np.minimum(pos, self.row_ids.size - 1)
        keep = np.flatnonzero(self.row_ids[found] == ids)
        return keep, pos[keep]

    def group_ids(self, rows):
        """Rows of the ``(V*D/k, k)`` view that hold the column group of weight rows ``rows``."""
        first, per_row, _ = self.group
        return np.asarray(rows, dtype=np.int64) * per_row + first

    def group_view(self, full):
        """The ``(V*D/k, k)`` reshape of a weight-shaped array: a view, same memory and engine
        variable, so writes into it are writes into ``full``. None when not applicable."""
        if self.group is None or tuple(full.shape) != self.shape:
            return None
        return full.reshape((-1, self.group[2]))

    def gather(self, full, out=None):
        """Return the block of ``full`` (an array of the weight's shape), as a new array.

        With ``out`` (a dense block-shaped array), write the block there instead.
        """
        if full.stype == 'row_sparse':
            # take() on a row_sparse array densifies the whole table; retain reads rows only.
            return self.take_cols(nd.sparse.retain(full, self._rows64).data)
        view = self.group_view(full)
        if view is not None:
            return nd.take(view, self._group_ids, axis=0, mode='clip', out=out)
        if self._slice is not None:
            return nd.slice(full, begin=self._slice[0], end=self._slice[1], out=out)
        if self._take_cols is None:
            return nd.take(full, self._take_rows, axis=0, mode='clip', out=out)
        rows = full
        if self._take_rows is not None:
            rows = nd.take(full, self._take_rows, axis=0, mode='clip')
        return nd.take(rows, self._take_cols, axis=1, mode='clip', out=out)

    def gather_weight(self, weight):
        """The weight's block for this step's update, in a buffer the plan reuses.

        Safe to reuse: the block is written back (:meth:`scatter`) before the next step
        gathers into the buffer again, and MXNet's engine orders those two on the buffer.
        """
        return self._gather_into('weight', weight)

    def _gather_into(self, key, full):
        if full.stype != 'default':
            return self.gather(full)
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != full.dtype:
            buf = self._buffers[key] = nd.empty(self.block_shape, ctx=self.ctx,
                                                dtype=full.dtype)
        return self.gather(full, out=buf)

    def take_cols(self, rows):
        """Keep the trainable columns of an array of whole rows."""
        if self._take_cols is None:
            return rows
        if self._col_range is not None:
            return nd.slice_axis(rows, axis=1, begin=self._col_range[0],
                                 end=self._col_range[1])
        return nd.take(rows, self._take_cols, axis=1, mode='clip')

    # The dense path updates the block state in place, so it needs no view or write-back.
    def gather_grad(self, grad):
        """The gradient's block, as a new array.

        Not a reused buffer: a wrapped optimizer may keep the gradient it was given across
        steps (LBSGD accumulates ``cum_grad = grad`` over ``batch_scale`` steps).
        """
        return self.gather(grad)

    def state_view(self, block_state):
        """The part of a block-shaped state this step updates: all of it, in place."""
        return block_state

    def state_store(self, view, block_state):
        """Nothing to write back: the wrapped optimizer updated the block state in place."""

    def scatter(self, block, full):
        """Write ``block`` back into its entries of ``full``, in place; other entries untouched."""
        if full.stype == 'row_sparse':
            view = _storage_view(full)
            self._scatter_dense(block, view)
            view.wait_to_read()   # see _storage_view
            return
        self._scatter_dense(block, full)

    def _scatter_dense(self, block, full):
        if self.whole:
            block.copyto(full)
            return
        if self._slice is not None:
            nd._internal._slice_assign(full, block, begin=self._slice[0], end=self._slice[1],
                                       out=full)
            return
        view = self.group_view(full)
        if view is not None:
            nd._internal._scatter_set_nd(lhs=view, rhs=block, indices=self._group_ids.reshape(
                (1, -1)), shape=view.shape, out=view)
            return
        rows = self._scatter_index.shape[1]
        # full.shape, not self.shape: a per-row state (V, 1) is scattered by rows like the weight.
        nd._internal._scatter_set_nd(lhs=full, rhs=block.reshape((rows,) + full.shape[
            (1 if self.all_cols else 2):]), indices=self._scatter_index, shape=full.shape,
            out=full)

    def blend(self, new, old):
        """Move ``new`` back towards ``old`` so that each entry moves by ``s`` x its step.

        Computes ``new - (1 - s) * (new - old)`` in place in ``new``; entries with ``s == 1``
        keep the wrapped optimizer's result bit-for-bit.
        """
        return _blend(new, old, self._keep)

def _storage_view(weight):
    """A dense view of the storage of a row_sparse array that holds every row, for writing.

    MXNet 1.9.1 has no operator that copies rows into a row_sparse array in place: its lazy
    optimizer kernels are the only in-place row writers, and they compute from the old value
    (``sgd_update(lr=1, wd=1, rescale_grad=-1)`` gives ``0 * w + v``: NaN where ``w`` is
    +-Inf, a quieted signalling NaN, ``+0.0`` for a ``-0.0`` result). The storage of a
    row_sparse array holding all ``V`` rows is a dense ``(V, ...)`` array in row order (ids
    are sorted and unique), which DLPack hands over without a copy; ``take`` and
    ``_scatter_set_nd`` on it copy bits exactly.

    The view has an engine variable of its own, so the engine orders nothing between it and
    ``weight``: ``to_dlpack_for_write`` first waits until every pending read and write of
    ``weight`` is done, and the caller waits for its writes to the view (``wait_to_read``)
    before anything else may use ``weight``. Two waits per step, on a path that waits for the
    gradient's row ids anyway.
    """
    view = nd.from_dlpack(weight.to_dlpack_for_write())
    if tuple(view.shape) != tuple(weight.shape):
        raise ValueError('a masked row_sparse weight must hold all of its %d rows (as a '
                         'kvstore holds them); this one holds %d. Store it in full, e.g. '
                         'weight.tostype("default").tostype("row_sparse") after filling it.'
                         % (weight.shape[0], view.shape[0]))
    return view


class SparseStep:
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

    def __init__(self, plan, grad, lazy):
        self.plan = plan
        self._views = {}   # id(row_sparse array) -> (array, dense storage view), this step
        if lazy:
            ids = _host_row_ids(grad)
            check_row_ids(ids, plan.shape[0], plan.name)   # before anything is written
            keep, pos = plan.positions(ids)
            rows = ids[keep]
        else:
            keep = None
            rows, pos = plan.row_ids, np.arange(plan.row_ids.size)
        self.empty = rows.size == 0
        if self.empty:
            return
        packed = plan._sparse_pack if not lazy else None
        if packed is None:
            packed = self._pack(plan, rows, pos, keep, ids.size if lazy else 0)
            if not lazy:   # the same every step: uploaded once per plan
                plan._sparse_pack = packed
        (self._rows32, self._pos, self._gids, self._scatter_index, take_keep) = packed
        if not lazy:
            g_rows = nd.sparse.retain(grad, plan._rows64).data
        elif len(plan.shape) == 2:
            # Embedding's lookup into a row_sparse table (FComputeEx on CPU and GPU) reads the
            # selected rows without grad.data, which would be a second wait and a full copy.
            g_rows = nd.Embedding(self._rows32, grad, input_dim=plan.shape[0],
                                  output_dim=plan.shape[1])
        elif take_keep is None:   # every row of the batch trains (e.g. a column mask)
            g_rows = grad.data
        else:
            g_rows = nd.take(grad.data, take_keep, axis=0)
        self._pos_index = self._pos.reshape((1, -1))
        self._grad = plan.take_cols(g_rows)
        self._keep = None
        if plan.fractional:
            self._keep = {t: nd.take(k, self._pos, axis=0) for t, k in plan._keep.items()}

    @staticmethod
    def _pack(plan, rows, pos, keep, n_ids):
        """Upload this step's index arrays as one array; return views of it.

        Returns ``(rows, positions, group ids, scatter index, batch rows to keep)``: the rows
        (for the gradient lookup and the row scatter), their block positions (the rows
        themselves when every row trains), the rows of the ``(V*D/k, k)`` view for an
        aligned column group, the ``(2, n*C)`` scatter index for other column masks, and
        which rows of an N-D gradient's data to keep (None: all).
        """
        n = rows.size
        named = [('rows', rows)]
        same_pos = plan.all_rows and keep is not None   # lazy, all rows: positions == ids
        if not same_pos:
            named.append(('pos', pos))
        if plan.group is not None:
            named.append(('group', plan.group_ids(rows)))
        elif not plan.all_cols:
            cols = plan.col_ids
            named.append(('scatter', np.concatenate([np.repeat(rows, cols.size),
                                                     np.tile(cols, n)])))
        if keep is not None and len(plan.shape) != 2 and keep.size != n_ids:
            named.append(('keep', keep))
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
        return rows_nd, views.get('pos', rows_nd), views.get('group'), scatter, views.get('keep')

    def _dense(self, full):
        """``full`` itself, or the dense storage view of a row_sparse one (kept this step)."""
        if full.stype != 'row_sparse':
            return full
        if id(full) not in self._views:
            self._views[id(full)] = (full, _storage_view(full))
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

    @property
    def fractional(self):
        return self._keep is not None

    def blend(self, new, old):
        """As :meth:`BlockPlan.blend`, for the selected rows."""
        return _blend(new, old, self._keep)


def _blend(new, old, keep):
    """``new -= (1 - s) * (new - old)`` in place; ``keep`` maps a dtype to ``1 - s`` (or None)."""
    if keep is None:
        return new
    new -= nd.broadcast_mul(new - old, keep[np.dtype(new.dtype)])
    return new
