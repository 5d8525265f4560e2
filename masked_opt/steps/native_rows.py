"""The native row_sparse strategy: a contiguous trainable block updated by MXNet's lazy kernel.

With a row_sparse gradient (``Embedding(sparse_grad=True)``) the pure path
(:class:`~masked_opt.steps.sparse.SparseRows`) must read the gradient's row ids on the host every
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

Where it applies is decided in one place, :func:`masked_opt.steps.choose`: the MXNet optimizers
whose row_sparse update is a lazy kernel that gives the pure path's bits (SGD with and without
momentum: ``sgd_update`` / ``sgd_mom_update``; Adam: ``adam_update``; with
``lazy_update=True``), CPU contexts, 0/1 masks, a block-sized state, no float32 master copy.
Everything else takes the pure path. Both call the wrapped optimizer every step, also when no
trainable row is in the batch: the native path with its re-keyed gradient (the kernel then
changes nothing), the pure path with a one-row stand-in (:mod:`masked_opt.steps.stand_in`),
as for a fully frozen parameter; so update counts, lr schedules and Adam's bias correction agree
(``tests/test_native_paths.py`` checks the counts on the bits of the results).
"""
from .. import native
from .base import BlockStep

__all__ = ['NativeRows']


class NativeRows(BlockStep):
    """One row_sparse update of a contiguous block through the wrapped optimizer's lazy kernel.

    The arrays it hands out are views of, or scratch for, the weight. It serves neither a state
    made for the whole weight nor fractional scales (the chooser does not pick it for those).

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan; it keeps the column path's scratch buffer.
    ranges : tuple
        ``((lo, hi), (c0, c1))``: the block's rows and columns (see
        :func:`masked_opt.steps.native_ranges`).
    weight : NDArray
        The full dense weight of shape ``(V, D)``.
    grad : RowSparseNDArray
        Its gradient of shape ``(V, D)``.
    """

    # Never empty: no host read tells whether a trainable row is in the batch. The wrapped
    # optimizer is called anyway and its lazy kernel touches no row (see the module doc).
    empty = False
    name = 'native'
    serves_full_state = False
    serves_fractions = False

    def __init__(self, plan, ranges, weight, grad):
        self.plan = plan
        (self._lo, self._hi), (self._c0, self._c1) = ranges
        self._all_cols = self._c0 == 0 and self._c1 == weight.shape[1]
        ranges = (self._lo, self._hi, self._c0, self._c1)
        # The ops check the gradient's row ids on the engine and refuse, naming the parameter,
        # ids that are not sorted, unique and in range (masked_opt/row_ids.py). The scatter
        # needs no name: its row ids come from the gather, which refused bad ones already.
        if self._all_cols:
            self._grad, self._scratch = native.rsp_block(grad, *ranges, param=plan.name), None
            return
        # A block-sized scratch kept by the plan (like the state, C6): a fresh (R, k) output
        # every step costs an allocation of the whole block (measured 0.3-1.7 ms at 100k x 64).
        # Only the batch rows of it are written, updated and read back; reusing it is safe
        # because MXNet's engine orders this step's scatter before the next step's gather.
        self._scratch = scratch = plan.buffer('native_scratch', weight.dtype)
        # The gradient's block and the weight's block at the same rows, in one operation.
        self._grad = native.rsp_block_gather(grad, weight, scratch, *ranges, param=plan.name)

    def _rows(self, weight):
        # An axis-0 slice of an NDArray is a view: writes through it land in the weight. The
        # view is kept with the plan for the weight object it was cut from (the same weight
        # every step: one C call less per step; a new weight object gets a new view).
        if (self._lo, self._hi) == (0, weight.shape[0]):
            return weight
        return self.plan.remember('native_view', weight, lambda: weight[self._lo:self._hi])

    def gather_weight(self, weight):
        """What the lazy kernel updates: the rows view, or the scratch with the column block."""
        return self._rows(weight) if self._all_cols else self._scratch

    def gather_grad(self, grad):
        """The re-keyed (and column-cut) row_sparse gradient of the block."""
        return self._grad

    def gather(self, full):
        """Not served: a state made for the whole weight takes the pure path."""
        raise TypeError('the native step does not cut weight-shaped arrays')

    def scatter(self, block, weight):
        """Write the batch rows' column block back (nothing to do for a rows view)."""
        if not self._all_cols:
            native.scatter_rows(self._rows(weight), block, self._grad, self._c0)
