"""The in-place strategy for a dense gradient: the block updated where it is, by masked_opt's
operator with the arithmetic of the wrapped optimizer's own kernel.

The reference for a dense gradient (:class:`~masked_opt.steps.dense.DenseBlock`) copies the
trainable block out of the weight and the gradient, lets the wrapped optimizer update the
copy and writes it back. For a latent split (``train_cols(range(c0, c1))``) the block is a
strided set of columns, and the copies cost more than the update (``python -m benchmarks.pair
adam 100000 64 cols --profile 20``). When the block is one range of rows ``[lo, hi)`` and of
columns ``[c0, c1)`` and the wrapped optimizer is MXNet's ``SGD`` or ``Adam``, this strategy
instead:

1. hands the wrapped optimizer a one-row stand-in (:mod:`masked_opt.steps.stand_in`) in the
   parameter's place, in the same call and multi-tensor group, so that it counts the update,
   moves its schedule and decides its kernels exactly as with the block;
2. after the call, asks :func:`masked_opt.kernel_calls.dense_kernel_call` which kernel the
   optimizer ran for the parameter and with which attribute strings (learning rate at this
   ``num_update``, weight decay, Adam's bias correction, ``multi_*``/``mp_*`` forms), and
3. runs ``masked_opt_dense_cols`` (``masked_opt/_native/dense_cols.cc``) on the block of the
   weight, the gradient and the state in place, one engine operation, no copy.

The bits are the reference's: the operator reproduces MXNet 1.9.1's kernels bit for bit, which
:mod:`masked_opt.inplace_check` verifies in every process before this strategy is chosen (and
``tests/test_dense_cols_paths.py`` checks against the reference through whole optimizers). A
hyper-parameter that is not finite (a schedule that returns NaN) makes the step run MXNet's
own kernel on a gathered copy of the block instead, since the check draws finite ones only.

Where it applies is decided in :func:`masked_opt.steps.choose` (:func:`inplace_reason` says
why not): ``SGD`` (with or without momentum) and ``Adam``, exact types, with no learning-rate
schedule or one of MXNet's own (whose value depends on ``num_update`` only: the strategy asks
for the rate a second time at the same ``num_update``); their ``multi_precision`` forms; 2-D
CPU weights of float16/32/64 with 0/1 masks whose block is one range of rows and of columns;
a block-sized state or one made for the whole weight.
"""
import math

from .. import native
from ..kernel_calls import dense_kernel_call, run_mxnet_kernel, served, state_arrays
from .base import Prepared, Step

__all__ = ['InPlaceCols', 'inplace_reason']


def inplace_reason(ranges, weight, grad, base, state, *, multi_precision):
    """Why the in-place strategy does not serve this case, or None when it does.

    ``ranges`` is the plan's :func:`~masked_opt.steps.native_ranges` (None when the block is
    not one range of rows and columns of a 2-D CPU weight with 0/1 scales). Whether the
    library is loaded and passed its self-check is asked by the chooser, after this.

    Examples
    --------
    >>> import mxnet as mx
    >>> w = mx.nd.zeros((6, 4))
    >>> inplace_reason(((0, 6), (1, 3)), w, w, mx.optimizer.RMSProp(), None,
    ...                multi_precision=False)
    'RMSProp is not SGD or Adam (exact types)'
    """
    if ranges is None:
        return 'the block is not one range of rows and of columns of a 2-D CPU weight, 0/1 scales'
    if weight.stype != 'default' or grad.stype != 'default':
        return 'the weight or the gradient is not dense'
    return served(base, state, weight.dtype, multi_precision)


class InPlaceCols(Step):
    """A dense gradient's block updated in place (see the module doc).

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan (for the rare step that runs MXNet's kernel on a copy).
    ranges : tuple
        ``((lo, hi), (c0, c1))``, the block's rows and columns.
    stand_ins : StandIns
        The masked optimizer's stand-in arrays.
    """

    name = 'dense_inplace'

    def __init__(self, plan, ranges, stand_ins):
        self.plan = plan
        (self.lo, self.hi), (self.c0, self.c1) = ranges
        self.stand_ins = stand_ins

    def prepare(self, index, weight, grad, state, *, base, full_state, multi_precision):
        """The stand-in for the wrapped optimizer's call; ``finish`` updates the block."""
        w, g, s = self.stand_ins.arrays(base, index, weight, multi_precision)

        def finish(call):
            # SGD runs its multi-tensor kernels when every array of the call is dense.
            aggregate = all(p.weight.stype == 'default' and p.grad.stype == 'default'
                            for p in call)
            kc = dense_kernel_call(base, index, weight.dtype, multi_precision=multi_precision,
                                   aggregate=aggregate)
            states = state_arrays(kc.kernel, state)
            if all(math.isfinite(float(v)) for v in kc.attrs.values()):
                native.dense_cols(weight, grad, states, kc.kernel, kc.attrs, self.lo, self.hi,
                                  self.c0, self.c1)
            else:
                self._on_a_copy(kc, weight, grad, states)
        return _AfterCall(index, w, g, s, finish, stand_in=True)

    def _on_a_copy(self, kc, weight, grad, states):
        """MXNet's own kernel on a gathered copy of the block, written back."""
        plan = self.plan
        block = plan.block_shape
        copies = [plan.gather(a) if tuple(a.shape) != block else a for a in states]
        w_block = plan.gather(weight)
        run_mxnet_kernel(kc.kernel, kc.attrs, w_block, plan.gather(grad), copies)
        plan.scatter(w_block, weight)
        for a, c in zip(states, copies, strict=True):
            if c is not a:
                plan.scatter(c, a)


class _AfterCall(Prepared):
    """A :class:`Prepared` whose ``finish`` needs the call it was part of: ``finish(call)``
    gets every :class:`Prepared` of that call of the wrapped optimizer."""

    def finish(self, call=None):
        self._finish(call if call is not None else [self])

