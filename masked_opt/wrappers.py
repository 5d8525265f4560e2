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

* When the masked optimizer first meets an index it cannot name (its ``_plan``), it looks at its
  callers (:func:`name_from_callers`): MXNet's ``Updater`` and every optimizer on the call stack
  that wraps it (its attributes lead to it). The ``idx2name`` and ``param_dict`` they hold are
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
import sys

from mxnet import optimizer as mx_opt

__all__ = ['names_from', 'find_masked']

# How far to look: attribute levels from a wrapper to the masked optimizer, caller frames.
_MAX_DEPTH = 4
_MAX_FRAMES = 64


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
    from .optimizer import Masked
    seen = set()
    level = [optimizer]
    for _ in range(_MAX_DEPTH + 1):
        nxt = []
        for opt in level:
            if id(opt) in seen:
                continue
            seen.add(id(opt))
            if isinstance(opt, Masked):
                return opt
            nxt.extend(_held_optimizers(opt))
        level = nxt
    return None


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
    >>> names_from(wrapper)._index_names
    {0: 'emb_weight'}
    """
    masked = find_masked(wrapper)
    if masked is None:
        raise ValueError('%s holds no masked optimizer (masked_opt.Masked) among its '
                         'attributes' % type(wrapper).__name__)
    if not _adopt(masked, [wrapper]):
        raise ValueError('%s holds no parameter names yet: call names_from after Module or '
                         'gluon.Trainer has been given it (after mod.init_optimizer, or after '
                         'creating the Trainer)' % type(wrapper).__name__)
    return masked


def name_from_callers(masked, index):
    """The name of ``index``, from the optimizers and Updater that called ``masked``.

    Called by the masked optimizer for an index it cannot name. Raises ``ValueError`` saying
    how to hand the names over when none of its callers knows the name.
    """
    holders = _wrappers_on_stack(masked, sys._getframe(1))
    if holders:
        _adopt(masked, holders)
    name = masked._index_names.get(index)
    if name is None:
        raise ValueError(
            'the masked optimizer cannot name parameter index %r: it has no idx2name or '
            'param_dict entry for it%s. Masks are matched by name, never by position. Give '
            'Module or gluon.Trainer the masked optimizer itself (optimizer=\'masked\' or a '
            'Masked instance; Horovod: hvd.DistributedTrainer(params, \'masked\', {...})); a '
            'wrapper such as hvd.DistributedOptimizer around it is found when it calls the '
            'masked optimizer directly. Otherwise hand the names over: '
            'masked_opt.wrappers.names_from(wrapper) after mod.init_optimizer(optimizer='
            'wrapper) or gluon.Trainer(params, wrapper).'
            % (index, ', nor has any optimizer wrapping it among its callers' if not holders
               else ' (its wrapper %s has none either)' % type(holders[0]).__name__))
    return name


def _held_optimizers(opt):
    """Optimizers held in ``opt``'s attributes (directly, or in a list/tuple/dict)."""
    values = list(getattr(opt, '__dict__', {}).values())
    out = []
    for value in values:
        if isinstance(value, mx_opt.Optimizer):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, mx_opt.Optimizer))
    return out


def _wraps(outer, masked):
    return outer is not masked and find_masked(outer) is masked


def _wrappers_on_stack(masked, frame):
    """Optimizers wrapping ``masked`` that are on the call stack, innermost first."""
    found, seen = [], set()
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get('self')
        candidates = [owner]
        if isinstance(owner, mx_opt.Updater):
            candidates = [owner.optimizer]
        for cand in candidates:
            if (isinstance(cand, mx_opt.Optimizer) and id(cand) not in seen
                    and _wraps(cand, masked)):
                seen.add(id(cand))
                found.append(cand)
        frame = frame.f_back
    return found


def _names_held(opt):
    """``{index: name}`` from what Module / Trainer wrote on ``opt`` (idx2name, param_dict)."""
    names = {}
    for attr in ('idx2name', 'param_dict'):
        try:
            value = getattr(opt, attr)
        except Exception:  # pylint: disable=broad-except  # a wrapper without the attribute
            continue
        if not isinstance(value, dict):
            continue
        for index, item in value.items():
            if attr == 'idx2name':
                names[index] = str(item)
            elif hasattr(item, 'name'):   # a gluon.Parameter: only its name is kept
                names[index] = item.name
    return names


def _adopt(masked, holders):
    """Copy the names held by ``holders`` into ``masked``; True when any were found."""
    found = {}
    for holder in holders:
        for index, name in _names_held(holder).items():
            known = found.get(index, masked._index_names.get(index))
            if known is not None and known != name:
                raise ValueError(
                    'parameter index %r is named %r by %s but %r by %s: two different '
                    'index -> name maps. Give Module or the Trainer one optimizer, and hand '
                    'the masked optimizer no names of its own.'
                    % (index, name, type(holder).__name__, known,
                       'the masked optimizer' if index in masked._index_names
                       else 'another wrapper'))
            found[index] = name
    if not found:
        return False
    masked._index_names.update(found)
    masked._check_keys(set(masked._index_names.values()))
    return True
