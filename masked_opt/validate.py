"""Every mask checked against its parameter in the user's process, before a kvstore runs updates.

With ``update_on_kvstore`` on a ``'local'`` or ``'device'`` kvstore -- Module and
``gluon.Trainer`` on several devices by default, and always for row_sparse weights such as
``gluon.contrib.nn.SparseEmbedding`` -- MXNet runs the optimizer inside a C++ callback. ctypes
prints and discards an exception raised there and training would go on without the update, so
:func:`masked_opt.server.loud_in_kvstore` ends the process instead: no ``try``/``except`` can
catch that, and a notebook kernel dies.

The parameters' shapes are known before that callback first runs: ``KVStore.set_optimizer``
is called by ``Module.init_optimizer`` (after ``bind`` and ``init_params``) and by the Trainer's
first ``step``/``update``/``allreduce_grads`` (its Parameters are initialised by then, deferred
initialisation included). Importing masked_opt makes ``set_optimizer`` check every mask there,
with the same checks as a step (:meth:`masked_opt.Mask.resolve`, a floating-point dtype), so a
mask that does not fit raises ``ValueError``/``TypeError`` in the caller and nothing is written.

A dist kvstore is checked while the optimizer is pickled for its servers
(:func:`masked_opt.server.capture`); on a single device without a kvstore, the first step
raises as usual.
"""
import functools
import sys

from mxnet.kvstore.kvstore import KVStore

from .masks import require_floating
from .optimizer import Masked

__all__ = ['check_masks', 'known_params']


def check_masks(opt):
    """Check every mask of ``opt`` against the parameters whose shapes are known now.

    Parameters
    ----------
    opt : masked_opt.Masked

    Raises
    ------
    ValueError
        A mask that does not fit its parameter (a length, an index out of range, a column mask
        on a 1-D parameter, several glob patterns for one name); the message names it.
    TypeError
        A mask on a parameter whose dtype is not floating-point.

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> from masked_opt.validate import check_masks
    >>> w = mx.gluon.Parameter('w', shape=(10, 8))
    >>> w.initialize()
    >>> opt = mo.Masked(base='sgd', masks={'w': mo.train_cols([8])}, param_dict={0: w})
    >>> try:  # doctest: +ELLIPSIS
    ...     check_masks(opt)
    ... except ValueError as err:
    ...     print(err)
    parameter 'w' cols: train_cols index 8 is out of range; expected indices in [0, 8) ...
    """
    params = known_params(opt)
    names = set(opt._index_names.values()) or set(params)
    for name in sorted(names & set(params)):
        key = opt._mask_name_for(name)
        if key is None:
            continue
        shape, dtype = params[name]
        require_floating(name, dtype)
        opt.masks[key].resolve(shape, name)


def known_params(opt):
    """``{name: (shape, dtype)}`` of the parameters whose full shape is known now.

    Gluon's ``param_dict`` (initialised Parameters), else the Module or Trainer up the call
    stack (Module hands the optimizer names only; the shapes are on the Module).
    """
    out = {p.name: (tuple(p.shape), p.dtype) for p in opt.base.param_dict.values()
           if _known(p.shape)}
    if out:
        return out
    # Looked up, not imported: where mxnet.module or mxnet.gluon is not loaded yet (on a kvstore
    # server, mxnet itself may still be importing) no Module or Trainer can be on the stack.
    Module = getattr(sys.modules.get('mxnet.module.module'), 'Module', ())
    Trainer = getattr(sys.modules.get('mxnet.gluon.trainer'), 'Trainer', ())
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get('self')
        if isinstance(owner, Module) and getattr(owner, '_arg_params', None):
            return {name: (tuple(arr.shape), arr.dtype)
                    for name, arr in owner._arg_params.items()}
        if isinstance(owner, Trainer):
            return {p.name: (tuple(p.shape), p.dtype) for p in owner._params
                    if _known(p.shape)}
        frame = frame.f_back
    return {}


def _known(shape):
    return shape is not None and all(int(n) > 0 for n in shape)


def _install():
    original = getattr(KVStore.set_optimizer, '_masked_opt_original', KVStore.set_optimizer)

    # Keep the parameter name `self`: server.pickling_for_servers finds the kvstore in the
    # frame of whatever KVStore.set_optimizer is.
    @functools.wraps(original)
    def set_optimizer(self, optimizer):
        if isinstance(optimizer, Masked) and 'dist' not in self.type:
            check_masks(optimizer)
        return original(self, optimizer)
    set_optimizer._masked_opt_original = original
    KVStore.set_optimizer = set_optimizer


_install()
