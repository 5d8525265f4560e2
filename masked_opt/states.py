"""Block states that know which rows and columns they belong to; loading them under another mask.

The masked optimizer keeps state only for a parameter's trainable block (C6). A block state is
meaningful only together with its layout: which rows and columns of the weight its entries
stand for. This module keeps that layout next to each state and uses it when states are loaded.

:class:`MaskedUpdater` is the ``mxnet.optimizer.Updater`` that MXNet's Module, ``gluon.Trainer``
and the local kvstore get for a :class:`~masked_opt.Masked` optimizer (importing masked_opt makes
``mxnet.optimizer.get_updater`` return it for a Masked optimizer and for a wrapper around one,
such as ``hvd.DistributedOptimizer``; MXNet's own Updater for any other). It differs from
MXNet's in four places:

* A list of parameters goes to the optimizer in one call, whatever their dtypes. MXNet's
  Updater splits the call of an aggregating optimizer by dtype; the masked optimizer needs the
  whole step to check every mask before writing anything, and makes the wrapped optimizer's
  calls, dtype groups included, itself (:func:`masked_opt.optimizer.updater_calls`), so that a
  model mixing float16 and float32 sees the order it sees without masked_opt.

* ``get_states`` saves, next to the states, the layout of each one (key :data:`LAYOUTS_KEY` of the
  pickled states dict: parameter name, weight shape, row and column bitmaps; plain Python types,
  so MXNet without masked_opt still unpickles the file and ignores the extra key).
* ``set_states`` keeps the masks. A Gluon state file holds an optimizer, and MXNet replaces the
  Trainer's optimizer with it: the masks would be gone. Here the file's optimizer (type,
  hyper-parameters, update counts, learning-rate schedule) becomes the *wrapped* optimizer, and
  the masks stay those of the live optimizer.
* Loaded states are matched to the current masks before anything is written. Entries trainable
  both when the state was saved and now keep their state bit for bit; newly trainable entries
  start from what the wrapped optimizer's ``create_state`` gives them; entries no longer
  trainable lose theirs. A state saved for the whole weight (an unmasked run) is kept whole and
  updated through the block (the warm-state path of :mod:`masked_opt.optimizer`). A state that
  cannot be matched -- another weight shape, another optimizer's state structure, a block state
  without layout whose shape fits neither the block nor the weight -- is a ``ValueError`` naming
  the parameter. In Gluon the weights are known when ``Trainer.load_states`` runs, so the match
  and the error happen there; in Module, at the first update, before any weight is written.
"""
import pickle

from mxnet import optimizer as mx_opt
from mxnet.base import py_str
from mxnet.optimizer.optimizer import _as_classic
from mxnet.util import is_np_array

from . import server as _server
from ._layouts import Layout, is_whole, remap
from ._mxnet_workarounds import held_optimizers
from .wrappers import find_masked

__all__ = ['MaskedUpdater', 'LAYOUTS_KEY', 'updater_for']

#: Key of the layouts in a pickled states dict (never a parameter index or name).
LAYOUTS_KEY = 'masked_opt:layouts'


def _name_of(opt, index):
    return opt.name_of(index)


def _layout_of(opt, index, weight):
    """The layout of the state the masked optimizer makes for ``weight`` (None: no state)."""
    plan = opt.plan_for(index, weight)  # cached: built when the state was created
    name = _name_of(opt, index)
    if plan is None:
        return Layout(name, weight.shape, None, None)
    if plan.empty:
        return None
    return Layout(name, weight.shape, None if plan.all_rows else plan.row_ids,
                   None if plan.all_cols or plan.col_ids is None else plan.col_ids)


