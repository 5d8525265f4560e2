"""The forum's model and its two workarounds, as the benchmarks build them.

The model itself is the package's (:func:`masked_opt.demo.model.forum_mf`, re-exported here).
The workarounds are the same networks as ``tests/models.py`` (the test oracles), with a
``sparse_grad`` switch on every Embedding so that each method can be timed with dense and with
row_sparse gradients; they are kept here so that ``python -m benchmarks`` needs nothing from
the test tree.

>>> from benchmarks.models import forum_mf
>>> sorted(forum_mf(10, 20, 4).list_arguments())
['book', 'book_embedding_weight', 'label', 'member', 'member_embedding_weight']
"""
import mxnet as mx
import numpy as np

from masked_opt.demo.model import forum_mf  # noqa: F401  (re-exported: the one definition)

DATA_NAMES = ('member', 'book')
LABEL_NAMES = ('label',)


def split_embedding_mf(n_users, n_items, dim, n_train_cols, sparse_grad=False):
    """Workaround (A): the member table as two Embeddings, ``dim - k`` frozen and ``k`` trained.

    Freeze ``member_embedding1_weight`` with ``fixed_param_names``.

    Examples
    --------
    >>> from benchmarks.models import split_embedding_mf
    >>> [a for a in split_embedding_mf(10, 20, 8, 1).list_arguments() if a.endswith('weight')]
    ['member_embedding1_weight', 'member_embedding2_weight', 'book_embedding_weight']
    """
    member = mx.sym.Variable('member')
    user1 = mx.sym.Embedding(member, input_dim=n_users, output_dim=dim - n_train_cols,
                             name='member_embedding1', sparse_grad=sparse_grad)
    user2 = mx.sym.Embedding(member, input_dim=n_users, output_dim=n_train_cols,
                             name='member_embedding2', sparse_grad=sparse_grad)
    user = mx.sym.concat(user1, user2, dim=1)
    book = mx.sym.Embedding(mx.sym.Variable('book'), input_dim=n_items, output_dim=dim,
                            name='book_embedding', sparse_grad=sparse_grad)
    dot = 1 - mx.sym.Flatten(mx.sym.sum_axis(user * book, axis=1))
    return mx.sym.LinearRegressionOutput(data=dot, label=mx.sym.Variable('label'))


def one_hot_mf(n_users, n_items, n_old_items, dim):
    """Workaround (B): the book lookup as ``one_hot`` -> two ``slice_axis`` -> two FC, summed.

    Freeze ``book_old_weight`` with ``fixed_param_names``. Its activations are
    ``batch x n_items``: see :func:`one_hot_bytes`.

    Examples
    --------
    >>> from benchmarks.models import one_hot_mf
    >>> [a for a in one_hot_mf(10, 20, 15, 4).list_arguments() if a.endswith('weight')]
    ['member_embedding_weight', 'book_old_weight', 'book_new_weight']
    """
    user = mx.sym.Embedding(mx.sym.Variable('member'), input_dim=n_users, output_dim=dim,
                            name='member_embedding')
    onehot = mx.sym.one_hot(mx.sym.Variable('book'), depth=n_items)
    old = mx.sym.slice_axis(onehot, axis=-1, begin=0, end=n_old_items)
    new = mx.sym.slice_axis(onehot, axis=-1, begin=n_old_items, end=n_items)
    book = (mx.sym.FullyConnected(old, num_hidden=dim, no_bias=True, name='book_old')
            + mx.sym.FullyConnected(new, num_hidden=dim, no_bias=True, name='book_new'))
    dot = 1 - mx.sym.Flatten(mx.sym.sum_axis(user * book, axis=1))
    return mx.sym.LinearRegressionOutput(data=dot, label=mx.sym.Variable('label'))


def one_hot_bytes(batch, n_items, dtype_bytes=4):
    """Bytes of the ``batch x n_items`` activations workaround (B) must hold at once.

    The ``one_hot`` output and the two ``slice_axis`` outputs that together cover it are alive
    together in the forward pass: ``2 x batch x n_items`` floats (a lower bound; the
    measured peak RSS at small sizes is reported beside it).

    Examples
    --------
    >>> from benchmarks.models import one_hot_bytes
    >>> one_hot_bytes(1024, 1_000_000) / 2**30
    7.62939453125
    """
    return 2 * batch * n_items * dtype_bytes


# MXNet's one_hot aborts once batch x depth reaches 2**29 elements (anchors_measured.md).
ONE_HOT_MAX_ELEMENTS = 2 ** 29


def batches(n_users, n_items, batch, count, seed=0):
    """``count`` DataBatches of uniform random (member, book) ids and ratings.

    Examples
    --------
    >>> from benchmarks.models import batches
    >>> b = batches(10, 20, 4, 2)
    >>> len(b), b[0].data[0].shape
    (2, (4,))
    """
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        member = mx.nd.array(rng.randint(0, n_users, batch))
        book = mx.nd.array(rng.randint(0, n_items, batch))
        label = mx.nd.array(rng.rand(batch))
        out.append(mx.io.DataBatch(data=[member, book], label=[label]))
    return out
