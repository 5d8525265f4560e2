"""How one masked parameter's update runs this step: the strategies, and the one place that
chooses among them (:func:`choose`).

========================  ==============================================  ===================
strategy                  when                                            module
========================  ==============================================  ===================
``Unmasked``              the parameter has no mask (or one that trains   :mod:`.base`
                          everything): its own arrays, untouched
``StandIn``               nothing of the parameter trains this step (a    :mod:`.stand_in`
                          fully frozen mask; a row_sparse batch without
                          a trainable row on the pure path)
``DenseBlock``            a dense gradient: the pure path, any            :mod:`.dense`
                          optimizer, mask, dtype, context
``InPlaceCols``           a dense gradient where masked_opt's operator    :mod:`.dense_cols`
                          reproduces the wrapped optimizer's kernel
                          (SGD, Adam; one range of rows and columns; see
                          :func:`~.dense_cols.inplace_reason`)
``SparseRows``            a row_sparse gradient: the pure path, any       :mod:`.sparse`
                          optimizer, mask, dtype, context
``NativeRows``            a row_sparse gradient where MXNet's lazy        :mod:`.native_rows`
                          kernel gives the pure path's bits (see
                          :func:`native_reason`)
========================  ==============================================  ===================

The block strategies share one interface (:class:`~masked_opt.steps.base.BlockStep`), which
owns the cut of a state made for the whole weight and the blend of fractional scales. Every
strategy gives the same bits as the pure one on every case it serves (``tests/test_paths.py``,
``tests/test_native_paths.py`` run them side by side, as torch.optim's tests run ``foreach``
against the for-loop).

``path`` picks among them, the way ``torch.optim`` takes ``foreach=``/``fused=``: ``'auto'``
(the default: the native strategy -- ``NativeRows`` for a row_sparse gradient,
``InPlaceCols`` for a dense one -- where it applies and the library is loaded, else the pure
one), ``'pure'`` (never a native strategy), ``'native'`` (the native strategy, or a
``ValueError`` saying why it does not apply). The stand-in and the unmasked pass-through are
not speed choices: every path takes them where they apply. :attr:`masked_opt.Masked.step_path`
passes it for a whole optimizer.

>>> import mxnet as mx, numpy as np
>>> from masked_opt.update import BlockPlan
>>> from masked_opt.steps import choose
>>> w = mx.nd.zeros((6, 4))
>>> plan = BlockPlan(w.shape, np.array([0., 0., 1., 1., 1., 0.]), None, w.context, w.dtype)
>>> g = mx.nd.sparse.row_sparse_array((np.ones((1, 4), 'float32'), [3]), shape=(6, 4))
>>> sgd = mx.optimizer.SGD(momentum=0.9)
>>> pick = dict(full_state=False, multi_precision=False, stand_ins=None)
>>> choose(plan, 0, w, mx.nd.ones((6, 4)), sgd, path='pure', **pick).name
'dense'
>>> choose(plan, 0, w, g, sgd, path='pure', **pick).name
'sparse'
>>> choose(plan, 0, w, g, sgd, path='native', **pick).name if native_available() else 'native'
'native'
"""
import numpy as np
from mxnet import optimizer as mx_opt

from .. import inplace_check, native
from .base import Unmasked
from .dense import DenseBlock
from .dense_cols import InPlaceCols, inplace_reason
from .native_rows import NativeRows
from .sparse import SparseRows
from .stand_in import StandIn

__all__ = ['PATHS', 'choose', 'updater_calls', 'native_ranges', 'native_reason',
           'native_available']

#: The values of ``path`` (see the module doc).
PATHS = ('auto', 'pure', 'native')

# Exact types: a subclass may override update() with arithmetic of its own.
_LAZY_KERNEL_OPTIMIZERS = (mx_opt.SGD, mx_opt.Adam)
_NATIVE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def native_available():
    """True when masked_opt's operators are loaded (and not switched off)."""
    return native.available()


def check_path(path):
    """Raise unless ``path`` is one of :data:`PATHS`; return it."""
    if path not in PATHS:
        raise ValueError('path must be one of %s; received %r' % (list(PATHS), path))
    return path


