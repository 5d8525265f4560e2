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
allocating a block-sized array every step. The pure row_sparse path
(:class:`masked_opt.steps.sparse.SparseRows`) adds
``Embedding`` (a lookup into the row_sparse gradient: FComputeEx on CPU and GPU, with an
in-op bound check on GPU) and ``slice_axis`` (a contiguous column range of whole rows), and
reads the gradient's row ids on the host once per step. A row_sparse weight (kvstore) is
read and written through a dense view of its storage (DLPack), by the same ``take`` and
``_scatter_set_nd``, between two waits (see :func:`storage_view`).
"""
import numpy as np
from mxnet import ndarray as nd

# nd.array(numpy) uploads synchronously; it is only called when a plan is built, once per
# parameter and context, never per step (the pure row_sparse step's per-step uploads go
# through masked_opt.steps.sparse).


def _index_dtype(limit):
    """int32 when every index is below ``limit`` <= 2**31, else int64."""
    return np.int32 if limit <= np.iinfo(np.int32).max + 1 else np.int64


def _contiguous(ids):
    """True when ``ids`` (sorted, unique) is one run ``a, a+1, ..., b-1`` of at least one."""
    return ids.size > 0 and int(ids[-1]) - int(ids[0]) + 1 == ids.size


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
    slices : bool, default True
        Read and write a block of contiguous rows and columns through slices (and an aligned
        column group through its reshaped view). False takes index arrays for every block:
        the layout the slices are tested against (same bits).

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> w = mx.nd.arange(8).reshape((4, 2))
    >>> plan = BlockPlan(w.shape, np.array([0., 0., 1., 1.]), None, w.context, w.dtype)
    >>> plan.gather(w).asnumpy().tolist()
    [[4.0, 5.0], [6.0, 7.0]]
    """

    def __init__(self, shape, rows, cols, ctx, dtype, name=None, slices=True):
        self.shape = tuple(shape)
        contiguous = _contiguous if slices else (lambda ids: False)
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
        # What the step strategies keep per plan (see buffer() and remember()): written only
        # by those two methods.
        self._cache = {}
        # Contiguous rows and columns: slice / _slice_assign, no index arrays (see module doc).
        self._slice = None
        if contiguous(row_ids) and (col_ids is None or contiguous(col_ids)):
            begin, end = (int(row_ids[0]),), (int(row_ids[-1]) + 1,)
            # Rows only: slice axis 0 alone, so that a state with one entry per row (shape
            # (V, 1), GroupAdaGrad) is cut like the weight.
            if not self.all_cols:
                begin, end = begin + (int(col_ids[0]),), end + (int(col_ids[-1]) + 1,)
            self._slice = (begin, end)
        # One aligned group of k columns of a 2-D weight: (c0 / k, D / k, k), see group_view().
        self.group = None
        if (len(self.shape) == 2 and not self.all_cols and contiguous(col_ids)
                and int(col_ids[0]) % col_ids.size == 0 and self.shape[1] % col_ids.size == 0):
            k = col_ids.size
            self.group = (int(col_ids[0]) // k, self.shape[1] // k, k)
        self.index_dtype = (np.int32 if self.group is None
                            else _index_dtype(n_rows * self.group[1]))
        self._take_cols = None if self.all_cols else upload(col_ids)  # also for sparse steps
        # A contiguous column range is cut from whole rows with slice_axis (take_cols).
        self._col_range = (None if self.all_cols or not contiguous(col_ids)
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
        #: ``{dtype: 1 - s}`` per block entry (in the weight's dtype, and in float32 for the
        #: master copy of multi_precision), or None when every scale is 1: the part of the
        #: wrapped optimizer's step an entry does not take (see blend()).
        self.complement = None
        if not np.all(scale == 1.0):
            rest = (1.0 - scale).reshape(scale.shape + (1,) * (len(self.block_shape) - scale.ndim))
            self.complement = {np.dtype(t): nd.array(rest, ctx=ctx, dtype=t)
                               for t in {np.dtype(dtype), np.dtype(np.float32)}}
        self.fractional = self.complement is not None

    # ---- what step strategies keep with the plan, between steps ----
    def buffer(self, name, dtype):
        """A block-shaped array of ``dtype`` kept under ``name`` and reused every step.

        Reusing it is safe where the block is written back (scatter) before the next step
        writes the buffer again: MXNet's engine orders the two on the buffer.
        """
        buf = self._cache.get(name)
        if buf is None or buf.dtype != dtype:
            buf = self._cache[name] = nd.empty(self.block_shape, ctx=self.ctx, dtype=dtype)
        return buf

    def remember(self, name, key, make):
        """``make()``, kept under ``name`` for as long as it is asked for with the same ``key``
        (compared by identity: an object the caller holds, e.g. the state it was made for;
        None for a value made once per plan)."""
        seen = self._cache.get(name)
        if seen is not None and seen[0] is key:
            return seen[1]
        value = make()
        self._cache[name] = (key, value)
        return value

    def buffers(self):
        """The block-shaped arrays kept with the plan by :meth:`buffer` (device memory the plan
        holds besides its index arrays)."""
        return [v for v in self._cache.values() if isinstance(v, nd.NDArray)]

    def index_arrays(self):
        """The device index arrays the plan keeps for gathers and scatters (none for a block of
        contiguous rows and columns: slices)."""
        return [a for a in (self._take_rows, self._scatter_index, self._group_ids,
                            self._take_cols) if a is not None]

    # ---- layout ----
    def positions(self, ids):
        """Which of the sorted unique row ids ``ids`` train, and their block positions.

        Returns ``(hit, pos)``: ``ids[hit]`` are the trainable ones, at rows ``pos`` of the
        block. A binary search in the sorted trainable ids: host memory O(trainable rows).
        """
        if self.all_rows:
            return np.arange(ids.size), ids
        if self.row_ids.size == 0:
            return np.arange(0), np.arange(0)
        pos = np.searchsorted(self.row_ids, ids)
        found = np.minimum(pos, self.row_ids.size - 1)
        hit = np.flatnonzero(self.row_ids[found] == ids)
        return hit, pos[hit]

    def retained_rows(self, full):
        """The trainable rows of a row_sparse array, all columns, as a dense array (the rows
        the array does not hold are zeros)."""
        return nd.sparse.retain(full, self._rows64).data

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
            return self.take_cols(self.retained_rows(full))
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

    def take_cols(self, rows):
        """Keep the trainable columns of an array of whole rows."""
        if self._take_cols is None:
            return rows
        if self._col_range is not None:
            return nd.slice_axis(rows, axis=1, begin=self._col_range[0],
                                 end=self._col_range[1])
        return nd.take(rows, self._take_cols, axis=1, mode='clip')

    def scatter(self, block, full):
        """Write ``block`` back into its entries of ``full``, in place; other entries untouched."""
        if full.stype == 'row_sparse':
            view = storage_view(full)
            self._scatter_dense(block, view)
            view.wait_to_read()   # see storage_view
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
        return blend(new, old, self.complement)


def storage_view(weight):
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


def blend(new, old, complement):
    """``new -= (1 - s) * (new - old)`` in place; ``complement`` maps a dtype to ``1 - s``
    (None: every scale is 1, nothing to do)."""
    if complement is None:
        return new
    new -= nd.broadcast_mul(new - old, complement[np.dtype(new.dtype)])
    return new
