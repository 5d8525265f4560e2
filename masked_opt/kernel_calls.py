"""Which MXNet kernel SGD or Adam runs on a dense parameter, and with which attributes.

MXNet 1.9.1's ``SGD`` and ``Adam`` (``mxnet/optimizer/optimizer.py``) compute their learning
rate, weight decay and bias correction in Python and hand them to one C++ kernel per parameter
(SGD: per multi-tensor group) as strings, ``str(value)``, which the operator parses. This
module says, for one parameter of a call that just ran, what that kernel was -- its name as
masked_opt's in-place operator knows it (``masked_opt/_native/dense_cols.cc``) -- and the
attribute strings it received, so that the same arithmetic can be applied to the parameter's
block in place (:mod:`masked_opt.inplace_step`). It reads the optimizer's state as the
optimizer itself read it; it never changes it.

SGD with dense arrays (``SGD._update_impl``): every weight and gradient of the call dense ->
``multi_sgd_update`` / ``multi_sgd_mom_update`` (``lrs``/``wds`` as list elements), else
``sgd_update`` / ``sgd_mom_update`` per weight; the ``mp_`` forms when the call goes through
``update_multi_precision``, ``multi_precision`` is set and the call's *first* weight is
float16 (MXNet's ``Updater`` groups a call's weights by dtype, so that is the weight's own
dtype). Momentum when ``momentum > 0``; ``clip_gradient`` only when it is truthy.

Adam (``Adam.update``): ``adam_update`` with ``lr * sqrt(1 - beta2**t) / (1 - beta1**t)``;
with ``multi_precision`` and a float16 weight, ``Optimizer.update_multi_precision`` runs it on
the float32 master copy with the gradient cast to float32 and casts the result into the weight
(``mp_adam`` here).

>>> import mxnet as mx, numpy as np
>>> sgd = mx.optimizer.SGD(learning_rate=0.1, momentum=0.9, wd=1e-4)
>>> sgd._update_count(0)
>>> call = dense_kernel_call(sgd, 0, np.float32, multi_precision=False, aggregate=True)
>>> call.kernel, call.attrs['lr'], call.attrs['momentum']
('multi_sgd_mom', '0.1', '0.9')
"""
import math
from collections import namedtuple

import numpy as np
from mxnet import lr_scheduler as mx_lrs
from mxnet import ndarray as nd
from mxnet import optimizer as mx_opt

__all__ = ['KernelCall', 'KERNELS', 'dense_kernel_call', 'run_mxnet_kernel', 'served',
           'state_arrays']

KernelCall = namedtuple('KernelCall', 'kernel attrs')
KernelCall.__doc__ = """One kernel call: ``kernel`` (a key of :data:`KERNELS`) and ``attrs``
(``{name: str}``, the attributes as the MXNet operator receives them; ``lr`` and ``wd`` of a
``multi_*`` kernel are this weight's elements of its ``lrs``/``wds``)."""

#: kernel -> (MXNet operator, names of its state arrays in order, multi-precision)
KERNELS = {
    'sgd': ('sgd_update', (), False),
    'sgd_mom': ('sgd_mom_update', ('mom',), False),
    'mp_sgd': ('mp_sgd_update', ('weight32',), True),
    'mp_sgd_mom': ('mp_sgd_mom_update', ('mom', 'weight32'), True),
    'multi_sgd': ('multi_sgd_update', (), False),
    'multi_sgd_mom': ('multi_sgd_mom_update', ('mom',), False),
    'multi_mp_sgd': ('multi_mp_sgd_update', ('weight32',), True),
    'multi_mp_sgd_mom': ('multi_mp_sgd_mom_update', ('mom', 'weight32'), True),
    'adam': ('adam_update', ('mean', 'var'), False),
    'mp_adam': ('adam_update', ('mean', 'var', 'weight32'), True),
}

# Learning-rate schedules whose value depends on num_update only, so that asking again at the
# same num_update returns what the optimizer got (they keep a little state, but only move it
# forward with num_update). Exact types: a subclass may count its calls.
_IDEMPOTENT_SCHEDULERS = (mx_lrs.FactorScheduler, mx_lrs.MultiFactorScheduler,
                          mx_lrs.PolyScheduler, mx_lrs.CosineScheduler)


def served(base, state, dtype, multi_precision):
    """None when :func:`dense_kernel_call` can tell the kernel ``base`` runs for a dense
    parameter of ``dtype`` with ``state``, else why not (a short phrase).

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> served(mx.optimizer.Adam(), None, np.float32, False) is None
    True
    >>> served(mx.optimizer.RMSProp(), None, np.float32, False)
    'RMSProp is not SGD or Adam (exact types)'
    """
    kind = type(base)
    if kind not in (mx_opt.SGD, mx_opt.Adam):
        return '%s is not SGD or Adam (exact types)' % kind.__name__
    if base.lr_scheduler is not None and type(base.lr_scheduler) not in _IDEMPOTENT_SCHEDULERS:
        return ("its lr_scheduler %s is not one of MXNet's own (Factor, MultiFactor, Poly, "
                'Cosine), whose value depends on num_update only'
                % type(base.lr_scheduler).__name__)
    mp = bool(multi_precision and base.multi_precision and np.dtype(dtype) == np.float16)
    if kind is mx_opt.Adam:
        if base.aggregate_num > 0:
            return 'Adam with aggregate_num > 0'
        return None
    if not base.momentum >= 0:
        return 'SGD with a negative (or NaN) momentum'
    mom = state[0] if mp else state   # SGD's state: mom, or (mom, weight32) with mp
    if (base.momentum > 0) != (mom is not None):
        return 'SGD whose momentum state does not match its momentum (changed after creation)'
    return None