def choose(plan, index, weight, grad, base, *, full_state, multi_precision, stand_ins,
           path='auto', state=None):
    """The strategy for one parameter's update this step: the only place that decides it.

    Parameters
    ----------
    plan : BlockPlan or None
        The parameter's plan on the weight's context (None: no mask).
    index : int or str
        The parameter's index (its wd depends on it).
    weight, grad : NDArray
        The full weight and its gradient (dense or row_sparse).
    base : mxnet.optimizer.Optimizer
        The wrapped optimizer.
    full_state : bool
        True when the state was made for the whole weight (warm-started without the mask).
    multi_precision : bool
        Whether the update goes through ``update_multi_precision``.
    stand_ins : StandIns
        The masked optimizer's stand-in arrays (used when nothing trains).
    path : {'auto', 'pure', 'native'}
        Which strategies may run (see the module doc).
    state : object, optional
        The parameter's optimizer state (the in-place strategy checks that SGD's momentum
        state matches its momentum).

    Returns
    -------
    Step
        Its :meth:`~masked_opt.steps.base.Step.prepare` gives what the wrapped optimizer gets.
    """
    check_path(path)
    if plan is None:
        return Unmasked()
    if plan.empty:
        # Nothing trains, but the wrapped optimizer is called as MXNet alone would call it
        # (update count, Nadam's schedule, LARS's lr): with a stand-in.
        return StandIn(stand_ins)
    if grad.stype != 'row_sparse':
        if path != 'pure':
            ranges = native_ranges(plan, weight.dtype)
            why_not = inplace_reason(ranges, weight, grad, base, state,
                                     multi_precision=multi_precision)
            if why_not is None:
                if native.available():
                    if inplace_check.check():
                        return InPlaceCols(plan, ranges, stand_ins)
                    why_not = ('the in-place operator is off in this process: %s'
                               % inplace_check.status().reason)
                else:
                    if path == 'auto' and native.status().enabled:
                        native.notify_fallback()
                    why_not = 'the native library is not loaded: %s' % native.status().reason
            if path == 'native':
                raise ValueError("path='native' cannot update parameter %r this step: %s. "
                                 "Use path='auto' to fall back to the pure path."
                                 % (index, why_not))
        return DenseBlock(plan)
    if path != 'pure':
        why_not = native_reason(plan, index, weight, base, full_state=full_state,
                                multi_precision=multi_precision)
        if why_not is None:
            if native.available():
                return NativeRows(plan, native_ranges(plan, weight.dtype), weight, grad)
            if path == 'auto' and native.status().enabled:
                native.notify_fallback()   # not switched off on purpose: say how to get it
            why_not = 'the native library is not loaded: %s' % native.status().reason
        if path == 'native':
            raise ValueError("path='native' cannot update parameter %r this step: %s. Use "
                             "path='auto' to fall back to the pure path." % (index, why_not))
    step = SparseRows(plan, grad, lazy=getattr(base, 'lazy_update', True))
    if step.empty:
        # No trainable row in this batch: nothing of the block moves (lazy), but MXNet alone
        # would still call the optimizer here, so it gets the stand-in, as for a fully frozen
        # parameter (counting alone left Nadam's schedule behind).
        return StandIn(stand_ins)
    return step


def updater_calls(weights, aggregate_num):
    """The calls MXNet 1.9.1's ``Updater`` makes to an optimizer for one list of parameters.

    Positions into ``weights``, one list per call. An optimizer that aggregates
    (``aggregate_num > 0``) gets the parameters grouped by dtype, dtypes in order of first
    appearance, in calls of at most ``aggregate_num``; any other gets them one at a time, in
    order (``Updater.__call__`` in ``mxnet/optimizer/optimizer.py``).

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.steps import updater_calls
    >>> ws = [mx.nd.zeros(1), mx.nd.zeros(1, dtype='float16'), mx.nd.zeros(1)]
    >>> updater_calls(ws, 0), updater_calls(ws, 4), updater_calls(ws, 1)
    ([[0], [1], [2]], [[0, 2], [1]], [[0], [2], [1]])
    """
    if aggregate_num <= 0:
        return [[k] for k in range(len(weights))]
    by_dtype = {}
    for k, w in enumerate(weights):
        by_dtype.setdefault(w.dtype, []).append(k)
    return [ks[start:start + aggregate_num] for ks in by_dtype.values()
            for start in range(0, len(ks), aggregate_num)]


def native_reason(plan, index, weight, base, *, full_state, multi_precision):
    """Why the native row_sparse strategy does not serve this case, or None when it does.

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> w = mx.nd.zeros((6, 4))
    >>> plan = BlockPlan(w.shape, np.array([1., 0., 1., 1., 1., 0.]), None, w.context, w.dtype)
    >>> native_reason(plan, 0, w, mx.optimizer.Adam(), full_state=False, multi_precision=False)
    'the block is not one range of rows and of columns of a 2-D CPU weight, 0/1 scales'
    """
    if native_ranges(plan, weight.dtype) is None:
        return 'the block is not one range of rows and of columns of a 2-D CPU weight, 0/1 scales'
    if full_state:
        return 'the state was made for the whole weight (the pure path cuts it)'
    if weight.stype != 'default':
        return 'the weight is row_sparse'
    if not _lazy_kernel_matches_pure_path(base, index):
        return ("%s's row_sparse update is not a lazy kernel that gives the pure path's bits"
                % type(base).__name__)
    if multi_precision and base.multi_precision and weight.dtype == np.float16:
        return 'a float16 weight with a float32 master copy (multi_precision)'
    return None


def native_ranges(plan, dtype):
    """``((lo, hi), (c0, c1))`` when the plan's block is one contiguous range of rows and of
    columns of a 2-D CPU weight of ``dtype`` with 0/1 scales, else None.

    Computed once per plan (kept with it).

    Examples
    --------
    >>> import mxnet as mx, numpy as np
    >>> from masked_opt.update import BlockPlan
    >>> plan = BlockPlan((6, 4), np.array([0., 0., 1., 1., 1., 0.]), None, mx.cpu(), 'float32')
    >>> native_ranges(plan, np.float32)
    ((2, 5), (0, 4))
    """
    return plan.remember('native_ranges', None, lambda: _block_ranges(plan, dtype))


def _block_ranges(plan, dtype):
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
