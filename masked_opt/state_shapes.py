"""What a wrapped optimizer's state looks like, as the masked optimizer has to know it.

An MXNet optimizer's state is an NDArray, None, or a (nested) tuple of them; under
``multi_precision`` one entry is the float32 master copy of a float16 weight, first or last
depending on the optimizer. A state made by the masked optimizer is block-sized; one made for
the whole weight (a warm start from an unmasked run) is cut through the block like the weight,
which a column mask can do only for weight-shaped arrays. For example:

>>> import mxnet as mx
>>> from masked_opt.state_shapes import is_full_size, map_state
>>> state = (mx.nd.zeros((10, 4)), mx.nd.zeros((10, 4)))    # Adam's mean and variance
>>> map_state(lambda a: a.shape, state)
((10, 4), (10, 4))
>>> is_full_size(state, (10, 4), (2, 4)), is_full_size(state[:1], (40, 4), (10, 4))
(True, False)
"""
import numpy as np
from mxnet import optimizer as mx_opt
from mxnet.ndarray import NDArray

__all__ = ['master_position', 'master_copy', 'check_master_copy_scalable', 'is_full_size',
           'check_weight_shaped', 'map_state', 'zip_state']

# Optimizers whose multi_precision state is ``(inner_state, master_copy)``; MXNet's default
# (Optimizer.create_state_multi_precision) is ``(master_copy, inner_state)``.
_MASTER_LAST = (mx_opt.SGD, mx_opt.LARS, mx_opt.NAG)


def master_position(base):
    """Where the float32 master copy sits in ``base``'s multi_precision state: 0 or 1, or None
    for an optimizer with a layout of its own (an override of create_state_multi_precision)."""
    if isinstance(base, _MASTER_LAST):
        return 1
    if type(base).create_state_multi_precision is mx_opt.Optimizer.create_state_multi_precision:
        return 0
    return None


def master_copy(base, state, weight, multi_precision):
    """The float32 master copy inside a multi_precision state, or None when not in use."""
    if not (multi_precision and base.multi_precision and weight.dtype == np.float16):
        return None
    return state[master_position(base)]


def check_master_copy_scalable(base, masks):
    """Raise ``TypeError`` when a mask of ``masks`` has fractional scales and ``base`` keeps a
    float32 master copy (``multi_precision``) where masked_opt does not know to find it."""
    if not base.multi_precision or master_position(base) is not None:
        return
    for key, mask in masks.items():
        if mask.fractional:
            raise TypeError('mask %r has fractional scales and %s uses multi_precision '
                            'with a state layout masked_opt does not know, so the float32 '
                            'master copy cannot be scaled. Use 0/1 masks or '
                            'multi_precision=False.' % (key, type(base).__name__))


def is_full_size(state, full_shape, block_shape):
    """True when ``state`` was made for the whole weight (e.g. warmed up without a mask).

    Such a state is updated through its block: gathered, updated, scattered back, so that
    its frozen entries stay as they were.
    """
    if tuple(full_shape) == tuple(block_shape):
        return False
    arrays = []
    map_state(arrays.append, state)
    # Weight-shaped arrays, or per-row ones (GroupAdaGrad's (V, 1) accumulator) when the
    # block has fewer rows than the weight.
    per_row = block_shape[0] != full_shape[0]
    return any(a.shape == tuple(full_shape) or (per_row and a.shape[0] == full_shape[0])
               for a in arrays)


def check_weight_shaped(state, shape, plan, name):
    """A full-size state is gathered and scattered like the weight. An array of another shape
    (GroupAdaGrad's per-row accumulator, shape (V, 1)) would be cut along the wrong axis under
    a column mask and written back out of bounds: refuse it before anything is written."""
    if plan.all_cols:
        return   # rows only: a (V, ...) array is cut along its rows like the weight
    arrays = []
    map_state(arrays.append, state)
    odd = sorted({a.shape for a in arrays if a.shape != tuple(shape)})
    if odd:
        raise TypeError('parameter %r: its optimizer state was made for the whole weight %s '
                        'but holds arrays of shape %s, which a column mask cannot split. Let '
                        'the masked optimizer create the state (do not hand over a state '
                        'warmed up without the mask), or mask rows only.'
                        % (name, tuple(shape), odd))


def map_state(fn, state):
    """Apply ``fn`` to every NDArray in a (possibly nested) optimizer state."""
    if isinstance(state, NDArray):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, s) for s in state)
    return state


def zip_state(fn, blocks, fulls):
    """Call ``fn(block, full)`` for matching NDArrays of two states of the same structure."""
    if isinstance(fulls, NDArray):
        fn(blocks, fulls)
    elif isinstance(fulls, (list, tuple)):
        for b, f in zip(blocks, fulls, strict=True):
            zip_state(fn, b, f)
