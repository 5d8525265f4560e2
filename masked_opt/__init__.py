"""masked_opt: train only part of an MXNet parameter, exactly.

Importing the package registers the ``'masked'`` optimizer with MXNet, so that
``Module.fit(optimizer='masked', ...)`` and ``gluon.Trainer(params, 'masked', ...)`` find it.

Examples
--------
>>> import masked_opt as mo
>>> opt = mo.Masked(base='sgd', learning_rate=0.1, masks={'emb_weight': mo.train_cols([7])})
>>> opt.learning_rate
0.1
"""
from . import _mxnet_workarounds, convert, states, validate
from ._version import __version__  # noqa: F401
from .convert import convert_embeddings
from .grow import (
                   DEFAULT_INIT,
                   INIT_METHODS,
                   VocabGrowth,
                   grow_dense,
                   grow_embedding,
                   grow_params,
                   grow_table,
                   grow_vocab,
                   init_rows,
                   row_stats,
)
from .masks import (
                   Mask,
                   as_mask,
                   freeze_cols,
                   freeze_rows,
                   scale_cols,
                   scale_rows,
                   train_cols,
                   train_rows,
                   train_rows_from,
)
from .optimizer import Masked
from .state_view import OptimizerState, optimizer_state
from .statefile import load_states, save_states

# MXNet's get_updater gives a Masked optimizer (or a wrapper around one) its MaskedUpdater, a
# local/device kvstore's set_optimizer checks every mask in the caller, and Module.bind refuses
# what a converted lookup cannot do (see masked_opt/_mxnet_workarounds.py for why).
_mxnet_workarounds.install(validate.check_before_kvstore, states.updater_for, convert.check_bind)

__all__ = ['Masked', 'Mask', 'as_mask', 'train_rows_from', 'train_rows', 'freeze_rows',
           'scale_rows', 'train_cols', 'freeze_cols', 'scale_cols',
           'grow_table', 'grow_params', 'grow_embedding', 'grow_dense', 'grow_vocab', 'init_rows',
           'row_stats',
           'VocabGrowth', 'INIT_METHODS', 'DEFAULT_INIT', 'optimizer_state', 'OptimizerState',
           'convert_embeddings', 'save_states', 'load_states']
