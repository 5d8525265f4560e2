"""The registered ``'masked'`` optimizer: any MXNet optimizer, restricted to part of a parameter.

Path of one update (``Updater`` -> :meth:`Masked.update_multi_precision` -> ``_dispatch``):

1. :meth:`Masked._plan` finds each parameter's mask by index -> name (Module's ``idx2name``,
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
given (see ``_FORWARDED``).
"""
import fnmatch
import functools

import numpy as np
from mxnet import optimizer as mx_opt

from . import server as _server
from .masks import as_mask
from .positions import PositionHistory, stale_plan_error
from .state_shapes import check_weight_shaped, is_full_size, master_position
from .steps import check_path, choose
from .steps.stand_in import StandIns
from .update import BlockPlan

__all__ = ['Masked']

# Attributes that MXNet's Module, Trainer, Updater and LR schedule read or write on "the
# optimizer". They must reach the wrapped optimizer, which does the arithmetic.
_FORWARDED = ('rescale_grad', 'lr', 'lr_scheduler', 'wd', 'clip_gradient', 'multi_precision',
              'lr_mult', 'wd_mult', 'sym_info', 'num_update', 'begin_num_update',
              '_index_update_count', '_all_index_update_counts')

# The wrapper's own fields; every other attribute written on it that the wrapped optimizer
# has is written there (Masked.__setattr__).
_OWN_FIELDS = frozenset({'base', 'masks', '_index_names', '_plans', '_positions', '_server',
                         '_dist', '_stand_ins', '_step_path'})

# What the wrapper reports as its aggregate_num: large, so that MXNet's Updater hands it every
# parameter of a step in one call. All masks are then resolved before any weight is written
# (C8), even when states already exist; the wrapped optimizer still sees its own aggregate_num.
_WHOLE_STEP = 1 << 30



def _forward(name):
    def get(self):
        return getattr(self.base, name)

    def set_(self, value):
        setattr(self.base, name, value)
    return property(get, set_, doc='Forwarded to the wrapped optimizer (``base.%s``).' % name)


# What Module and Trainer pass to an optimizer's constructor; all a Masked around an instance
# accepts (hyper-parameters belong to the instance's own constructor).
_BASE_INSTANCE_KWARGS = ('sym', 'param_idx2name', 'param_dict', 'rescale_grad')


def _wrapped_optimizer(base, kwargs):
    """The optimizer a Masked wraps: ``base`` created by name with ``kwargs``, or the instance
    given, which then takes only what Module and Trainer pass (see ``Masked``)."""
    if isinstance(base, mx_opt.Optimizer):
        if isinstance(base, Masked):
            raise TypeError("base must be an optimizer other than 'masked'; received a "
                            "Masked optimizer. Pass its .base instead.")
        extra = sorted(set(kwargs) - set(_BASE_INSTANCE_KWARGS))
        if extra:
            raise TypeError('base is an optimizer instance, so hyper-parameters belong to '
                            'its constructor; received %s here. Pass them when creating '
                            'the base optimizer, or pass base by name.' % extra)
        if kwargs.get('sym') is not None:
            sym = kwargs['sym']
            base.sym_info = (sym.attr_dict(), sym.list_arguments())
        if kwargs.get('param_idx2name'):
            base.idx2name = dict(kwargs['param_idx2name'])
        if kwargs.get('param_dict'):
            base.param_dict = kwargs['param_dict']
        if 'rescale_grad' in kwargs:
            base.rescale_grad = kwargs['rescale_grad']
        return base
    if isinstance(base, str):
        if base.lower() == 'masked':
            raise ValueError("base must name an optimizer other than 'masked', e.g. "
                             "'sgd' or 'adam'")
        if base.lower() not in mx_opt.Optimizer.opt_registry:
            raise ValueError("unknown base optimizer %r; expected one of the registered "
                             "names %s" % (base, sorted(
                                 n for n in mx_opt.Optimizer.opt_registry if n != 'masked')))
        return mx_opt.create(base, **kwargs)
    raise TypeError("base must be an optimizer name such as 'adam' or an "
                    "mxnet.optimizer.Optimizer instance, received %s" % type(base).__name__)


