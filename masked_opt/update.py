"""The trainable block of a masked parameter, on one context: gather, scatter, blend.

The core idea of masked_opt: gather the trainable block (rows with a non-zero row scale x
columns with a non-zero column scale) out of the weight and the gradient, let the wrapped
optimizer update that small block as if it were a parameter of its own, and write the block
back. Frozen entries are never read into the update and never written, so they stay
bit-identical whatever the optimizer does (weight decay, momentum, NaN gradients, norms).

Operators used on the update path, each with a GPU kernel and no host sync in MXNet 1.9.1
(``../shared/gpu_ops.md``): ``take`` (mode ``clip``), ``_scatter_set_nd`` (in place),
``elemwise_sub``/``elemwise_mul`` on dense arrays and ``broadcast_mul``. Index arrays are int32
and unique (scatter has no bound check and duplicate indices race on GPU), and they are made
once per context by :class:`BlockPlan` and reused every step.
"""
import numpy as np
from mxnet import ndarray as nd

# nd.array(numpy) uploads synchronously; it is only called when a plan is built, once per
# parameter and context, never per step.


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
        if cols is None:
            col_ids = None if len(self.shape) < 2 else np.arange(self.shape[1])
            self.all_cols = True
        else:
            col_ids = np.flatnonzero(cols)
            self.all_cols = col_ids.size == self.shape[1]
        self.block_shape = (row_ids.size,) + (
            self.shape[1:] if col_ids is None else (col_ids.size,) + self.shape[2:])
        self.empty = 0 in self.block_shape
        self.whole = self.all_rows and self.all_cols

        def upload(a):
            return nd.array(a, ctx=ctx, dtype='int32')

        self._take_rows = None if self.all_rows else upload(row_ids)
        self._take_cols = None if self.all_cols else upload(col_ids)
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

    def gather(self, full):
        """Return the block of ``full`` (an array of the weight's shape), as a new array."""
        block = full
        if self._take_rows is not None:
            block = nd.take(block, self._take_rows, axis=0, mode='clip')
        if self._take_cols is not None:
            block = nd.take(block, self._take_cols, axis=1, mode='clip')
        if block is full:
            block = full.copy()
        return block

    def scatter(self, block, full):
        """Write ``block`` back into its entries of ``full``, in place; other entries untouched."""
        if self.whole:
            block.copyto(full)
            return
        rows = self._scatter_index.shape[1]
        nd._internal._scatter_set_nd(lhs=full, rhs=block.reshape((rows,) + self.shape[
            (1 if self.all_cols else 2):]), indices=self._scatter_index, shape=full.shape,
            out=full)

    def blend(self, new, old):
        """Move ``new`` back towards ``old`` so that each entry moves by ``s`` x its step.

        Computes ``new - (1 - s) * (new - old)`` in place in ``new``; entries with ``s == 1``
        keep the wrapped optimizer's result bit-for-bit.
        """
        if self._keep is None:
            return new
        new -= nd.broadcast_mul(new - old, self._keep[np.dtype(new.dtype)])
        return new
