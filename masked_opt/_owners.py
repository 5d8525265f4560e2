"""Where a Gluon Trainer or a Module keeps its optimizer states: its updaters, by index.

MXNet 1.9.1 has no public accessor for them. ``Trainer.save_states`` and
``Module.save_optimizer_states`` read these private fields themselves (``Trainer._updaters``
or, with ``update_on_kvstore``, the kvstore's ``_updater``; ``Module._updater``), and
:class:`StateOwner` reads them the same way, in this one place.
"""
import mxnet as mx

from . import plain_optimizer as _plain
from .optimizer import Masked
from .wrappers import find_masked

__all__ = ['StateOwner']


class StateOwner:
    """The updaters of a Gluon Trainer or a Module, its optimizer, and its parameters by index.

    Attributes
    ----------
    kind : str
        ``'Trainer'`` or ``'Module'`` (for messages).
    updaters : list of mxnet.optimizer.Updater
        Every updater holding states: one per device, or the kvstore's one.
    optimizer : mxnet.optimizer.Optimizer
        The optimizer they update with; ``base`` is the one a :class:`~masked_opt.Masked`
        wraps, or ``optimizer`` itself when it is not masked.
    names : dict
        ``{index: parameter name}`` for every index (or name) states are kept under.
    weight : callable
        ``weight(index)``: the parameter's weight on the first device, None before a Gluon
        parameter's deferred initialisation.

    Examples
    --------
    >>> import mxnet as mx
    >>> net = mx.gluon.nn.Dense(2, in_units=3, prefix='fc_')
    >>> net.initialize()
    >>> owner = StateOwner(mx.gluon.Trainer(net.collect_params(), 'sgd'))
    >>> owner.names, len(owner.updaters), owner.weight(0).shape
    ({0: 'fc_bias', 1: 'fc_weight'}, 1, (2,))
    """

    def __init__(self, obj):
        self.kind = type(obj).__name__
        if isinstance(obj, mx.gluon.Trainer):   # mx.gluon at call time: a kvstore server
            # imports masked_opt while mxnet is still importing, before mx.gluon exists
            self._gluon(obj)
        elif type(obj) is mx.mod.Module:
            self._module(obj)
        else:
            raise TypeError('expected an mxnet.gluon.Trainer or an mxnet.mod.Module, received %s'
                            % type(obj).__name__)
        self.optimizer = self.updaters[0].optimizer
        if isinstance(self.optimizer, Masked):
            self.base = self.optimizer.base
        elif find_masked(self.optimizer) is not None:
            raise TypeError('the %s optimizer is a %s around a masked one; state files without '
                            'pickle hold a masked or a plain optimizer, not a wrapper: %s'
                            % (self.kind, type(self.optimizer).__name__, _plain.PICKLE_ROUTE))
        else:
            self.base = self.optimizer

    def _kvstore_updater(self, kv):
        if 'dist' in kv.type:
            raise ValueError('the optimizer states of a %s kvstore live on its servers and cannot '
                             'be saved or loaded from here; train with update_on_kvstore=False '
                             'or a local kvstore' % kv.type)
        return kv._updater

    def _gluon(self, trainer):
        # What Trainer.save_states/load_states do first: the kvstore decides where states live.
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        if trainer._update_on_kvstore:
            self.updaters = [self._kvstore_updater(trainer._kvstore)]
        else:
            self.updaters = list(trainer._updaters)
        params = list(trainer._params)
        self.names = {i: p.name for i, p in enumerate(params)}

        def weight(index):
            try:
                return params[index].list_data()[0]
            except Exception:  # pylint: disable=broad-except  # deferred init: no weight yet
                return None
        self.weight = weight

    def _module(self, mod):
        if not mod.optimizer_initialized:
            raise ValueError('the Module has no optimizer yet: call mod.init_optimizer(...) (or '
                             'bind, init_params and init_optimizer) before saving or loading its '
                             'optimizer states')
        if mod._update_on_kvstore:
            self.updaters = [self._kvstore_updater(mod._kvstore)]
        else:
            self.updaters = [mod._updater]
        group = mod._exec_group
        n_dev = len(mod._context)
        # Module keys states by index * devices + device, or by name on a kvstore.
        self.names = {i * n_dev + k: n for i, n in enumerate(group.param_names)
                      for k in range(n_dev)}
        self.names.update({n: n for n in group.param_names})
        arrays = dict(zip(group.param_names, group.param_arrays, strict=True))
        self.weight = lambda index: arrays[self.names[index]][0]
