"""Where masked_opt works around MXNet 1.9.1: the call-stack lookups and the two patches.

Each function says what MXNet 1.9.1 does that forces it. MXNet hands an optimizer its
parameters by position and calls it from places that pass nothing else, so a few facts can only
be read off the objects up the call stack (``self`` of the caller frames): the Module or Trainer
that holds the parameters (:func:`caller_params`), whether the kvstore is pickling the optimizer
for its servers (:func:`pickling_for_servers`), whether MXNet's kvstore updater callback is
running (:func:`in_kvstore_updater`), a server's rank (:func:`server_rank`) and the wrapper
that holds parameter names (:func:`name_from_callers`). MXNet 1.9.1 also has no public way to
reach the Updater of a Trainer or Module: :func:`updaters_of` reads their private attributes.

Three functions of MXNet are replaced, by :func:`install` only (``import masked_opt`` calls
it once; importing this module changes nothing, so the update path, which uses the lookups,
patches nothing): ``KVStore.set_optimizer`` (masks checked in the caller before a kvstore runs
updates where errors are swallowed), ``mxnet.optimizer.get_updater`` (the Updater that keeps
state layouts) and ``Module.bind`` (:func:`guard_module_bind`). The first two keep the original
reachable as ``_masked_opt_original``; installing twice wraps the original once.

>>> from masked_opt._mxnet_workarounds import caller_params, in_kvstore_updater
>>> caller_params(), in_kvstore_updater()     # no Module, Trainer or kvstore up the stack
({}, False)
"""
import functools
import os
import sys
from collections import namedtuple

from mxnet import optimizer as mx_opt

__all__ = ['Param', 'caller_params', 'pickling_for_servers', 'in_kvstore_updater',
           'server_rank', 'name_from_callers', 'held_optimizers', 'first_held', 'take_names',
           'updaters_of', 'guard_module_bind', 'install']

# How far to look: attribute levels from a wrapper to the masked optimizer, caller frames.
_MAX_DEPTH = 4
_MAX_FRAMES = 64

Param = namedtuple('Param', 'shape dtype stype grad_stype')
Param.__doc__ = """A parameter as its Module or Trainer holds it: ``shape`` (a Trainer's may be
None or hold 0 while initialisation is deferred), ``dtype``, ``stype`` and ``grad_stype``."""


def _callers(skip=0):
    """``(frame, self)`` of every frame up the call stack (``self`` None where a frame has
    none), innermost first, from the caller of the function that iterates (and ``skip`` more
    frames up)."""
    frame = sys._getframe(2 + skip)
    while frame is not None:
        yield frame, frame.f_locals.get('self')
        frame = frame.f_back


def caller_params(grad_stypes=False):
    """``{name: Param}`` from the Module or Trainer up the call stack, else ``{}``.

    MXNet 1.9.1's Module gives the optimizer names (``idx2name``) but no shapes, and calls it
    (``init_optimizer``, the kvstore's pickling, the first updates) with nothing else; the
    shapes are on the Module (``_arg_params``, once ``init_params`` ran). A Trainer gives
    ``param_dict`` only to an optimizer it creates, and keeps its Parameters in ``_params``.
    The gradients' storage types of a Module (``grad_stypes=True``) are on its executors.
    Module and Trainer are looked up in ``sys.modules``, not imported: where ``mxnet.module``
    or ``mxnet.gluon`` is not loaded (on a kvstore server mxnet itself may still be importing)
    neither can be on the stack.
    """
    module_cls = getattr(sys.modules.get('mxnet.module.module'), 'Module', ())
    trainer_cls = getattr(sys.modules.get('mxnet.gluon.trainer'), 'Trainer', ())
    for _, owner in _callers():
        if isinstance(owner, module_cls) and getattr(owner, '_arg_params', None):
            grads = {}
            if grad_stypes and owner._exec_group:
                grads = owner._exec_group.execs[0].grad_dict
            return {name: Param(tuple(arr.shape), arr.dtype, arr.stype,
                                grads[name].stype if name in grads else 'default')
                    for name, arr in owner._arg_params.items()}
        if isinstance(owner, trainer_cls):
            return {p.name: Param(p.shape, p.dtype, p._stype, p._grad_stype)
                    for p in owner._params}
    return {}


