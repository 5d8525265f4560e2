"""Does a parameter position still hold the parameter its mask was resolved for?

Module and Trainer name parameters by position (``idx2name``), and MXNet's Updater keys
optimizer states by position too. Two things break that silently, and are refused here:

- a ``BucketingModule`` whose buckets have other parameter lists (a bucket without one layer)
  shifts the positions, so one parameter's mask and state would meet another parameter's
  weight (:class:`PositionHistory`);
- a table grown in place under a live optimizer keeps the plan resolved for the old shape, so
  only the old block would train (:func:`stale_plan_error`).

The weight's shape and dtype tell positions apart, where they differ; two parameters of one
shape cannot be told apart (nor by MXNet). The weight's memory address would tell those too,
but reading it with ``MXNDArrayGetData`` while a queued operator still produces the weight
allocates its memory a second time in MXNet 1.9.1: the update then wrote frozen entries
(``tests/test_edges.py::test_repeated_runs_give_the_same_bits``).
"""
from .names import known_params

__all__ = ['PositionHistory', 'stale_plan_error']


class PositionHistory:
    """The (shape, dtype) pairs each ``(position, context)`` has held, to spot shifted buckets.

    A position that now holds a shape and dtype seen only at another position holds that other
    parameter. At a position's first sight, the Module or Trainer up the call stack gives the
    shape of the parameter the position is named after
    (:func:`masked_opt.names.known_params`). A new shape seen nowhere else is left to the
    plan's own check (:func:`stale_plan_error`).

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.positions import PositionHistory
    >>> history = PositionHistory()
    >>> names = {0: 'a', 1: 'b'}
    >>> history.check((0, mx.cpu()), mx.nd.zeros((4, 2)), names=names, optimizer=None)
    >>> history.check((1, mx.cpu()), mx.nd.zeros((3, 2)), names=names, optimizer=None)
    >>> history.check((0, mx.cpu()), mx.nd.zeros((3, 2)), names=names, optimizer=None)
    Traceback (most recent call last):
    ...
    ValueError: parameter position 0 (named 'a') holds an array of shape (3, 2), but position 1 ...
    """

    def __init__(self):
        self._held = {}   # (position, context) -> set of (shape, dtype)

    def check(self, key, weight, *, names, optimizer):
        """Record what position ``key = (index, context)`` holds now; raise if it shifted.

        Parameters
        ----------
        key : tuple
            ``(index, context)`` of the parameter.
        weight : mxnet.nd.NDArray
            The array the position holds in this update.
        names : dict
            Position -> parameter name, as far as known (the masked optimizer's map).
        optimizer : mxnet.optimizer.Optimizer or None
            The optimizer being called, to find the Module/Trainer that holds it (first sight
            only); None skips that check.
        """
        now = (tuple(weight.shape), weight.dtype)
        mine = self._held.setdefault(key, set())
        if now in mine:
            return
        name = names.get(key[0])
        if not mine:
            if optimizer is not None and name is not None:
                # Once per position, not per step: it reads the call stack.
                expected = known_params(optimizer).get(name)
                if expected is not None and tuple(expected[0]) != now[0]:
                    raise _shifted(key, now, names, 'parameter %r has shape %s'
                                   % (name, tuple(expected[0])))
        else:
            owner = next((k for k, held in self._held.items() if k != key and k[1] == key[1]
                          and now in held), None)
            if owner is not None:
                raise _shifted(key, now, names, 'position %r (%r) held that shape'
                               % (owner[0], names.get(owner[0])))
        mine.add(now)


def _shifted(key, now, names, why):
    return ValueError(
        'parameter position %r (named %r) holds an array of shape %s, but %s. The '
        'optimizer is shared by modules whose parameter lists differ (a BucketingModule '
        'whose buckets have different parameters): MXNet keys masks and optimizer states '
        "by position, so parameters would get each other's masks and states. Give every "
        'bucket the same parameter list.' % (key[0], names.get(key[0]), now[0], why))


def stale_plan_error(name, plan_shape, weight_shape):
    """The error for a weight whose shape no longer matches the plan made for it.

    Examples
    --------
    >>> from masked_opt.positions import stale_plan_error
    >>> str(stale_plan_error('emb_weight', (10, 4), (12, 4)))[:60]
    "parameter 'emb_weight' has shape (12, 4), but its mask was r"
    """
    return ValueError(
        'parameter %r has shape %s, but its mask was resolved for shape %s when the '
        'optimizer first saw it: the parameter was resized (e.g. a table grown in place) '
        'under a live optimizer, which would keep training the old block only. Create the '
        'Trainer (or call Module.init_optimizer) again after growing.'
        % (name, tuple(weight_shape), tuple(plan_shape)))
