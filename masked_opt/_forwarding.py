"""The masked optimizer keeps no settings of its own: reads and writes reach the one it wraps.

MXNet's Module, Trainer, Updater and LR schedule read and write settings on "the optimizer"
they were given (``lr``, ``rescale_grad``, ``wd``, multipliers, update counts, ...), and users
set hyper-parameters on it (``trainer.optimizer.momentum = 0.5``). The wrapped optimizer does
the arithmetic, so every such setting must live there. :class:`ForwardsToBase` forwards them to
``self.base``.

>>> import masked_opt as mo
>>> opt = mo.Masked(base='sgd', learning_rate=0.1, momentum=0.9)
>>> opt.momentum = 0.5; opt.rescale_grad = 0.25
>>> opt.base.momentum, opt.base.rescale_grad
(0.5, 0.25)
"""
__all__ = ['FORWARDED', 'ForwardsToBase']

# Attributes that MXNet's Module, Trainer, Updater and LR schedule read or write on "the
# optimizer". They must reach the wrapped optimizer, which does the arithmetic.
FORWARDED = ('rescale_grad', 'lr', 'lr_scheduler', 'wd', 'clip_gradient', 'multi_precision',
             'lr_mult', 'wd_mult', 'sym_info', 'num_update', 'begin_num_update',
             '_index_update_count', '_all_index_update_counts')


def _forward(name):
    def get(self):
        return getattr(self.base, name)

    def set_(self, value):
        setattr(self.base, name, value)
    return property(get, set_, doc='Forwarded to the wrapped optimizer (``base.%s``).' % name)


class ForwardsToBase:
    """Mixin: settings of the optimizer in ``self.base`` read and written through this one.

    The class using it names its own fields in ``own_fields``; they stay on it.
    """

    own_fields = frozenset()

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
        if (name in self.own_fields or hasattr(type(self), name) or 'base' not in self.__dict__
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


for _name in FORWARDED:
    setattr(ForwardsToBase, _name, _forward(_name))
del _name