def pickling_for_servers():
    """True while ``KVStore.set_optimizer`` of a dist kvstore is pickling on a worker.

    MXNet 1.9.1 pickles the optimizer for the servers inside ``set_optimizer`` and passes the
    pickle nothing that says so; ``Trainer.save_states`` and other pickles must stay plain.
    The frame of whatever ``KVStore.set_optimizer`` is now (:func:`install` keeps the name
    ``self`` for the kvstore in its replacement) is the one reliable signal.
    """
    from mxnet.kvstore.kvstore import KVStore
    code = KVStore.set_optimizer.__code__
    for frame, owner in _callers():
        if frame.f_code is code:
            return owner is not None and 'dist' in owner.type
    return False


def in_kvstore_updater():
    """True when called from inside MXNet's kvstore updater callback (``updater_handle``).

    That callback is entered from C++ through ctypes, which prints and discards any Python
    exception raised in it: on a server, and on a worker's local kvstore with
    ``update_on_kvstore``, the update is skipped and training goes on.
    """
    suffix = os.path.join('kvstore', 'kvstore.py')
    for frame, _ in _callers():
        code = frame.f_code
        if code.co_name == 'updater_handle' and code.co_filename.endswith(suffix):
            return True
    return False


def server_rank():
    """This server's ps-lite rank, from MXNet's ``KVStoreServer`` up the call stack, or None.

    MXNet 1.9.1 unpickles and runs the optimizer from inside ``KVStoreServer.run`` and tells it
    nothing else; the rank decides which part of a split array this server holds and is not the
    launch order.
    """
    for _, owner in _callers():
        if type(owner).__name__ == 'KVStoreServer' and hasattr(owner, 'kvstore'):
            return owner.kvstore.rank
    return None


# ---- parameter names held by a wrapper (see masked_opt.wrappers) ----

def held_optimizers(opt):
    """Optimizers held in ``opt``'s attributes (directly, or in a list/tuple/dict)."""
    values = list(getattr(opt, '__dict__', {}).values())
    out = []
    for value in values:
        if isinstance(value, mx_opt.Optimizer):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, mx_opt.Optimizer))
    return out


def first_held(optimizer, cls):
    """The first instance of ``cls`` that ``optimizer`` is or holds (breadth first, a few
    wrappers deep), or None."""
    seen = set()
    level = [optimizer]
    for _ in range(_MAX_DEPTH + 1):
        nxt = []
        for opt in level:
            if id(opt) in seen:
                continue
            seen.add(id(opt))
            if isinstance(opt, cls):
                return opt
            nxt.extend(held_optimizers(opt))
        level = nxt
    return None


def name_from_callers(masked, index, masked_cls):
    """The name of ``index``, from the optimizers and Updater that called ``masked``.

    MXNet 1.9.1's Module and Trainer name parameters by writing ``idx2name`` / ``param_dict``
    on the optimizer they were given; a wrapper around the masked optimizer (an instance of
    ``masked_cls``) such as ``hvd.DistributedOptimizer`` keeps those writes. Called by the
    masked optimizer for an index it cannot name; raises ``ValueError`` saying how to hand
    the names over when none of its callers knows the name.
    """
    holders = _wrappers_on_stack(masked, masked_cls)
    if holders:
        take_names(masked, holders)
    name = masked.index_names.get(index)
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


def _wrappers_on_stack(masked, masked_cls):
    """Optimizers wrapping ``masked`` that are on the call stack, innermost first."""
    found, seen = [], set()
    for k, (_, owner) in enumerate(_callers(skip=1)):   # from name_from_callers' caller
        if k >= _MAX_FRAMES:
            break
        candidates = [owner]
        if isinstance(owner, mx_opt.Updater):
            candidates = [owner.optimizer]
        for cand in candidates:
            if (isinstance(cand, mx_opt.Optimizer) and id(cand) not in seen
                    and cand is not masked and first_held(cand, masked_cls) is masked):
                seen.add(id(cand))
                found.append(cand)
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


def take_names(masked, holders):
    """Copy the names held by ``holders`` into ``masked``; True when any were found."""
    known_now = masked.index_names
    found = {}
    for holder in holders:
        for index, name in _names_held(holder).items():
            known = found.get(index, known_now.get(index))
            if known is not None and known != name:
                raise ValueError(
                    'parameter index %r is named %r by %s but %r by %s: two different '
                    'index -> name maps. Give Module or the Trainer one optimizer, and hand '
                    'the masked optimizer no names of its own.'
                    % (index, name, type(holder).__name__, known,
                       'the masked optimizer' if index in known_now else 'another wrapper'))
            found[index] = name
    if not found:
        return False
    masked.learn_names(found)
    return True