@mx_opt.register
class Masked(mx_opt.Optimizer):
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

    def __init__(self, base='sgd', masks=None, **kwargs):  # pylint: disable=super-init-not-called
        # Optimizer.__init__ is deliberately not called: every setting it would create lives in
        # the wrapped optimizer and is reached through the forwarding properties.
        self.base = _wrapped_optimizer(base, kwargs)
        self.masks = {}
        for key, value in (masks or {}).items():
            name = _key_name(key)
            self.masks[name] = as_mask(value, name=repr(name))
        self._index_names = {}   # index -> parameter name; pickled (servers have no names)
        self._plans = {}         # (index, context) -> BlockPlan or None; never pickled
        self._remember_names()
        self._check_fractional_multi_precision()

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

    def __getattr__(self, name):
        # Reads of hyper-parameters the wrapper does not define (momentum, beta1, ...) go to
        # the wrapped optimizer. Only called when normal lookup fails.
        if name.startswith('__') or 'base' not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.base, name)

    def __setattr__(self, name, value):
        # Writes of the wrapped optimizer's hyper-parameters (``trainer.optimizer.momentum =
        # 0.5``, beta1, epsilon, lazy_update, ...) must reach it: it does the arithmetic. Kept
        # on the wrapper: its own fields and whatever the class defines (the forwarding
        # properties run their setters); a name neither knows stays on the wrapper.
        if (name in _OWN_FIELDS or hasattr(type(self), name) or 'base' not in self.__dict__
                or not hasattr(self.base, name)):
            object.__setattr__(self, name, value)
        else:
            setattr(self.base, name, value)

    def _set_current_context(self, device_id):
        self.base._set_current_context(device_id)

    def set_learning_rate(self, lr):
        self.base.set_learning_rate(lr)

    def set_lr_mult(self, args_lr_mult):
        self.base.set_lr_mult(args_lr_mult)

    def set_wd_mult(self, args_wd_mult):
        self.base.set_wd_mult(args_wd_mult)

    # ---- names ----
    def _remember_names(self):
        """Record index -> name from idx2name and param_dict, and check every mask key."""
        self._index_names.update(self.base.idx2name)
        self._index_names.update({i: p.name for i, p in self.base.param_dict.items()})
        if self._index_names:
            self._check_keys(set(self._index_names.values()))

    def _check_keys(self, known):
        for key in self.masks:
            if key not in known and not any(fnmatch.fnmatchcase(n, key) for n in known):
                raise ValueError('mask key %r matches no parameter; known parameter names '
                                 'are %s' % (key, sorted(known)))

    def _mask_name_for(self, name):
        """The key of the mask for parameter ``name``: exact name first, then one glob."""
        if name in self.masks:
            return name
        matches = [k for k in self.masks if fnmatch.fnmatchcase(name, k)]
        if len(matches) > 1:
            raise ValueError('parameter %r matches several mask patterns %s; expected at most '
                             'one. Key it by its exact name to choose.' % (name, matches))
        return matches[0] if matches else None

    def _check_fractional_multi_precision(self):
        if not self.base.multi_precision or master_position(self.base) is not None:
            return
        for key, mask in self.masks.items():
            if any(type(s).__name__ == '_Scales' for s in mask.rows + mask.cols):
                raise TypeError('mask %r has fractional scales and %s uses multi_precision '
                                'with a state layout masked_opt does not know, so the float32 '
                                'master copy cannot be scaled. Use 0/1 masks or '
                                'multi_precision=False.' % (key, type(self.base).__name__))

    # ---- plans: the mask materialised for one parameter on one context ----
    def _plan(self, index, weight):
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
                raise stale_plan_error(self._index_names.get(index, index), plan.shape,
                                       weight.shape)
            return plan
        if self.__dict__.get('_server') is not None:
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
                from .wrappers import name_from_callers
                name = name_from_callers(self, index)
            mask_key = self._mask_name_for(name)
            plan = None
            if mask_key is not None:
                plan = self._build_plan(name, weight, self.masks[mask_key])
        self._plans[key] = plan
        return plan

    def _build_plan(self, name, weight, mask):
        if not np.issubdtype(np.dtype(weight.dtype), np.floating):
            raise TypeError("parameter %r has dtype %s; a mask needs a floating-point weight "
                            "(float16, float32 or float64)" % (name, np.dtype(weight.dtype)))
        rows, cols = mask.resolve(weight.shape, name)
        if rows is None and cols is None:
            return None  # the mask trains everything: the wrapped optimizer alone
        return BlockPlan(weight.shape, rows, cols, weight.context, weight.dtype)

    # ---- states ----
    @_server.loud_in_kvstore
    def create_state(self, index, weight):
        return self._create_state(self.base.create_state, index, weight)

    @_server.loud_in_kvstore
    def create_state_multi_precision(self, index, weight):
        return self._create_state(self.base.create_state_multi_precision, index, weight)

    def _create_state(self, create, index, weight):
        """The wrapped optimizer's state for the trainable block only (C6)."""
        plan = self._plan(index, weight)
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
            plan = self._plan(index, weight)
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
        plans = [self._plan(i, w) for i, w in zip(index, weight, strict=True)]
        for k, plan in enumerate(plans):
            if plan is not None:
                self._check_state(plan, index[k], weight[k], state[k])
        chosen = [self._choose(plans[k], index[k], weight[k], grad[k], state[k], multi_precision)
                  for k in range(len(index))]
        for call in updater_calls(weight, group):
            steps = [chosen[k]() for k in call]
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
                check_weight_shaped(state, weight.shape, plan,
                                    self._index_names.get(index, index))
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
        self._server = _server.attach(self)

    def __reduce_ex__(self, protocol):
        reduced = super().__reduce_ex__(protocol)
        if _server.pickling_for_servers():
            # A server that cannot import masked_opt must stop, not train without an updater.
            return _server.reduce_for_servers(reduced)
        return reduced


def updater_calls(weights, aggregate_num):
    """The calls MXNet 1.9.1's ``Updater`` makes to an optimizer for one list of parameters.

    Positions into ``weights``, one list per call. An optimizer that aggregates
    (``aggregate_num > 0``) gets the parameters grouped by dtype, dtypes in order of first
    appearance, in calls of at most ``aggregate_num``; any other gets them one at a time, in
    order (``Updater.__call__`` in ``mxnet/optimizer/optimizer.py``).

    Examples
    --------
    >>> import mxnet as mx
    >>> from masked_opt.optimizer import updater_calls
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


# Settings that Module, Trainer and the LR schedule set on "the optimizer" reach the wrapped one.
for _name in _FORWARDED:
    setattr(Masked, _name, _forward(_name))
del _name


def _key_name(key):
    if isinstance(key, str):
        return key
    if hasattr(key, 'name') and hasattr(key, 'grad_req'):  # a gluon.Parameter
        return key.name
    raise TypeError('mask keys must be parameter names, glob patterns or gluon Parameters; '
                    'received %s %r' % (type(key).__name__, key))
