"""The stand-in strategy: nothing of a parameter trains this step, and its neighbours stay exact.

MXNet alone calls the optimizer for every parameter with a gradient, and some optimizers keep
state *across* parameters that moves on every call, whatever the arrays hold:

- Nadam multiplies its momentum schedule ``m_schedule`` on every ``update`` call;
- LARS sets ``last_lr``/``cur_lr`` on every call (one call per multi-tensor group), and the
  momentum correction of the next call reads them;
- every optimizer counts the update of the index (``_update_count``), which moves
  ``num_update`` and so the learning-rate schedule, and which Adam-like optimizers use as the
  step ``t`` of that parameter when it trains again (staged unfreezing);
- LBSGD reads the learning rate before counting, so the order of the counts matters.

Two cases train nothing of a masked parameter in a step: a mask that freezes every entry, and
a row_sparse gradient that holds none of the trainable rows (lazy updates, pure path).
Skipping the call in either would give its unmasked neighbours other bits than the wrapped
optimizer alone (contract C4). So the wrapped optimizer is called for the parameter, in
the same place of the call sequence and of the multi-tensor group, with a tiny stand-in: one
row of zeros, a zero gradient and a state of its own made once. The result is discarded; the
real weight and its state are never handed over, so frozen entries keep their bits (C1), and
the cost is one row per step (C6). One exception to "the same group", for that cost:
:func:`calls_apart` gives SGD's stand-ins a call of their own where no bit can change (MXNet's
multi-tensor SGD kernels cost a one-row weight as much as the largest weight of its call).

Exact for every optimizer MXNet 1.9.1 registers but one: SGLD adds Gaussian noise drawn from one
shared stream, and how far the stream advances depends on the size of each draw. Matching it
would mean drawing noise for the whole frozen table every step; the stand-in draws one row
(as a partly masked parameter draws noise for its block only), so SGLD's later parameters get
other noise than with SGLD alone. Everything else in SGLD (counts, learning rates, the
gradient step) is as with SGLD alone.
"""
from mxnet import ndarray as nd
from mxnet import optimizer as mx_opt

from .base import Prepared, Step

__all__ = ['StandIn', 'StandIns', 'calls_apart']


class StandIn(Step):
    """The step of a parameter of which nothing trains: the wrapped optimizer updates the
    stand-in arrays in its place (see the module doc); the result is discarded.

    Parameters
    ----------
    stand_ins : StandIns
        Where the stand-in arrays are kept between steps (the masked optimizer's).

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.steps.stand_in import StandIn, StandIns
    >>> weight = mx.nd.ones((1000, 4))
    >>> p = StandIn(StandIns()).prepare(0, weight, None, None, base=mx.optimizer.SGD(),
    ...                                 full_state=False, multi_precision=False)
    >>> p.weight.shape
    (1, 4)
    """

    name = 'stand_in'

    def __init__(self, stand_ins):
        self.stand_ins = stand_ins

    def prepare(self, index, weight, grad, state, *, base, full_state, multi_precision):
        """The stand-in's weight, gradient and state; the real ones are not handed over."""
        w, g, s = self.stand_ins.arrays(base, index, weight, multi_precision)
        return Prepared(index, w, g, s, finish=None, stand_in=True)


class StandIns(dict):
    """``{(index, context, dtype, trailing shape, multi_precision): (weight, grad, state)}``.

    Pickles empty (a stand-in's values never matter, and device arrays belong to this process).
    Cleared when the wrapped optimizer is replaced (``Trainer.load_states`` adopts the file's):
    a state made by one optimizer does not fit another.
    """

    base = None

    def __reduce__(self):
        return (StandIns, ())

    def arrays(self, base, index, weight, multi_precision):
        """The stand-in weight, gradient and state for ``index`` (made on first use)."""
        if self.base is not base:
            self.clear()
            self.base = base
        tail = tuple(weight.shape[1:])
        key = (index, weight.context, str(weight.dtype), tail, bool(multi_precision))
        if key not in self:
            w = nd.zeros((1,) + tail, ctx=weight.context, dtype=weight.dtype)
            g = nd.zeros((1,) + tail, ctx=weight.context, dtype=weight.dtype)
            create = base.create_state_multi_precision if multi_precision else base.create_state
            self[key] = (w, g, create(index, w))
        return self[key]


def calls_apart(base, call):
    """The wrapped optimizer's calls for one multi-tensor group: ``[call]``, or the parameters
    and the stand-ins apart, ``[parameters, stand_ins]``, where that changes no bit.

    Why: MXNet 1.9.1's multi-tensor SGD kernels (``multi_sgd_update``, ``multi_sgd_mom_update``
    and their ``mp_`` forms, ``MultiSGDKernel`` in ``src/operator/optimizer_op-inl.h``) visit
    every element index up to the largest weight of the call and, at each, every weight of
    the call. A one-row stand-in beside a (100000, 8) table made that table's
    ``multi_sgd_mom_update`` take 3.3 ms instead of 2.4 ms: the stand-in cost 40% of its
    neighbour's update instead of one row (C6).

    Apart only where nothing else can differ (else one call, as MXNet's ``Updater`` makes it):

    - ``base`` is exactly SGD: others keep state per call (LARS), or have no multi-tensor
      kernel and are called one parameter at a time anyway;
    - every weight and gradient of the call is dense, so both calls take the multi-tensor
      kernels as the one call did (SGD's ``_update_impl`` decides that per call);
    - the learning rate cannot depend on the order of the counts: no schedule, or every index
      of the call at the same update count (SGD asks the schedule at ``num_update``, the
      largest count so far; the counts are MXNet's ``Optimizer._index_update_count``).

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.steps.base import Prepared
    >>> from masked_opt.steps.stand_in import calls_apart
    >>> big = Prepared(0, mx.nd.zeros((100, 4)), mx.nd.zeros((100, 4)), None, None)
    >>> small = Prepared(1, mx.nd.zeros((1, 4)), mx.nd.zeros((1, 4)), None, None, stand_in=True)
    >>> [[p.index for p in c] for c in calls_apart(mx.optimizer.SGD(), [big, small])]
    [[0], [1]]
    >>> [[p.index for p in c] for c in calls_apart(mx.optimizer.LARS(), [big, small])]
    [[0, 1]]
    """
    parameters = [p for p in call if not p.stand_in]
    stand_ins = [p for p in call if p.stand_in]
    if not parameters or not stand_ins or type(base) is not mx_opt.SGD:
        return [call]
    if any(p.weight.stype != 'default' or p.grad.stype != 'default' for p in call):
        return [call]
    if base.lr_scheduler is not None:
        counts = base._index_update_count
        if len({counts.get(p.index, base.begin_num_update) for p in call}) != 1:
            return [call]
    return [parameters, stand_ins]
