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
from .masks import require_floating
from .names import known_params
from .optimizer import Masked

__all__ = ['check_masks', 'check_before_kvstore', 'known_params']


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
    names = set(opt.index_names.values()) or set(params)
    for name in sorted(names & set(params)):
        key = opt.mask_key_for(name)
        if key is None:
            continue
        shape, dtype = params[name]
        require_floating(name, dtype)
        opt.masks[key].resolve(shape, name)


def check_before_kvstore(kvstore, optimizer):
    """What ``KVStore.set_optimizer`` runs first: :func:`check_masks` for a Masked optimizer
    given to a kvstore that is not ``dist_*`` (see
    :func:`masked_opt._mxnet_workarounds.install`)."""
    if isinstance(optimizer, Masked) and 'dist' not in kvstore.type:
        check_masks(optimizer)
