"""Mask keys and parameter names: which mask a parameter gets, and the optimizer a Masked wraps.

A mask is keyed by a parameter's name, by a glob pattern, or by a ``gluon.Parameter``; the
names come from Module (``idx2name``), Gluon (``param_dict``), the names carried to a kvstore
server, or a wrapper (:mod:`masked_opt.wrappers`). An exact name wins over patterns; a name
that two patterns match is an error, and so is a key that matches no known parameter.

>>> from masked_opt.names import mask_key_for, check_mask_keys
>>> masks = {'*_embedding_weight': 'rows', 'user_embedding_weight': 'cols'}
>>> mask_key_for(masks, 'user_embedding_weight'), mask_key_for(masks, 'book_embedding_weight')
('user_embedding_weight', '*_embedding_weight')
>>> mask_key_for(masks, 'dense_weight') is None
True
>>> check_mask_keys({'emb_wieght': 'rows'}, {'emb_weight'})
Traceback (most recent call last):
...
ValueError: mask key 'emb_wieght' matches no parameter; known parameter names are ['emb_weight']
"""
import fnmatch

from mxnet import optimizer as mx_opt

from ._mxnet_workarounds import caller_params

__all__ = ['key_name', 'mask_key_for', 'check_mask_keys', 'known_params', 'wrapped_optimizer']

# What Module and Trainer pass to an optimizer's constructor; all a Masked around an instance
# accepts (hyper-parameters belong to the instance's own constructor).
_BASE_INSTANCE_KWARGS = ('sym', 'param_idx2name', 'param_dict', 'rescale_grad')


def key_name(key):
    """The name a mask key stands for: the key itself, or a ``gluon.Parameter``'s name."""
    if isinstance(key, str):
        return key
    if hasattr(key, 'name') and hasattr(key, 'grad_req'):  # a gluon.Parameter
        return key.name
    raise TypeError('mask keys must be parameter names, glob patterns or gluon Parameters; '
                    'received %s %r' % (type(key).__name__, key))


def mask_key_for(masks, name):
    """The key of the mask for parameter ``name`` in ``masks``: exact name first, then one
    glob; None when no key matches."""
    if name in masks:
        return name
    matches = [k for k in masks if fnmatch.fnmatchcase(name, k)]
    if len(matches) > 1:
        raise ValueError('parameter %r matches several mask patterns %s; expected at most '
                         'one. Key it by its exact name to choose.' % (name, matches))
    return matches[0] if matches else None


def check_mask_keys(masks, known):
    """Raise unless every key of ``masks`` names or matches one of the names ``known``."""
    for key in masks:
        if key not in known and not any(fnmatch.fnmatchcase(n, key) for n in known):
            raise ValueError('mask key %r matches no parameter; known parameter names '
                             'are %s' % (key, sorted(known)))


def known_params(opt):
    """``{name: (shape, dtype)}`` of the parameters whose full shape is known now.

    Gluon's ``param_dict`` (initialised Parameters), else the Module or Trainer up the call
    stack (Module hands the optimizer names only; the shapes are on the Module; see
    :func:`masked_opt._mxnet_workarounds.caller_params`).

    Examples
    --------
    >>> import mxnet as mx, masked_opt as mo
    >>> w = mx.gluon.Parameter('w', shape=(10, 8))
    >>> w.initialize()
    >>> known_params(mo.Masked(base='sgd', param_dict={0: w}))
    {'w': ((10, 8), <class 'numpy.float32'>)}
    """
    out = {p.name: (tuple(p.shape), p.dtype) for p in opt.base.param_dict.values()
           if _known(p.shape)}
    if out:
        return out
    return {name: (tuple(p.shape), p.dtype) for name, p in caller_params().items()
            if _known(p.shape)}


def _known(shape):
    return shape is not None and all(int(n) > 0 for n in shape)


def wrapped_optimizer(base, kwargs, refuse):
    """The optimizer a Masked wraps: ``base`` created by name with ``kwargs``, or the instance
    given, which then takes only what Module and Trainer pass (see ``Masked``). An instance of
    ``refuse`` (the Masked class) is refused."""
    if isinstance(base, mx_opt.Optimizer):
        if isinstance(base, refuse):
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
