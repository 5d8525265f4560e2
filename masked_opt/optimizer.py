"""The registered ``'masked'`` optimizer: any MXNet optimizer, restricted to part of a parameter.

Path of one update (``Updater`` -> :meth:`Masked.update_multi_precision` -> ``_dispatch``):

1. :meth:`Masked.plan_for` finds each parameter's mask by index -> name (Module's ``idx2name``,
   Gluon's ``param_dict``, or the names carried to a kvstore server) and returns its
   :class:`~masked_opt.update.BlockPlan` for the weight's context (built once, then cached;
   a weight whose shape or array no longer matches is refused). MXNet's Updater hands the
   wrapper a whole step at once (``_WHOLE_STEP``), so every mask is resolved and checked
   before any weight is written.
2. :func:`masked_opt.steps.choose` picks the step strategy of each parameter (dense block,
   pure or native row_sparse, stand-in; see :mod:`masked_opt.steps`), and its ``prepare``
   gathers (or views) the block of the weight, gradient and state; the state exists only for
   the block.
3. ``_dispatch`` makes the very calls the wrapped optimizer (``self.base``) would get from
   MXNet alone -- same order, same multi-tensor groups -- with blocks standing in for masked
   parameters; unmasked parameters pass through untouched.
4. ``Prepared.finish`` blends fractional scales and scatters each block back into its weight
   (and a full-size state, when one was handed over).

The wrapper keeps no optimizer settings of its own: learning rate, ``rescale_grad``, ``wd``,
``idx2name``, ``param_dict``, multipliers and update counts live in the wrapped optimizer, and
the properties below forward them, because Module and Trainer set them on the object they were
given (see :mod:`masked_opt._forwarding`).
"""
import contextlib
import functools

from mxnet import optimizer as mx_opt

from . import server as _server
from ._forwarding import ForwardsToBase
from ._mxnet_workarounds import name_from_callers
from .masks import as_mask, require_floating
from .names import check_mask_keys, key_name, mask_key_for, wrapped_optimizer
from .positions import PositionHistory, stale_plan_error
from .state_shapes import check_master_copy_scalable, check_weight_shaped, is_full_size
from .steps import check_path, choose, updater_calls
from .steps.stand_in import StandIns, calls_apart
from .update import BlockPlan

__all__ = ['Masked']

# What the wrapper reports as its aggregate_num: large, so that MXNet's Updater hands it every
# parameter of a step in one call. All masks are then resolved before any weight is written
# (C8), even when states already exist; the wrapped optimizer still sees its own aggregate_num.
_WHOLE_STEP = 1 << 30


