"""The dense block strategy: a dense gradient, the plan's block gathered and written back.

The reference path for a dense gradient: every step gathers the trainable block of the weight
and the gradient through the plan's index arrays or slices
(:class:`~masked_opt.update.BlockPlan`), the wrapped optimizer updates the block and its
block-sized state in place, and the block is written back.

>>> import mxnet as mx, numpy as np
>>> from masked_opt.update import BlockPlan
>>> from masked_opt.steps.dense import DenseBlock
>>> w = mx.nd.arange(8).reshape((4, 2))
>>> step = DenseBlock(BlockPlan(w.shape, np.array([0., 0., 1., 1.]), None, w.context, w.dtype))
>>> step.gather_weight(w).asnumpy().tolist()
[[4.0, 5.0], [6.0, 7.0]]
"""
from .base import BlockStep

__all__ = ['DenseBlock']


class DenseBlock(BlockStep):
    """The trainable block of a dense gradient, through the plan (see the module doc).

    Parameters
    ----------
    plan : BlockPlan
        The parameter's plan on the weight's context.
    """

    name = 'dense'

    def __init__(self, plan):
        self.plan = plan
        self.complement = plan.complement

    def gather_weight(self, weight):
        """The weight's block for this step's update, in a buffer the plan reuses.

        Safe to reuse: the block is written back (:meth:`scatter`) before the next step
        gathers into the buffer again, and MXNet's engine orders those two on the buffer.
        """
        if weight.stype != 'default':
            return self.plan.gather(weight)
        return self.plan.gather(weight, out=self.plan.buffer('weight', weight.dtype))

    def gather_grad(self, grad):
        """The gradient's block, as a new array.

        Not a reused buffer: a wrapped optimizer may keep the gradient it was given across
        steps (LBSGD accumulates ``cum_grad = grad`` over ``batch_scale`` steps).
        """
        return self.plan.gather(grad)

    def gather(self, full):
        """The block of a weight-shaped array, as a new array."""
        return self.plan.gather(full)

    def scatter(self, block, full):
        """Write ``block`` back into ``full`` in place; other entries untouched."""
        self.plan.scatter(block, full)

    def blend(self, new, old):
        """As :meth:`BlockPlan.blend <masked_opt.update.BlockPlan.blend>`."""
        return self.plan.blend(new, old)
