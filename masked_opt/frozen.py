"""Former home of the stand-ins, now :mod:`masked_opt.steps.stand_in`.

Kept so that an optimizer pickled by an earlier version (whose ``Trainer.save_states`` or
``Module.save_optimizer_states`` file names ``masked_opt.frozen.StandIns``) still loads; the
stand-ins unpickle empty either way.

>>> from masked_opt.frozen import StandIns
>>> StandIns.__module__
'masked_opt.steps.stand_in'
"""
from .steps.stand_in import StandIns  # noqa: F401

__all__ = []