@mx_opt.register
class Masked(ForwardsToBase, mx_opt.Optimizer):
    """Wrap an MXNet optimizer so that it trains only the masked part of some parameters.

    Registered as ``'masked'``: use it by name in ``Module.fit`` and ``gluon.Trainer``, or pass
    an instance. Entries with scale 0 stay bit-for-bit unchanged, weight and optimizer state
    alike, whatever the wrapped optimizer does; entries with scale 1 train exactly as the
    wrapped optimizer would train them as a parameter of their own; a scale in between moves
    an entry by that fraction of the step.

    Parameters
    ----------
    base : str or mxnet.optimizer.Optimizer, default 'sgd'
        The optimizer to wrap: a registered name (``'adam'``, ``'sgd'``, ...) or an instance.
    masks : dict, optional
        Maps a parameter name, a glob pattern (``'*_embedding_weight'``) or a
        ``gluon.Parameter`` to a :class:`~masked_opt.Mask` or to plain data
        ``{'rows': ..., 'cols': ...}``. Parameters without a mask are updated by ``base`` alone.
    **kwargs
        Everything else (``learning_rate``, ``wd``, ``momentum``, ``rescale_grad``,
        ``param_idx2name``, ``param_dict``, ``sym``, ...) goes to the constructor of ``base``
        when it is a name. When ``base`` is an instance, only what Module and Trainer pass
        (``sym``, ``param_idx2name``, ``param_dict``, ``rescale_grad``) is accepted.

    Examples
    --------
    >>> import mxnet as mx
    >>> import masked_opt as mo
    >>> net = mx.gluon.nn.Embedding(10, 4)
    >>> net.initialize()
    >>> trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
    ...                            {'base': 'adam', 'learning_rate': 0.01,
    ...                             'masks': {net.weight: mo.train_rows_from(8)}})
    >>> old = net.weight.data().asnumpy()
    >>> with mx.autograd.record():
    ...     loss = net(mx.nd.array([1, 9])).sum()
    >>> loss.backward()
    >>> trainer.step(2)
    >>> new = net.weight.data().asnumpy()
    >>> bool((new[:8] == old[:8]).all()), bool((new[9] != old[9]).all())
    (True, True)
    """

    # The wrapper's own fields; every other attribute written on it that the wrapped optimizer
    # has is written there (see ForwardsToBase.__setattr__).
    own_fields = frozenset({'base', 'masks', '_index_names', '_plans', '_positions', '_server',
                            '_dist', '_stand_ins', '_step_path'})

    def __init__(self, base='sgd', masks=None, **kwargs):  # pylint: disable=super-init-not-called
        # Optimizer.__init__ is deliberately not called: every setting it would create lives in
        # the wrapped optimizer and is reached through the forwarding properties.
        self.base = wrapped_optimizer(base, kwargs, refuse=Masked)
        self.masks = {}
        for key, value in (masks or {}).items():
            name = key_name(key)
            self.masks[name] = as_mask(value, name=repr(name))
        self._index_names = {}   # index -> parameter name; pickled (servers have no names)
        self._plans = {}         # (index, context) -> BlockPlan or None; never pickled
        self._remember_names()
        check_master_copy_scalable(self.base, self.masks)

    @property
    def idx2name(self):
        """Module's index -> name map, kept in the wrapped optimizer."""
        return self.base.idx2name

    @idx2name.setter
    def idx2name(self, value):
        self.base.idx2name = value
        self._remember_names()

    @property
    def param_dict(self):
        """Gluon's index -> Parameter map, kept in the wrapped optimizer."""
        return self.base.param_dict

    @param_dict.setter
    def param_dict(self, value):
        self.base.param_dict = value
        self._remember_names()

    @property
    def step_path(self):
        """Which step strategies may run: ``'auto'`` (default), ``'pure'`` or ``'native'``.

        ``'auto'`` takes masked_opt's native row_sparse strategy where it gives the pure
        path's bits and the library is loaded; ``'pure'`` never does; ``'native'`` requires it
        for every masked row_sparse update and raises saying why where it does not apply.
        The bits are the same on every path (see :mod:`masked_opt.steps`); tests and
        benchmarks use this to run each path on the same case.
        """
        return self.__dict__.get('_step_path', 'auto')

    @step_path.setter
    def step_path(self, value):
        self.__dict__['_step_path'] = check_path(value)

    @property
    def aggregate_num(self):
        """Parameters per update call: all of them (the wrapped optimizer's own is kept)."""
        return _WHOLE_STEP

    @aggregate_num.setter
    def aggregate_num(self, value):
        self.base.aggregate_num = value

    # ---- names ----
    def _remember_names(self):
        """Record index -> name from idx2name and param_dict, and check every mask key."""
        names = dict(self.base.idx2name)
        names.update({i: p.name for i, p in self.base.param_dict.items()})
        self.learn_names(names)

    # ---- for masked_opt's own modules (server, states, validate, wrappers): the only ways
    # ---- they read or change the wrapper ----
    @property
    def plans(self):
        """``{(index, context): plan or None}`` of every parameter planned so far (a copy)."""
        return dict(self._plans)

    @property
    def index_names(self):
        """``{index: parameter name}`` as far as known now (a copy)."""
        return dict(self._index_names)

    def name_of(self, index):
        """The name of the parameter at ``index``: a name passes through, an index nobody has
        named yet is returned as it is (for messages)."""
        if isinstance(index, str):
            return index
        return self._index_names.get(index, index)

    def learn_names(self, names):
        """Add ``{index: name}`` to the names known, then check every mask key against all
        names known (a key that matches none raises ``ValueError``)."""
        self._index_names.update(names)
        if self._index_names:
            check_mask_keys(self.masks, set(self._index_names.values()))

    def mask_key_for(self, name):
        """The key of the mask for parameter ``name`` (exact name first, then one glob), or
        None when it has none."""
        return mask_key_for(self.masks, name)

    def plan_for(self, index, weight):
        """The :class:`~masked_opt.update.BlockPlan` of the parameter at ``index`` on the
        weight's context, or None (no mask, or one that trains everything).

        Built once per index and context, then cached; a position that now holds another
        parameter, or a weight whose shape no longer matches its plan, is refused.
        """
        key = (index, weight.context)
        if not isinstance(index, str) and weight.stype == 'default':
            # A shifted bucket would give this parameter another one's mask and state.
            positions = self.__dict__.get('_positions')
            if positions is None:
                positions = self._positions = PositionHistory()
            positions.check(key, weight, names=self._index_names, optimizer=self)
        if key in self._plans:
            plan = self._plans[key]
            if plan is not None and plan.shape != weight.shape:
                raise stale_plan_error(self.name_of(index), plan.shape, weight.shape)
            return plan
        if self.on_server:
            # On a dist kvstore server: flat arrays and shards (see server.py).
            plan = self._server.plan(self, index, weight)
        elif not self.masks:
            plan = None
        else:
            # A kvstore keyed by strings (Module with kvstore 'local'/'device' and
            # update_on_kvstore) calls the updater with the parameter name itself.
            name = index if isinstance(index, str) else self._index_names.get(index)
            if name is None:
                # Inside a wrapper (hvd.DistributedOptimizer) Module and Trainer wrote the
                # names on the wrapper: take them from the callers, or raise saying how.
                name = name_from_callers(self, index, Masked)
            mask_key = self.mask_key_for(name)
            plan = None
            if mask_key is not None:
                plan = self.plan_from_mask(name, weight, self.masks[mask_key])
        self._plans[key] = plan
        return plan

    def plan_from_mask(self, name, weight, mask):
        """The plan of ``mask`` resolved for parameter ``name``'s ``weight`` (checked: a
        floating-point dtype, a mask that fits), or None when it trains everything."""
        require_floating(name, weight.dtype)
        rows, cols = mask.resolve(weight.shape, name)
        return self.build_plan(weight, rows, cols, name)

    #: Extra keywords of every :class:`~masked_opt.update.BlockPlan` made (a subclass may set
    #: ``{'slices': False}`` to compare layouts).
    plan_options = {}

    @classmethod
    def build_plan(cls, weight, rows, cols, name=None):
        """The one place plans are made: a :class:`~masked_opt.update.BlockPlan` of ``weight``
        (parameter ``name``, for messages) for row and column scales ``rows``, ``cols`` (None:
        all ones); None when both are None (the wrapped optimizer alone)."""
        if rows is None and cols is None:
            return None
        return BlockPlan(weight.shape, rows, cols, weight.context, weight.dtype, name=name,
                         **cls.plan_options)

    def replace_base(self, base):
        """Wrap ``base`` from now on (a state file's optimizer); plans are made again."""
        self.__dict__['base'] = base     # not through __setattr__: the wrapper itself changes
        self.__dict__['_plans'] = {}

    @contextlib.contextmanager
    def unchanged_on_error(self):
        """Every field of the wrapper as it was before the block, if the block raises."""
        kept = dict(self.__dict__)
        try:
            yield self
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(kept)
            raise

    @property
    def on_server(self):
        """True when this optimizer runs on a dist kvstore server (see server.py)."""
        return self.__dict__.get('_server') is not None

    # ---- states ----
    @_server.loud_in_kvstore
    def create_state(self, index, weight):
        return self._create_state(self.base.create_state, index, weight)

    @_server.loud_in_kvstore
    def create_state_multi_precision(self, index, weight):
        return self._create_state(self.base.create_state_multi_precision, index, weight)

    def _create_state(self, create, index, weight):
        """The wrapped optimizer's state for the trainable block only (C6)."""
        plan = self.plan_for(index, weight)
        if plan is None:
            return create(index, weight)
        if plan.empty:
            return None  # a fully frozen parameter needs no state
        return create(index, plan.gather(weight))

    # ---- updates ----
    @_server.loud_in_kvstore
    def update(self, index, weight, grad, state):
        self._dispatch(index, weight, grad, state, multi_precision=False)

    @_server.loud_in_kvstore
    def update_multi_precision(self, index, weight, grad, state):
        self._dispatch(index, weight, grad, state, multi_precision=True)

    def _dispatch(self, index, weight, grad, state, multi_precision):
        inner = self.base.update_multi_precision if multi_precision else self.base.update
        group = self.base.aggregate_num
        if not isinstance(index, (list, tuple)):
            plan = self.plan_for(index, weight)
            if plan is None:
                inner(index, weight, grad, state)
                return
            step = self._choose(plan, index, weight, grad, state, multi_precision)()
            # With one-element lists when the wrapped optimizer aggregates, as MXNet's
            # Updater calls it: LAMB's single-tensor multi_precision path never updates
            # its float32 master copy in MXNet 1.9.1; its list path does.
            if group > 0:
                inner([index], [step.weight], [step.grad], [step.state])
            else:
                inner(index, step.weight, step.grad, step.state)
            step.finish()
            return
        # A whole step at once (see _WHOLE_STEP; MaskedUpdater hands over every dtype in one
        # call). Resolve every mask and choose every step strategy first, so that a bad mask
        # (or a path that cannot run) raises before any weight is written. Then make the very
        # calls the wrapped optimizer would get from MXNet's Updater alone (updater_calls: same
        # order, same multi-tensor groups) with each masked parameter's block standing in for
        # the parameter. Order and grouping matter: LBSGD reads the lr before counting the
        # update, LARS corrects momentum per call, SGLD draws noise in call order, Nadam's
        # momentum schedule moves at every call.
        plans = [self.plan_for(i, w) for i, w in zip(index, weight, strict=True)]
        for k, plan in enumerate(plans):
            if plan is not None:
                self._check_state(plan, index[k], weight[k], state[k])
        chosen = [self._choose(plans[k], index[k], weight[k], grad[k], state[k], multi_precision)
                  for k in range(len(index))]
        # One exception to "the very calls": SGD's multi-tensor kernels cost a stand-in as much
        # as its largest neighbour, so where no bit can change, stand-ins get a call of their
        # own (calls_apart).
        for group_call in updater_calls(weight, group):
            for steps in calls_apart(self.base, [chosen[k]() for k in group_call]):
                if group > 0:
                    inner([st.index for st in steps], [st.weight for st in steps],
                          [st.grad for st in steps], [st.state for st in steps])
                else:
                    inner(steps[0].index, steps[0].weight, steps[0].grad, steps[0].state)
                for st in steps:
                    st.finish(steps)

    def _check_state(self, plan, index, weight, state):
        """True when ``state`` was made for the whole weight; raise if the mask cannot cut it.

        Remembered per plan for the state object it last saw: the Updater keeps one state
        object per parameter (a tuple or an NDArray, whose shapes never change) and replaces
        it when states are loaded. Walking the state's shapes costs a C call per array, twice
        per parameter per step, which is a visible share of a small sparse step.
        """
        def full_size():
            full = not plan.empty and is_full_size(state, weight.shape, plan.block_shape)
            if full:
                check_weight_shaped(state, weight.shape, plan, self.name_of(index))
            return full
        return plan.remember('state_seen', state, full_size)

    def _choose(self, plan, index, weight, grad, state, multi_precision):
        """The step strategy :func:`~masked_opt.steps.choose` picks for one parameter, as a
        function that prepares what the wrapped optimizer updates (a
        :class:`~masked_opt.steps.base.Prepared`, whose ``finish`` writes the block back)."""
        full_state = plan is not None and self._check_state(plan, index, weight, state)
        stand_ins = self.__dict__.get('_stand_ins')
        if stand_ins is None:
            stand_ins = self._stand_ins = StandIns()
        step = choose(plan, index, weight, grad, self.base, full_state=full_state,
                      multi_precision=multi_precision, stand_ins=stand_ins, path=self.step_path,
                      state=state)
        return functools.partial(step.prepare, index, weight, grad, state, base=self.base,
                                 full_state=full_state, multi_precision=multi_precision)

    # ---- pickling (kvstore servers, Trainer.save_states) ----
    def __getstate__(self):
        state = dict(self.__dict__)
        state['_plans'] = {}  # device arrays are rebuilt on whichever process unpickles
        state.pop('_positions', None)   # what this process's arrays looked like
        state.pop('_stand_ins', None)   # device arrays of this process, made again on use
        state.pop('_server', None)
        if _server.pickling_for_servers():
            state['_dist'] = _server.capture(self)  # names, full shapes: servers see flat keys
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._server = _server.attach(self, state.get('_dist'))

    def __reduce_ex__(self, protocol):
        reduced = super().__reduce_ex__(protocol)
        if _server.pickling_for_servers():
            # A server that cannot import masked_opt must stop, not train without an updater.
            return _server.reduce_for_servers(reduced)
        return reduced
