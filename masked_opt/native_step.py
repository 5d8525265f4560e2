"""The native row_sparse strategy: a contiguous trainable block updated by MXNet's lazy kernel.

With a row_sparse gradient (``Embedding(sparse_grad=True)``) the pure path
(:class:`~masked_opt.update.SparseStep`) must read the gradient's row ids on the host every
step, because MXNet 1.9.1 has no operator that re-keys the rows of a row_sparse array or cuts
columns out of it; that read drains MXNet's engine and costs more than the update itself. When
the trainable block is one contiguous range of rows ``[lo, hi)`` and of columns ``[c0, c1)``,
masked_opt's own operators (``masked_opt/_native/ops.cc``, loaded with ``mx.library.load``)
do that on the engine instead, and the wrapped optimizer's **own** lazy kernel updates the
block -- no host read, no wait:

rows only (``train_rows_from``, ``train_rows(range(a, b))``)
    ``masked_opt_rsp_block`` keeps the gradient rows in ``[lo, hi)`` and subtracts ``lo``;
    the optimizer updates ``weight[lo:hi]``, an axis-0 slice that MXNet makes a view of the
    weight, so the lazy kernel writes the weight in place. Two engine operations.
columns (``train_cols(range(c0, c1))``), alone or with a row range
    ``masked_opt_rsp_block_gather`` re-keys the gradient keeping columns ``[c0, c1)`` only
    and copies the batch rows' column block of the weight into a block-sized scratch; the lazy
    kernel updates scratch and state, and ``masked_opt_scatter_rows`` writes those rows back.
    Three engine operations.

Either way the state is the block-sized state the pure path uses, so the two paths can take
turns on one state (a checkpoint written on one loads on the other). Frozen entries are never
read by the kernel: rows outside ``[lo, hi)`` and columns outside ``[c0, c1)`` are dropped
from the gradient before it runs.

Where it applies is decided in one place, :func:`choose_sparse_step`: the MXNet optimizers
whose row_sparse update is a lazy kernel that gives the pure path's bits (SGD with and without
momentum: ``sgd_update`` / ``sgd_mom_update``; Adam: ``adam_update``; with
``lazy_update=True``), CPU contexts, 0/1 masks, a block-sized state, no float32 master copy.
Everything else takes the pure path. Both call the wrapped optimizer every step, also when no
trainable row is in the batch: the native path with its re-keyed gradient (the kernel then
changes nothing), the pure path with a one-row stand-in (``masked_opt/frozen.py``), as for a
fully frozen parameter; so update counts, lr schedules and Adam's bias correction agree
(``tests/test_native_paths.py`` checks the counts on the bits of the results).
"""
import numpy as np
from mxnet import ndarray as nd
from mxnet import optimizer as mx_opt

from . import native
from .update import SparseStep

__all__ = ['block_ranges', 'choose_sparse_step', 'NativeBlockStep']

# Exact types: a subclass may override update() with arithmetic of its own.
_LAZY_KERNEL_OPTIMIZERS = (mx_opt.SGD, mx_opt.Adam)
_NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def block_ranges(plan, dtype):
    """``((lo, hi), (c0, c1))`` when the plan's block is one contiguous range of rows and of
    columns of a 2-D CPU weight of ``dtype`` with 0/1 scales, else None.

    Computed once, when the plan is built (``plan.native_ranges``).

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> plan = BlockPlan((6, 4), np.array([0., 0., 1., 1., 1., 0.]), None, mx.cpu(), 'float32')
    >>> block_ranges(plan, np.float32)
    ((2, 5), (0, 4))
    """
    if (len(plan.shape) != 2 or plan.empty or plan.fractional or plan.ctx.device_type != 'cpu'
            or np.dtype(dtype) not in _NATIVE_DTYPES):
        return None
    rows, cols = plan.row_ids, plan.col_ids
    if int(rows[-1]) - int(rows[0]) + 1 != rows.size:
        return None
    if int(cols[-1]) - int(cols[0]) + 1 != cols.size:
        return None
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def _lazy_kernel_matches_pure_path(base, index):
    """True when the wrapped optimizer's row_sparse update is a lazy kernel that gives the
    bits the pure path gets from the dense kernel on the gathered rows.

    Measured in MXNet 1.9.1 (20k x 4 random rows, float16/32/64, wd, rescale_grad, clipping):
    ``sgd_mom_update`` (lazy) equals ``multi_sgd_mom_update`` always; ``adam_update`` lazy
    equals dense except with ``clip_gradient``, where the variance of ~0.5% of the entries is
    one ulp off; ``sgd_update`` (lazy or not) differs from the ``multi_sgd_update`` that the
    pure path's dense block goes through (``aggregate_num > 0``) as soon as ``wd != 0``.
    Those cases stay on the pure path, so there is one set of bits.
    """
    if type(base) not in _LAZY_KERNEL_OPTIMIZERS or not getattr(base, 'lazy_update', False):
        return False
    if type(base) is mx_opt.Adam:
        return base.clip_gradient is None or base.clip_gradient < 0
    return base.momentum > 0 or base.aggregate_num == 0 or base._get_wd(index) == 0


