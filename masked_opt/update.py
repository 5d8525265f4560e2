"""The trainable block of a masked parameter, on one context: gather, scatter, blend.

The core idea of masked_opt: gather the trainable block (rows with a non-zero row scale x
columns with a non-zero column scale) out of the weight and the gradient, let the wrapped
optimizer update that small block as if it were a parameter of its own, and write the block
back. Frozen entries are never read into the update and never written, so they stay
bit-identical whatever the optimizer does (weight decay, momentum, NaN gradients, norms).

Operators used on the update path, each with a GPU kernel and no host sync in MXNet 1.9.1
(``../shared/gpu_ops.md``): ``slice`` and ``_slice_assign`` (in place) when the trainable rows
and columns are contiguous ranges (``train_rows_from``, ``train_cols(range(a, b))``), otherwise
``take`` (mode ``clip``) and ``_scatter_set_nd`` (in place); ``broadcast_sub`` (what ``x - y``
on two NDArrays runs in 1.9.1), ``broadcast_mul`` and ``_copyto`` for fractional scales.
``tests/gpu/test_gpu_no_sync.py`` records the operators a step runs and checks this list.
Index arrays are int32 and unique (scatter has no bound check and duplicate indices race on
GPU), and they are made once per context by :class:`BlockPlan` and reused every step. The
dense path gathers the weight block into a buffer the plan keeps (``out=``) instead of
allocating a block-sized array every step. The row_sparse path (:class:`SparseStep`) adds
``Embedding`` (a lookup into the row_sparse gradient: FComputeEx on CPU and GPU, with an
in-op bound check on GPU) and ``slice_axis`` (a contiguous column range of whole rows), and
reads the gradient's row ids on the host once per step.
"""
import numpy as np
from mxnet import ndarray as nd

# nd.array(numpy) uploads synchronously; it is only called when a plan is built, once per
# parameter and context, never per step (SparseStep's per-step uploads use _upload).


def _contiguous(ids):
    """True when ``ids`` (sorted, unique) is one run ``a, a+1, ..., b-1`` of at least one."""
    return ids.size > 0 and int(ids[-1]) - int(ids[0]) + 1 == ids.size


