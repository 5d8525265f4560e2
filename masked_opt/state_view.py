"""A parameter's optimizer state, with the rows and columns of the weight it belongs to.

The masked optimizer keeps state only for a parameter's trainable block (see the contract), so
a state array's row ``k`` is the weight's row ``rows[k]``, not its row ``k``.
:func:`optimizer_state` returns the state's arrays together with those ids, from a
``gluon.Trainer``, a ``Module`` or an updater, so reading a state needs neither MXNet's private
attributes (``trainer._updaters[0].states[0]``, ``mod._updater.states[0][0]``) nor knowledge of
how indices are numbered.
"""
import collections

import numpy as np

from ._mxnet_workarounds import updaters_of
from .states import LAYOUTS_KEY
from .wrappers import find_masked

__all__ = ['optimizer_state', 'OptimizerState']

OptimizerState = collections.namedtuple('OptimizerState', 'name arrays rows cols')
OptimizerState.__doc__ = """A parameter's optimizer state and where it sits in the weight.

``arrays``: the state's NDArrays in the wrapped optimizer's order (Adam: mean, variance; SGD
with momentum: the momentum; with ``multi_precision`` the float32 master weight comes first),
live (``.copy()`` one to keep it); empty when the optimizer keeps no state (SGD without
momentum). ``rows``, ``cols``: numpy int64 ids of the weight's rows and columns the arrays'
rows and columns stand for (``cols`` is None for a 1-D weight; both None for a masked state
whose layout is unknown: loaded by MXNet's own Updater from a file that had none)."""


def _indices(optimizer, name):
    """The state indices of parameter ``name``, sorted (one per device in a Module)."""
    found = {i for i, n in (getattr(optimizer, 'idx2name', None) or {}).items() if n == name}
    found |= {i for i, p in (getattr(optimizer, 'param_dict', None) or {}).items()
              if p.name == name}
    return sorted(found)


def _flatten(state):
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [a for part in state for a in _flatten(part)]
    return [state]


def optimizer_state(owner, param, device=0):
    """The optimizer state of ``param`` and the weight rows and columns it belongs to.

    Parameters
    ----------
    owner : gluon.Trainer, mx.mod.Module or mxnet.optimizer.Updater
        What trained the parameter (after its first update: states are created then, or
        loaded with ``load_states`` / ``load_optimizer_states``).
    param : str or gluon.Parameter
        The parameter (its name, as in the masks).
    device : int
        Which device's copy, for a Trainer or Module on several devices (default the first).

    Returns
    -------
    OptimizerState
        ``(name, arrays, rows, cols)``: ``arrays[j][k]`` is the state of weight row
        ``rows[k]``, columns ``cols``. For an optimizer that is not ``'masked'`` the state
        covers the whole weight.

    Raises
    ------
    KeyError
        ``param`` is not a parameter of ``owner``, or has no state yet (the message says
        which).

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> net = mx.gluon.nn.Embedding(10, 4)
    >>> net.initialize()
    >>> trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {
    ...     'base': 'adam', 'masks': {net.weight: mo.train_rows_from(7) & mo.train_cols([1, 3])}})
    >>> with mx.autograd.record():
    ...     loss = net(mx.nd.array([1, 8])).sum()
    >>> loss.backward(); trainer.step(1)
    >>> st = mo.optimizer_state(trainer, net.weight)
    >>> [a.shape for a in st.arrays], st.rows.tolist(), st.cols.tolist()
    ([(3, 2), (3, 2)], [7, 8, 9], [1, 3])
    """
    name = getattr(param, 'name', param)
    updaters = [u for u in updaters_of(owner) if u is not None]
    if not updaters:
        raise KeyError('optimizer_state: %s has no optimizer states yet: they are created at '
                       'the first update (trainer.step, mod.update or fit) or loaded with '
                       'load_states' % type(owner).__name__)
    updater = updaters[min(device, len(updaters) - 1)] if len(updaters) > 1 else updaters[0]
    optimizer = find_masked(updater.optimizer) or updater.optimizer
    indices = _indices(optimizer, name)
    if not indices:
        known = sorted(set((getattr(optimizer, 'idx2name', None) or {}).values())
                       | {p.name for p in (getattr(optimizer, 'param_dict', None) or {})
                          .values()})
        raise KeyError('optimizer_state: expected the name of a parameter the optimizer '
                       'updates, received %r; known: %s' % (name, ', '.join(known[:10])))
    index = indices[min(device, len(indices) - 1)] if len(updaters) == 1 else indices[0]
    if index not in updater.states:
        raise KeyError('optimizer_state: %r has no optimizer state yet: it is created at the '
                       'first update of the parameter (trainer.step, mod.update or fit) or '
                       'loaded with load_states' % name)
    arrays = _flatten(updater.states[index])
    if hasattr(updater, 'block_ids'):
        block = updater.block_ids(index)
    else:   # MXNet's own Updater: a loaded state file keeps its layouts under LAYOUTS_KEY
        block = _saved_ids((updater.states.get(LAYOUTS_KEY) or {}).get(index))
    if block is not None:
        return OptimizerState(name, arrays, block[0], block[1])
    if find_masked(updater.optimizer) is None and arrays:   # not masked: the whole weight
        shape = arrays[-1].shape
        return OptimizerState(name, arrays, np.arange(shape[0]),
                              np.arange(shape[1]) if len(shape) > 1 else None)
    return OptimizerState(name, arrays, None, None)         # a masked state of unknown layout


def _saved_ids(plain):
    """``(rows, cols)`` of a layout as a state file stores it (``None``: unknown)."""
    if plain is None:
        return None
    shape = tuple(plain['shape'])

    def ids(bits, n):       # a bitmap of the ids (None: all of them), np.packbits order
        if bits is None:
            return np.arange(n)
        return np.flatnonzero(np.unpackbits(np.frombuffer(bits, np.uint8), count=n))
    return ids(plain.get('rows'), shape[0]), (ids(plain.get('cols'), shape[1])
                                              if len(shape) > 1 else None)