def choose_sparse_step(plan, index, weight, grad, base, *, full_state, multi_precision):
    """The strategy for one masked parameter's row_sparse update this step.

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan on the weight's context.
    index : int or str
        The parameter's index (its wd depends on it).
    weight : NDArray
        The full weight (dense).
    grad : RowSparseNDArray
        Its gradient.
    base : mxnet.optimizer.Optimizer
        The wrapped optimizer.
    full_state : bool
        True when the state was made for the whole weight (warm-started without the mask): it
        is gathered and scattered by the pure path.
    multi_precision : bool
        Whether the update goes through ``update_multi_precision``.

    Returns
    -------
    NativeBlockStep or SparseStep
        The native strategy where it applies and the library is loaded, else the pure one.
    """
    lazy = getattr(base, 'lazy_update', True)
    ranges = getattr(plan, 'native_ranges', None)   # set by Masked._build_plan
    if (ranges is None or full_state or weight.stype != 'default'
            or not _lazy_kernel_matches_pure_path(base, index)
            or (multi_precision and base.multi_precision and weight.dtype == np.float16)):
        return SparseStep(plan, grad, lazy=lazy)
    if not native.available():
        if native.status().enabled:   # not switched off on purpose: say how to get it
            native.notify_fallback()
        return SparseStep(plan, grad, lazy=lazy)
    return NativeBlockStep(plan, weight, grad)


class NativeBlockStep:
    """One row_sparse update of a contiguous block through the wrapped optimizer's lazy kernel.

    Has the interface of :class:`~masked_opt.update.SparseStep` that ``Masked._prepare``
    uses; the arrays it hands out are views of, or scratch for, the weight.

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan; ``plan.native_ranges`` is ``((lo, hi), (c0, c1))`` from
        :func:`block_ranges`, and the plan keeps the column path's scratch buffer.
    weight : NDArray
        The full dense weight of shape ``(V, D)``.
    grad : RowSparseNDArray
        Its gradient of shape ``(V, D)``.
    """

    # Never empty: no host read tells whether a trainable row is in the batch. The wrapped
    # optimizer is called anyway and its lazy kernel touches no row (see the module doc).
    empty = False
    fractional = False

    def __init__(self, plan, weight, grad):
        self._plan = plan
        (self._lo, self._hi), (self._c0, self._c1) = plan.native_ranges
        self._all_cols = self._c0 == 0 and self._c1 == weight.shape[1]
        ranges = (self._lo, self._hi, self._c0, self._c1)
        # The ops check the gradient's row ids on the engine and refuse, naming the parameter,
        # ids that are not sorted, unique and in range (masked_opt/row_ids.py).
        self._param = plan.name
        if self._all_cols:
            self._grad, self._scratch = native.rsp_block(grad, *ranges, param=plan.name), None
            return
        # A block-sized scratch kept by the plan (like the state, C6): a fresh (R, k) output
        # every step costs an allocation of the whole block (measured 0.3-1.7 ms at 100k x 64).
        # Only the batch rows of it are written, updated and read back; reusing it is safe
        # because MXNet's engine orders this step's scatter before the next step's gather.
        scratch = plan._buffers.get('native_scratch')
        if scratch is None or scratch.dtype != weight.dtype:
            scratch = plan._buffers['native_scratch'] = nd.empty(
                plan.block_shape, ctx=weight.context, dtype=weight.dtype)
        self._scratch = scratch
        # The gradient's block and the weight's block at the same rows, in one operation.
        self._grad = native.rsp_block_gather(grad, weight, scratch, *ranges, param=plan.name)

    def _rows(self, weight):
        # An axis-0 slice of an NDArray is a view: writes through it land in the weight. The
        # view is kept with the plan for the weight object it was cut from (the same weight
        # every step: one C call less per step; a new weight object gets a new view).
        seen = self._plan.__dict__.get('_native_view')
        if seen is not None and seen[0] is weight:
            return seen[1]
        view = weight[self._lo:self._hi] if (self._lo, self._hi) != (0, weight.shape[0]) \
            else weight
        self._plan._native_view = (weight, view)
        return view

    def gather_weight(self, weight):
        """What the lazy kernel updates: the rows view, or the scratch with the column block."""
        return self._rows(weight) if self._all_cols else self._scratch

    def gather_grad(self, grad):
        """The re-keyed (and column-cut) row_sparse gradient of the block."""
        return self._grad

    def scatter(self, block, weight):
        """Write the batch rows' column block back (nothing to do for a rows view)."""
        if not self._all_cols:
            native.scatter_rows(self._rows(weight), block, self._grad, self._c0,
                                param=self._param)

    def state_view(self, block_state):
        """The block-sized state, updated in place by the lazy kernel."""
        return block_state

    def state_store(self, view, block_state):
        """Nothing to write back: the kernel updated the state in place."""