def dense_kernel_call(base, index, dtype, *, multi_precision, aggregate):
    """The kernel ``base`` ran on parameter ``index`` (dense, ``dtype``) in the call just made.

    Parameters
    ----------
    base : mxnet.optimizer.SGD or mxnet.optimizer.Adam
        The optimizer, after the call (its update count for ``index`` moved).
    index : int or str
        The parameter's index.
    dtype : numpy dtype
        The parameter's dtype (SGD decides multi-precision on a call's first weight; MXNet's
        ``Updater`` makes calls of one dtype).
    multi_precision : bool
        Whether the call went through ``update_multi_precision``.
    aggregate : bool
        Whether every weight and gradient of the call was dense (SGD's multi-tensor kernels).

    Returns
    -------
    KernelCall
    """
    mp = bool(multi_precision and base.multi_precision and np.dtype(dtype) == np.float16)
    if type(base) is mx_opt.Adam:
        return _adam_call(base, index, mp)
    # As SGD._update_impl: one lr / wd per index, the schedule asked at the current num_update.
    lr = base._get_lrs([index])[0]
    wd = base._get_wds([index])[0]
    attrs = {'rescale_grad': str(base.rescale_grad)}
    if base.momentum > 0:
        attrs['momentum'] = str(base.momentum)
    if base.clip_gradient:
        attrs['clip_gradient'] = str(base.clip_gradient)
    if aggregate:
        # lrs=lrs, wds=wds are lists: the operator gets str(list), each element its repr
        attrs['lr'], attrs['wd'] = str([lr])[1:-1], str([wd])[1:-1]
    else:
        attrs['lr'], attrs['wd'] = str(lr), str(wd)
    kernel = ('multi_' if aggregate else '') + ('mp_' if mp else '') + 'sgd' + (
        '_mom' if base.momentum > 0 else '')
    return KernelCall(kernel, attrs)


def _adam_call(base, index, mp):
    # As Adam.update, line for line (the bias correction is float64 Python arithmetic).
    lr = base._get_lr(index)
    wd = base._get_wd(index)
    t = base._index_update_count[index]
    coef1 = 1. - base.beta1**t
    coef2 = 1. - base.beta2**t
    lr *= math.sqrt(coef2)/coef1
    attrs = {'beta1': str(base.beta1), 'beta2': str(base.beta2), 'epsilon': str(base.epsilon),
             'rescale_grad': str(base.rescale_grad), 'lr': str(lr), 'wd': str(wd)}
    if base.clip_gradient:
        attrs['clip_gradient'] = str(base.clip_gradient)
    return KernelCall('mp_adam' if mp else 'adam', attrs)


def state_arrays(kernel, state):
    """The state arrays of ``state`` (the optimizer's, for one weight) in the kernel's order.

    SGD keeps ``mom`` (or None), with multi-precision ``(mom or None, weight32)``; Adam keeps
    ``(mean, var)``, with multi-precision ``(weight32, (mean, var))``.

    Examples
    --------
    >>> state_arrays('mp_adam', ('w32', ('m', 'v')))
    ['m', 'v', 'w32']
    """
    if kernel == 'mp_adam':
        return [state[1][0], state[1][1], state[0]]
    if kernel == 'adam':
        return [state[0], state[1]]
    if KERNELS[kernel][2]:   # mp SGD
        return [a for a in state if a is not None]
    return [] if state is None else [state]


def run_mxnet_kernel(kernel, attrs, weight, grad, states):
    """Apply ``kernel`` with ``attrs`` through MXNet's own operators, in place.

    The reference the in-place operator is held to: ``weight``, ``grad`` and ``states``
    (ordered as :data:`KERNELS` says) are contiguous NDArrays, updated as the optimizer would.
    """
    op, _, _ = KERNELS[kernel]
    attrs = dict(attrs)
    if kernel == 'mp_adam':
        mean, var, weight32 = states
        grad32 = grad.astype(np.float32)
        nd.adam_update(weight32, grad32, mean, var, out=weight32, **attrs)
        nd.cast(weight32, dtype=weight.dtype, out=weight)
        return weight
    if kernel.startswith('multi_'):
        attrs['lrs'] = '(%s,)' % attrs.pop('lr')
        attrs['wds'] = '(%s,)' % attrs.pop('wd')
        attrs['num_weights'] = 1
    getattr(nd, op)(weight, grad, *states, out=weight, **attrs)
    return weight