def _upload(values, ctx, dtype):
    """``nd.array(values, ctx=ctx, dtype=dtype)`` for a numpy array, without blocking Python.

    ``nd.array`` (and ``_sync_copyfrom``) push a write onto the engine and wait for it, behind
    whatever the worker is still running: every upload becomes a wait. Wrapping a private
    numpy copy as a CPU NDArray (``from_numpy``, zero copy: the NDArray keeps the numpy buffer
    alive) costs no engine round trip, and ``as_in_context`` to another device is an
    asynchronous copy. SparseStep uploads a few small index arrays every step.
    """
    host = np.array(values, dtype=dtype, order='C', copy=True)  # from_numpy marks it read-only
    out = nd.from_numpy(host, zero_copy=True)
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

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> w = mx.nd.arange(8).reshape((4, 2))
    >>> plan = BlockPlan(w.shape, np.array([0., 0., 1., 1.]), None, w.context, w.dtype)
    >>> plan.gather(w).asnumpy().tolist()
    [[4.0, 5.0], [6.0, 7.0]]
    """

    def __init__(self, shape, rows, cols, ctx, dtype):
        self.shape = tuple(shape)
        self.ctx = ctx
        n_rows = self.shape[0]
        row_ids = np.arange(n_rows) if rows is None else np.flatnonzero(rows)
        self.row_ids = row_ids
        self.all_rows = row_ids.size == n_rows
        # Host-side row -> block position (-1: frozen), used to pick the trainable rows of a
        # row_sparse gradient (see SparseStep).
        self.block_position = np.full(n_rows, -1, dtype=np.int64)
        self.block_position[row_ids] = np.arange(row_ids.size)
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
        self._take_cols = None if self.all_cols else upload(col_ids)  # also for SparseStep
        # A contiguous column range is cut from whole rows with slice_axis (take_cols).
        self._col_range = (None if self.all_cols or not _contiguous(col_ids)
                           else (int(col_ids[0]), int(col_ids[-1]) + 1))
        self._take_rows = self._scatter_index = None
        if self._slice is None and not self.empty:
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

    def gather(self, full, out=None):
        """Return the block of ``full`` (an array of the weight's shape), as a new array.

        With ``out`` (a dense block-shaped array), write the block there instead.
        """
        if full.stype == 'row_sparse':
            # take() on a row_sparse array densifies the whole table; retain reads rows only.
            return self.take_cols(nd.sparse.retain(full, self._rows64).data)
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
            _set_rows(full, self._rows64, self._full_rows(full, self._rows64, block))
            return
        if self.whole:
            block.copyto(full)
            return
        if self._slice is not None:
            nd._internal._slice_assign(full, block, begin=self._slice[0], end=self._slice[1],
                                       out=full)
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

    def _full_rows(self, full, rows64, block_rows):
        """Whole rows of ``full`` at ``rows64`` with the trainable columns replaced."""
        if self._take_cols is None:
            return block_rows
        whole = nd.sparse.retain(full, rows64).data
        k = block_rows.shape[0]
        index = nd.stack(nd.repeat(nd.arange(k, ctx=self.ctx, dtype='int32'), self.col_ids.size),
                         nd.tile(self._take_cols, k))
        nd._internal._scatter_set_nd(lhs=whole, rhs=block_rows.reshape(
            (-1,) + self.shape[2:]), indices=index, shape=whole.shape, out=whole)
        return whole


def _set_rows(weight, rows64, values):
    """``weight[rows] = values`` for a row_sparse weight, in place and exactly.

    MXNet has no scatter into a row_sparse array; its lazy ``sgd_update`` is the one kernel
    that writes chosen rows of one in place. With ``lr=1, wd=1, rescale_grad=-1`` it computes
    ``(1 - 1*1) * w - 1 * (-1 * v) == v`` for each row of the carrier ``v`` and touches no
    other row. (Building the carrier uploads synchronously; see SparseStep.)
    """
    carrier = nd.sparse.row_sparse_array((values, rows64), shape=weight.shape, ctx=weight.context)
    nd.sgd_update(weight, carrier, lr=1.0, wd=1.0, rescale_grad=-1.0, lazy_update=True,
                  out=weight)


class SparseStep:
    """The trainable rows one row_sparse gradient touches, for one update.

    Lazy semantics (the default, like MXNet's ``lazy_update=True``): only rows that are in the
    gradient *and* trainable are read, updated and written; the work is O(rows in batch x D).
    With ``lazy=False`` every trainable row is updated, absent rows with a zero gradient
    (MXNet's standard update restricted to the block).

    Host round trip, by necessity: MXNet 1.9.1 has no operator that reads a row_sparse
    array's row ids or builds one from device arrays without a host sync (``.indices``,
    ``.data`` and ``row_sparse_array`` all wait), and the ids decide the shape of the rows to
    update. So this step reads the gradient's ids once (``grad.indices.asnumpy()``), selects
    the trainable ones with a host-side table, and uploads the selection; everything else
    runs on the weight's device. On GPU the ``Embedding(sparse_grad=True)`` backward that
    produced the gradient has already synchronised twice (``../shared/gpu_ops.md``).

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
        ctx = plan.ctx
        if lazy:
            ids = grad.indices.asnumpy()
            pos = plan.block_position[ids]
            keep = np.flatnonzero(pos >= 0)
            rows, self._pos_np = ids[keep], pos[keep]
        else:
            rows, self._pos_np = plan.row_ids, np.arange(plan.row_ids.size)
        self.empty = rows.size == 0
        if self.empty:
            return
        # Python time here is not hidden behind device work (the step just waited for the
        # gradient), so uploads are few and cheap (_upload) and skipped where an array exists.
        self._rows_np = rows
        self._rows64_nd = None   # made on first use: only row_sparse weights need it
        # One upload for the rows and their block positions (views of it: no engine op).
        lazy_all_rows = plan.all_rows and lazy          # then positions == row ids
        packed = _upload(rows[None] if lazy_all_rows else np.stack([rows, self._pos_np]), ctx,
                         np.int32)
        self._rows32 = packed[0]
        self._pos = self._rows32 if lazy_all_rows else packed[1]
        if not lazy:
            g_rows = nd.sparse.retain(grad, plan._rows64).data
        elif len(plan.shape) == 2:
            # Embedding's lookup into a row_sparse table (FComputeEx on CPU and GPU) reads the
            # selected rows without grad.data, which would be a second wait and a full copy.
            g_rows = nd.Embedding(self._rows32, grad, input_dim=plan.shape[0],
                                  output_dim=plan.shape[1])
        elif keep.size == ids.size:   # every row of the batch trains (e.g. a column mask)
            g_rows = grad.data
        else:
            g_rows = nd.take(grad.data, _upload(keep, ctx, np.int32), axis=0)
        self._pos_index = self._pos.reshape((1, -1))
        self._grad = plan.take_cols(g_rows)
        cols = plan.col_ids
        if plan.all_cols:
            self._scatter_index = self._rows32.reshape((1, -1))
        else:
            self._scatter_index = _upload(np.stack([np.repeat(rows, cols.size),
                                                    np.tile(cols, rows.size)]), ctx, np.int32)
        self._keep = None
        if plan.fractional:
            self._keep = {t: nd.take(k, self._pos, axis=0) for t, k in plan._keep.items()}

    @property
    def _rows64(self):
        if self._rows64_nd is None:
            self._rows64_nd = _upload(self._rows_np, self.plan.ctx, np.int64)
        return self._rows64_nd

    def gather(self, full):
        """The selected rows (trainable columns only) of a weight-shaped array."""
        if full.stype == 'row_sparse':
            return self.plan.take_cols(nd.sparse.retain(full, self._rows64).data)
        return self.plan.take_cols(nd.take(full, self._rows32, axis=0, mode='clip'))

    gather_weight = gather

    def gather_grad(self, grad):
        """The gradient's selected rows, dense."""
        return self._grad

    def scatter(self, rows, full):
        """Write the selected rows back into a weight-shaped array; nothing else changes."""
        if full.stype == 'row_sparse':
            _set_rows(full, self._rows64, self.plan._full_rows(full, self._rows64, rows))
            return
        n = self._scatter_index.shape[1]
        nd._internal._scatter_set_nd(lhs=full, rhs=rows.reshape((n,) + full.shape[
            (1 if self.plan.all_cols else 2):]), indices=self._scatter_index,
            shape=full.shape, out=full)

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