class MaskedUpdater(mx_opt.Updater):
    """MXNet's Updater for a :class:`~masked_opt.Masked` optimizer; states carry their layout.

    Examples
    --------
    A state saved under one mask, loaded under another: the row trainable in both keeps its
    momentum, the newly trainable row starts from zero.

    >>> import mxnet as mx, masked_opt as mo
    >>> def updater(mask):
    ...     return mx.optimizer.get_updater(mo.Masked(
    ...         base='sgd', learning_rate=1.0, momentum=0.5, masks={'w': mask},
    ...         param_idx2name={0: 'w'}))
    >>> first = updater(mo.train_rows([1, 2]))
    >>> type(first).__name__
    'MaskedUpdater'
    >>> w = mx.nd.zeros((4, 1))
    >>> first(0, mx.nd.ones((4, 1)), w)
    >>> second = updater(mo.train_rows([2, 3]))
    >>> second.set_states(first.get_states())
    >>> second(0, mx.nd.zeros((4, 1)), w)     # a zero gradient: only momentum moves row 2
    >>> w.asnumpy().ravel().tolist()
    [0.0, -1.0, -1.5, 0.0]
    """

    def __init__(self, optimizer):
        super().__init__(optimizer)
        self._masked_of = (None, None)   # (self.optimizer, the Masked it is or wraps)
        self.layouts = {}    # index -> Layout of self.states[index] (None: no state needed)
        self._pending = {}   # index -> Layout or None: loaded, not yet matched to a weight

    def _masked(self):
        """The Masked optimizer this updater's optimizer is or wraps (None when neither).

        Usually the optimizer itself; under a wrapper such as Horovod's ``DistributedOptimizer``
        the one inside, which keeps the masks, layouts and states' shapes. Looked up again when
        the optimizer is replaced (MXNet's ``set_states`` does that).
        """
        opt, masked = self._masked_of
        if opt is not self.optimizer:
            masked = find_masked(self.optimizer)
            self._masked_of = (self.optimizer, masked)
        return masked

    # ---- saving ----
    def get_states(self, dump_optimizer=False):
        states = dict(self.states)
        layouts = self.saved_layouts()
        if layouts:
            states[LAYOUTS_KEY] = layouts
        return pickle.dumps((states, self.optimizer) if dump_optimizer else states)

    def saved_layouts(self):
        """The layout of each state, as :meth:`get_states` saves it next to the states.

        Returns
        -------
        dict
            ``{index: {'name': str, 'shape': tuple, 'rows': bytes or None, 'cols': bytes or
            None}}`` for every index in ``states`` whose layout is known: ``rows`` and
            ``cols`` are bitmaps (``numpy.packbits``) of the weight's rows and columns the
            state covers, None for all of them. An index without an entry has no layout (a
            state loaded from a file that did not record one).
        """
        layouts = {}
        for index in self.states:
            layout = self._pending.get(index, self.layouts.get(index))
            if layout is not None:
                layouts[index] = layout.to_plain()
        return layouts

    # ---- loading ----
    def block_ids(self, index):
        """The weight rows and columns ``states[index]`` stands for: ``(rows, cols)``.

        Numpy int64 ids (``cols`` None for a 1-D weight); every row and column for a state kept
        whole (loaded from an unmasked run); None when the state has no known layout (not
        created by this updater, or loaded from a file that had none).
        :func:`masked_opt.optimizer_state` reads states with them.
        """
        layout = self._pending.get(index, self.layouts.get(index))
        if layout is None:
            return None
        if not layout.full and is_whole(self.states.get(index), layout.shape):
            layout = Layout(layout.name, layout.shape, None, None)   # a warm state, kept whole
        return layout.row_ids(), None if len(layout.shape) < 2 else layout.col_ids()

    def set_states(self, states):
        loaded = pickle.loads(states)
        file_opt = None
        if isinstance(loaded, tuple) and len(loaded) == 2:
            loaded, file_opt = loaded
        loaded = dict(loaded)
        plain = loaded.pop(LAYOUTS_KEY, None) or {}
        self.restore(loaded, plain, file_opt)

    def restore(self, states, layouts=None, optimizer=None):
        """Load states that are already objects: what :meth:`set_states` does after unpickling.

        Parameters
        ----------
        states : dict
            ``{index: state}``, states as the wrapped optimizer makes them (NDArrays, tuples,
            None).
        layouts : dict, optional
            ``{index: layout}`` in the form :meth:`saved_layouts` returns; an index without
            one is matched by its shapes alone.
        optimizer : mxnet.optimizer.Optimizer, optional
            The optimizer saved with the states. On a masked updater it becomes the wrapped
            optimizer and the live masks stay; None keeps the optimizer as it is.

        States are matched to the current masks where the weights are known (Gluon), at the
        first update otherwise (Module); a state that cannot be matched raises ``ValueError``
        before anything is changed.
        """
        loaded, file_opt = dict(states), optimizer
        layouts = {i: Layout.from_plain(p) for i, p in (layouts or {}).items() if i in loaded}
        opt = self._masked()
        if opt is None:   # not ours any more: MXNet's semantics
            self.states, self.optimizer = loaded, (file_opt or self.optimizer)
            self.states_synced = dict.fromkeys(self.states, False)
            return
        pending = {i: layouts.get(i) for i in loaded}
        with opt.unchanged_on_error():
            if file_opt is not None:
                _take_file_optimizer(opt, file_opt)
            # Match whatever weights are known now (Gluon: param_dict); raise before any change.
            matched = self._match(loaded, pending, _known_weights(opt, pending))
        self.states = loaded
        self.states_synced = dict.fromkeys(self.states, False)
        self.layouts = {}
        self._pending = pending
        self._commit(matched)

    def __call__(self, index, grad, weight):
        if self._pending:
            indices = index if isinstance(index, (list, tuple)) else [index]
            weights = weight if isinstance(weight, (list, tuple)) else [weight]
            todo = {}
            for i, w in zip(indices, weights, strict=True):
                i = py_str(i) if isinstance(i, bytes) else i
                if i in self._pending:
                    todo[i] = w
            if todo:
                self._commit(_loud(self._match)(self.states, self._pending, todo))
        if isinstance(index, (list, tuple)) and self.aggregate_updates and \
                self._masked() is not None:
            self._whole_step(list(index), list(grad), list(weight))
        else:
            super().__call__(index, grad, weight)
        self._record(index, weight)

    def _whole_step(self, indices, grads, weights):
        """MXNet's ``Updater.__call__`` for a list, minus its grouping by dtype: every
        parameter goes to the masked optimizer in one call, in the caller's order.

        MXNet's Updater splits an aggregating optimizer's call by dtype. The masked optimizer
        reports a huge ``aggregate_num`` to get the whole step at once; split by dtype, a
        mixed float16/float32 model would reach it as two calls, so the wrapped optimizer
        would see the parameters in another order than alone (C4: Nadam's schedule, SGLD's
        noise) and a bad mask among the second dtype would raise after the first dtype's
        weights were written (C8). The masked optimizer makes the wrapped optimizer's calls,
        grouping included, itself (``masked_opt.optimizer.updater_calls``).
        """
        allow_np = getattr(self.optimizer, 'allow_np_array', is_np_array())
        grads = [_as_classic(g, allow_np) for g in grads]
        weights = [_as_classic(w, allow_np) for w in weights]
        if weights:
            self.optimizer._set_current_context(weights[0].context.device_id)
        for k, (i, w) in enumerate(zip(indices, weights, strict=True)):
            if isinstance(i, bytes):
                indices[k] = i = py_str(i)
            if i not in self.states:
                self.states[i] = self.optimizer.create_state_multi_precision(i, w)
                self.states_synced[i] = True
            elif not self.states_synced[i]:
                self.states[i] = self.sync_state_context(self.states[i], w.context)
                self.states_synced[i] = True
        self.optimizer.update_multi_precision(indices, weights, grads,
                                              [self.states[i] for i in indices])

    def _record(self, index, weight):
        """Remember the layout of each state this call created (once per index)."""
        opt = self._masked()
        if opt is None or opt.on_server:
            return
        indices = index if isinstance(index, (list, tuple)) else [index]
        weights = weight if isinstance(weight, (list, tuple)) else [weight]
        for i, w in zip(indices, weights, strict=True):
            i = py_str(i) if isinstance(i, bytes) else i
            if i not in self.layouts and i not in self._pending:
                self.layouts[i] = _layout_of(opt, i, w)

    def _match(self, states, pending, weights):
        """``{index: (state, layout)}`` for every pending index with a weight; raises first."""
        out = {}
        opt = self._masked()
        for index, weight in weights.items():
            # The state first: its plan gives the masked optimizer the index's name (under a
            # wrapper it learns names from its callers then).
            fresh = opt.create_state_multi_precision(index, weight)
            now = _layout_of(opt, index, weight)
            name = _name_of(opt, index)
            out[index] = (remap(name, states[index], pending[index], fresh, now, weight.shape),
                          now)
        return out

    def _commit(self, matched):
        for index, (state, layout) in matched.items():
            self.states[index] = state
            self.states_synced[index] = False
            self.layouts[index] = layout
            del self._pending[index]


