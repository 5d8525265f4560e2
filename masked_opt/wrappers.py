"""Parameter names for a masked optimizer inside another optimizer (``hvd.DistributedOptimizer``).

Module and ``gluon.Trainer`` name parameters by *writing* on the optimizer they are given:
Module sets ``idx2name``, the Trainer ``param_dict``. When that optimizer is a wrapper around
the masked one -- Horovod's ``DistributedOptimizer``, or any wrapper that forwards reads to the
optimizer inside (``__getattr__``) but keeps writes -- the names stay on the wrapper, and the
:class:`~masked_opt.Masked` inside sees only indices::

    opt = hvd.DistributedOptimizer(mo.Masked(base='sgd', masks={'emb_weight': ...}))
    mod.fit(train_iter, kvstore=None, optimizer=opt)   # Module writes opt.idx2name

A mask must never be matched to a parameter by its position alone: the order of parameters
differs between Module (``list_arguments()`` without data and labels) and Gluon (sorted names),
and a wrong order would mask another parameter silently whenever shapes agree. So the names are
taken only from the map the framework itself wrote, on the object that holds it:

* When the masked optimizer first meets an index it cannot name (its ``plan_for``), it looks at
  its callers (:func:`masked_opt._mxnet_workarounds.name_from_callers`): MXNet's ``Updater`` and
  every optimizer on the call stack that wraps it (its attributes lead to it). The ``idx2name``
  and ``param_dict`` they hold are
  copied into the masked optimizer's own index -> name map (which is pickled with it; no
  Parameter is kept), and every mask key is checked against the names. This happens in the
  first ``create_state``, before any weight is written. Two callers naming one index
  differently are an error.
* Where no caller holds the names (the wrapper calls the masked optimizer from another thread,
  or updates are driven by hand), :func:`names_from` hands them over explicitly; the error says
  so.

Only names are taken from the wrapper. Arithmetic settings written on it (``rescale_grad`` by
``gluon.Trainer.step``, ``lr_mult``/``wd_mult`` of Parameters through ``param_dict``) stay where
the wrapper keeps them, so the masked optimizer trains exactly as the optimizer it wraps would
in its place (the contract's C4): Horovod's ``DistributedOptimizer`` under a plain
``gluon.Trainer`` never applies the Trainer's ``rescale_grad``, with or without masked_opt (see
the distributed how-to).
"""
from ._mxnet_workarounds import first_held, take_names
from .optimizer import Masked

__all__ = ['names_from', 'find_masked']


def find_masked(optimizer):
    """The :class:`~masked_opt.Masked` optimizer that ``optimizer`` is or wraps, or None.

    Follows attributes that hold optimizers (Horovod keeps it in ``_optimizer``), up to a few
    wrappers deep.

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> from masked_opt.wrappers import find_masked
    >>> class Wrapper(mx.optimizer.Optimizer):
    ...     def __init__(self, inner):
    ...         self._inner = inner
    ...     def __getattr__(self, name):
    ...         return getattr(self._inner, name)
    >>> masked = mo.Masked(base='sgd')
    >>> find_masked(Wrapper(Wrapper(masked))) is masked
    True
    >>> find_masked(mx.optimizer.SGD()) is None
    True
    """
    return first_held(optimizer, Masked)


def names_from(wrapper):
    """Give the masked optimizer inside ``wrapper`` the parameter names written on ``wrapper``.

    Needed only where :class:`~masked_opt.Masked` cannot find its wrapper among its callers
    (the wrapper updates from another thread, or the updates are driven by hand); Module and
    ``gluon.Trainer`` with ``hvd.DistributedOptimizer`` need nothing. Call it after Module or
    the Trainer has named the parameters: after ``mod.init_optimizer(optimizer=wrapper)`` (or
    ``mod.fit``'s first batch) and after ``gluon.Trainer(params, wrapper)``.

    Parameters
    ----------
    wrapper : mxnet.optimizer.Optimizer
        The optimizer given to Module or the Trainer, wrapping a Masked optimizer.

    Returns
    -------
    masked_opt.Masked
        The masked optimizer inside, which now knows the names.

    Raises
    ------
    ValueError
        ``wrapper`` holds no Masked optimizer, holds no names yet, names an index differently
        from what the masked optimizer already knows, or a mask key matches no parameter.

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> from masked_opt.wrappers import names_from
    >>> class Wrapper(mx.optimizer.Optimizer):   # forwards reads, keeps writes
    ...     def __init__(self, inner):
    ...         self._inner = inner
    ...     def __getattr__(self, name):
    ...         return getattr(self._inner, name)
    >>> wrapper = Wrapper(mo.Masked(base='sgd', masks={'emb_weight': mo.train_rows([1])}))
    >>> wrapper.idx2name = {0: 'emb_weight'}      # what Module.init_optimizer does
    >>> names_from(wrapper).index_names
    {0: 'emb_weight'}
    """
    masked = find_masked(wrapper)
    if masked is None:
        raise ValueError('%s holds no masked optimizer (masked_opt.Masked) among its '
                         'attributes' % type(wrapper).__name__)
    if not take_names(masked, [wrapper]):
        raise ValueError('%s holds no parameter names yet: call names_from after Module or '
                         'gluon.Trainer has been given it (after mod.init_optimizer, or after '
                         'creating the Trainer)' % type(wrapper).__name__)
    return masked
