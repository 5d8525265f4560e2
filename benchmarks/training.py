"""Build the forum's model trained by each method, as Module.fit would train it.

A *method* is one way to train the network: plain unmasked training, masked_opt with new rows
(1% trainable) or a latent split (1 of 8 columns), workaround (A) split embedding, workaround
(B) one_hot; each with dense or row_sparse (``sparse_grad=True``) Embedding gradients.

Methods that share a symbol's parameter names share their weight (and dense gradient) arrays
through Module's ``shared_module`` (as bucketing does), so that one process can hold every
method of a configuration side by side; each keeps its own optimizer and state.
"""
import itertools

import mxnet as mx

import masked_opt as mo

from .models import DATA_NAMES, LABEL_NAMES, batches, forum_mf, one_hot_mf, split_embedding_mf

# name -> (family, sparse_grad, description). A family is one symbol: its methods share arrays.
METHODS = {
    'plain': ('forum', False, 'plain unmasked, dense grad'),
    'rows': ('forum', False, 'masked new rows (1%), dense grad'),
    'cols': ('forum', False, 'masked latent split (1/8 cols), dense grad'),
    'plain_sparse': ('forum', True, 'plain unmasked, sparse grad'),
    'rows_sparse': ('forum', True, 'masked new rows (1%), sparse grad'),
    'cols_sparse': ('forum', True, 'masked latent split (1/8 cols), sparse grad'),
    # The two masked dense methods again on the pure dense block path (masked_opt's own
    # in-place strategy off): what the dense paths ran before it, side by side with them.
    'cols_pure': ('forum', False, 'masked latent split, dense grad, pure dense path'),
    'rows_pure': ('forum', False, 'masked new rows, dense grad, pure dense path'),
    'split': ('split', False, '(A) split embedding, dense grad'),
    'split_sparse': ('split', True, '(A) split embedding, sparse grad'),
    'onehot': ('onehot', False, '(B) one_hot + FullyConnected'),
}

# Settings of the two optimizers benchmarked. Adam runs with wd = 0: MXNet's coupled L2 drives
# a dense-gradient table into float32 denormals within ~2000 steps and slows every method that
# updates absent rows 10-40x (anchors_measured.md, "A trap for Adam benchmarks").
OPTIMIZERS = {
    'sgd': {'learning_rate': 0.01, 'momentum': 0.9, 'wd': 1e-4},
    'adam': {'learning_rate': 1e-3, 'wd': 0.0},
}


def n_old(n):
    """Rows that stay frozen in the new-rows setting: all but the last 1%.

    Examples
    --------
    >>> from benchmarks.training import n_old
    >>> n_old(100_000)
    99000
    """
    return n - max(1, n // 100)


def n_train_cols(dim):
    """Trainable latent columns in the latent-split setting: 1 of every 8.

    Examples
    --------
    >>> from benchmarks.training import n_train_cols
    >>> n_train_cols(8), n_train_cols(64)
    (1, 8)
    """
    return max(1, dim // 8)


def masks_for(method, n, dim):
    """The masks of a masked method (None for the others).

    Examples
    --------
    >>> from benchmarks.training import masks_for
    >>> list(masks_for('cols_sparse', 100, 8))
    ['member_embedding_weight']
    """
    kind = method.split('_')[0]
    if kind == 'rows':
        return {'book_embedding_weight': mo.train_rows_from(n_old(n))}
    if kind == 'cols':
        return {'member_embedding_weight': mo.train_cols(range(dim - n_train_cols(dim), dim))}
    return None


def _symbol(method, n, dim):
    family, sparse, _ = METHODS[method]
    if family == 'forum':
        return forum_mf(n, n, dim, sparse_grad=sparse), ()
    if family == 'split':
        return (split_embedding_mf(n, n, dim, n_train_cols(dim), sparse_grad=sparse),
                ('member_embedding1_weight',))
    return one_hot_mf(n, n, n_old(n), dim), ('book_old_weight',)


def build(methods, opt, n, dim, batch=1024, n_batches=8, seed=0):
    """One Module per method, ready to train; returns name -> one-step callable.

    Parameters
    ----------
    methods : list of str
        Keys of :data:`METHODS`.
    opt : str
        Key of :data:`OPTIMIZERS`.
    n : int
        Rows of each table (``n_users = n_items = n``, as in the forum's benchmark).
    dim : int
        Latent dimension.
    batch : int
        Batch size.

    Examples
    --------
    >>> from benchmarks.training import build
    >>> steps = build(['plain', 'rows_sparse'], 'sgd', n=1000, dim=8, batch=64)
    >>> steps['rows_sparse']()
    """
    data = batches(n, n, batch, n_batches, seed=seed)
    shapes = [(name, (batch,)) for name in DATA_NAMES]
    label_shapes = [(name, (batch,)) for name in LABEL_NAMES]
    owners = {}   # family -> the module that owns the family's arrays
    mods = {}
    for method in methods:
        family = METHODS[method][0]
        sym, fixed = _symbol(method, n, dim)
        mod = mx.mod.Module(sym, data_names=DATA_NAMES, label_names=LABEL_NAMES,
                            fixed_param_names=list(fixed))
        # The forum family shares across dense and sparse symbols (same names and shapes);
        # (A) dense and sparse share with each other.
        owner = owners.get('forum' if family == 'forum' else family)
        mod.bind(shapes, label_shapes, shared_module=owner)
        if owner is None:
            mod.init_params(mx.init.Uniform(0.1))
            owners[family] = mod
        mods[method] = mod
    for method, mod in mods.items():
        masks = masks_for(method, n, dim)
        params = dict(OPTIMIZERS[opt])
        if masks is None:
            mod.init_optimizer(kvstore='local', optimizer=opt, optimizer_params=params)
        else:
            mod.init_optimizer(kvstore='local', optimizer='masked',
                               optimizer_params=dict(params, base=opt, masks=masks))
            if method.endswith('_pure'):
                mod._optimizer.step_path = 'pure'
    return {method: stepper(mod, data) for method, mod in mods.items()}


def stepper(mod, data):
    """A function that trains ``mod`` one step (``forward_backward`` + ``update``) on the next
    batch of ``data``, cycling through it."""
    cycle = itertools.cycle(data)

    def step():
        mod.forward_backward(next(cycle))
        mod.update()
    return step