def _loud(fn):
    return _server.loud_in_kvstore(fn)


def _take_file_optimizer(masked, file_opt):
    """The state file's optimizer becomes the wrapped one; the live masks stay.

    The file holds whatever optimizer the Trainer had: a Masked one, a plain one (a warm start
    from an unmasked run), or either inside a wrapper (``hvd.DistributedOptimizer``). The
    wrapped optimizer taken from it is never a wrapper: the live wrapper stays outside.
    """
    inner = find_masked(file_opt)
    if inner is not None:
        base = inner.base
    else:
        base = file_opt
        while True:
            held = [o for o in held_optimizers(base) if o is not base]
            if not held:
                break
            if len(held) > 1:
                raise ValueError(
                    'the state file holds a %s that wraps several optimizers (%s); expected '
                    'one optimizer, masked or not, possibly inside one wrapper. Load the '
                    'states into a Trainer with that optimizer alone.'
                    % (type(file_opt).__name__, ', '.join(type(o).__name__ for o in held)))
            base = held[0]
    old = masked.base
    if not base.param_dict and old.param_dict:
        base.param_dict = old.param_dict
    if not base.idx2name and old.idx2name:
        base.idx2name = dict(old.idx2name)
    if getattr(base, 'sym_info', ()) == () and getattr(old, 'sym_info', ()):
        base.sym_info = old.sym_info
    masked.replace_base(base)


def _known_weights(opt, pending):
    """Weights of the pending indices that are known without an update (Gluon's param_dict)."""
    out = {}
    for index in pending:
        param = opt.base.param_dict.get(index) if not isinstance(index, str) else None
        if param is None:
            continue
        try:
            out[index] = param.list_data()[0]
        except Exception:  # pylint: disable=broad-except  # deferred init: match at the update
            continue
    return out


def updater_for(optimizer):
    """The Updater for ``optimizer``: a :class:`MaskedUpdater` for a Masked optimizer or one
    inside a wrapper (``hvd.DistributedOptimizer``), whose states are block-sized either way
    and need their layouts saved and matched; None (MXNet's own) for any other. MXNet's
    ``get_updater`` asks it first (see :func:`masked_opt._mxnet_workarounds.install`)."""
    if find_masked(optimizer) is not None:
        return MaskedUpdater(optimizer)
    return None
