"""The interface every step strategy has: what the wrapped optimizer updates, and the way back.

A strategy is made for one masked parameter and one update call (by
:func:`masked_opt.steps.choose`). :meth:`Step.prepare` returns a :class:`Prepared`: the arrays
the wrapped optimizer gets in place of the parameter's, and ``finish()`` to run after it.

:class:`BlockStep` is the base of the strategies that update a block of the parameter (dense
block, pure row_sparse, native row_sparse). It owns what they share: the choice between a
block-sized state and one made for the whole weight (a warm start), and the blend of
fractional scales, on the weight or on the float32 master copy of ``multi_precision``. A
strategy supplies only how its block is gathered and written back.

>>> import mxnet as mx, numpy as np
>>> from masked_opt.steps.base import Prepared
>>> p = Prepared(0, mx.nd.ones(2), mx.nd.ones(2), None, finish=None)
>>> p.finish()   # nothing to write back: the arrays were the parameter's own
"""
import abc

from ..state_shapes import map_state, master_copy, zip_state
from ..update import blend

__all__ = ['Step', 'BlockStep', 'Unmasked', 'Prepared']


class Prepared:
    """One parameter's part of an update call: the arrays the wrapped optimizer updates, and
    :meth:`finish` to write a block back afterwards (``finish=None``: nothing to write).
    ``stand_in``: the arrays are a one-row stand-in's, not the parameter's (see
    :mod:`masked_opt.steps.stand_in`)."""

    def __init__(self, index, weight, grad, state, finish, stand_in=False):
        self.index, self.weight, self.grad, self.state = index, weight, grad, state
        self._finish = finish
        self.stand_in = stand_in

    def finish(self, call=None):
        """Write the updated block back (after the wrapped optimizer ran).

        ``call``: every :class:`Prepared` of the wrapped optimizer's call this one was part
        of (a strategy that updates after the call may need to know how the call ran).
        """
        if self._finish is not None:
            self._finish()


class Step(abc.ABC):
    """A strategy for one masked parameter's update this step."""

    #: The strategy's name, as tests and messages name it.
    name = None

    @abc.abstractmethod
    def prepare(self, index, weight, grad, state, *, base, full_state, multi_precision):
        """The :class:`Prepared` arrays for the wrapped optimizer ``base``."""


class Unmasked(Step):
    """A parameter without a mask: its own arrays go to the wrapped optimizer, untouched."""

    name = 'unmasked'

    def prepare(self, index, weight, grad, state, *, base, full_state, multi_precision):
        """The parameter's own arrays."""
        return Prepared(index, weight, grad, state, finish=None)


class BlockStep(Step):
    """A strategy that hands the wrapped optimizer a block of the parameter.

    Subclasses say how the block is read (:meth:`gather_weight`, :meth:`gather_grad`,
    :meth:`gather`) and written back (:meth:`scatter`), and what of a block-sized state the
    step updates (:meth:`state_view`, :meth:`state_store`). ``complement`` is ``{dtype: 1 - s}``
    for the entries the step updates, or None when every scale is 1.
    """

    complement = None
    #: Whether the strategy serves a state made for the whole weight, and fractional scales
    #: (:func:`masked_opt.steps.choose` does not pick it for those otherwise).
    serves_full_state = True
    serves_fractions = True

    @property
    def fractional(self):
        """True when some entry moves by a fraction of the step (a blend is needed)."""
        return self.complement is not None

    @abc.abstractmethod
    def gather_weight(self, weight):
        """The array the wrapped optimizer updates in place of the weight."""

    @abc.abstractmethod
    def gather_grad(self, grad):
        """The gradient the wrapped optimizer gets."""

    @abc.abstractmethod
    def gather(self, full):
        """The block of a weight-shaped array (a state made for the whole weight)."""

    @abc.abstractmethod
    def scatter(self, block, full):
        """Write ``block`` back into its entries of the weight-shaped ``full``, in place."""

    def state_view(self, block_state):
        """The part of a block-sized state this step updates: all of it, in place."""
        return block_state

    def state_store(self, view, block_state):
        """Write ``view`` back into the block-sized state (nothing: it was updated in place)."""

    def blend(self, new, old):
        """Move ``new`` back towards ``old`` so that each entry moves by ``s`` x its step."""
        return blend(new, old, self.complement)

    def prepare(self, index, weight, grad, state, *, base, full_state, multi_precision):
        """Gather the block of weight, gradient and state; ``finish`` blends and writes back.

        ``full_state``: the state was made for the whole weight (warm-started without the
        mask), so it is cut and written back like the weight.
        """
        w_block = self.gather_weight(weight)
        g_block = self.gather_grad(grad)
        if full_state:
            if not self.serves_full_state:
                raise TypeError('the %s step cannot cut a state made for the whole weight'
                                % self.name)
            view, store = self.gather, self.scatter
        else:
            view, store = self.state_view, self.state_store
        s_block = map_state(view, state)
        fractional = self.fractional
        master = m_old = w_old = None
        if fractional:
            w_old = w_block.copy()
            master = master_copy(base, s_block, w_block, multi_precision)
            m_old = master.copy() if master is not None else None

        def finish():
            if fractional:
                if master is None:
                    self.blend(w_block, w_old)
                else:
                    # multi_precision: blend the float32 master copy and round it into the
                    # weight, as every multi_precision step does. Blending the float16 weight
                    # on its own rounds twice and can leave it a float16 step off its master.
                    self.blend(master, m_old)
                    master.astype(w_block.dtype).copyto(w_block)
            self.scatter(w_block, weight)
            zip_state(store, s_block, state)
        return Prepared(index, w_block, g_block, s_block, finish)