def updaters_of(owner):
    """The updaters (one per device) holding ``owner``'s states.

    MXNet 1.9.1 has no public accessor for them: a Trainer keeps them in ``_updaters``, a
    Module in ``_updater``, and with ``update_on_kvstore`` on a local kvstore both hand the
    updater to the kvstore (``_updater``). This is the one place that reads those attributes
    (for :func:`masked_opt.optimizer_state`).
    """
    if isinstance(owner, mx_opt.Updater):
        return [owner]
    kvstore = getattr(owner, '_kvstore', None)
    on_kvstore = getattr(owner, '_update_on_kvstore', False)
    if kvstore is not None and on_kvstore:
        if 'dist' in kvstore.type:
            raise ValueError('optimizer_state: with update_on_kvstore on a %r kvstore the '
                             'states live on the servers; read them there, or train with '
                             'update_on_kvstore=False' % kvstore.type)
        found = getattr(kvstore, '_updater', None)
        return [found] if found is not None else []
    if hasattr(owner, '_updaters'):                 # gluon.Trainer
        return list(owner._updaters or [])
    if hasattr(owner, '_updater'):                  # mx.mod.Module
        return [owner._updater] if owner._updater is not None else []
    raise TypeError('optimizer_state: expected a gluon.Trainer, a Module or an '
                    'mxnet.optimizer.Updater, received %s' % type(owner).__name__)


# ---- the three patches ----

def guard_module_bind(check_bind):
    """Make ``Module.bind`` call ``check_bind(symbol, grad_req, inputs_need_grad)`` first (once
    per process).

    masked_opt's native lookup (``convert_embeddings``) is an operator of an extension library,
    and MXNet 1.9.1 hands such an operator no ``req``: it cannot refuse ``grad_req='add'`` or
    ``inputs_need_grad`` as MXNet's Embedding does, so ``Module.bind`` refuses them for a
    converted graph. Run by :func:`install` when MXNet's Module class exists, else by the first
    conversion: a kvstore server imports masked_opt while mxnet itself is still importing.
    """
    module = getattr(sys.modules.get('mxnet.module'), 'Module', None)
    bind = getattr(module, 'bind', None)
    if bind is None or getattr(bind, '_masked_opt_lookup', False):
        return

    @functools.wraps(bind)
    def checked_bind(self, data_shapes, label_shapes=None, for_training=True,
                     inputs_need_grad=False, force_rebind=False, shared_module=None,
                     grad_req='write'):
        if for_training:
            check_bind(self.symbol, grad_req, inputs_need_grad)
        return bind(self, data_shapes, label_shapes, for_training, inputs_need_grad,
                    force_rebind, shared_module, grad_req)
    checked_bind._masked_opt_lookup = True
    module.bind = checked_bind


def install(check_before_kvstore, updater_for, check_bind):
    """Replace ``KVStore.set_optimizer``, ``mxnet.optimizer.get_updater`` and (where MXNet's
    Module is loaded) ``Module.bind``, once each.

    ``check_before_kvstore(kvstore, optimizer)`` runs before MXNet's ``set_optimizer``:
    with ``update_on_kvstore`` on a local or device kvstore, MXNet 1.9.1 runs the optimizer
    inside a C++ callback whose Python exceptions ctypes prints and discards, so the masks
    are checked here, where an error reaches the caller. ``updater_for(optimizer)`` returns
    the Updater for an optimizer, or None for MXNet's own: MXNet 1.9.1's Updater splits an
    aggregating optimizer's call by dtype and saves states without their layouts.
    """
    from mxnet.kvstore.kvstore import KVStore
    original_set = getattr(KVStore.set_optimizer, '_masked_opt_original', KVStore.set_optimizer)

    # Keep the parameter name `self`: pickling_for_servers finds the kvstore in the frame of
    # whatever KVStore.set_optimizer is.
    @functools.wraps(original_set)
    def set_optimizer(self, optimizer):
        check_before_kvstore(self, optimizer)
        return original_set(self, optimizer)
    set_optimizer._masked_opt_original = original_set
    KVStore.set_optimizer = set_optimizer

    original_get = getattr(mx_opt.get_updater, '_masked_opt_original', mx_opt.get_updater)

    def get_updater(optimizer):
        updater = updater_for(optimizer)
        return original_get(optimizer) if updater is None else updater
    get_updater.__doc__ = original_get.__doc__
    get_updater._masked_opt_original = original_get
    mx_opt.get_updater = get_updater
    mx_opt.optimizer.get_updater = get_updater
    guard_module_bind(check_bind)
