"""The forum's matrix-factorisation model and the two workarounds it was given (the oracles)."""
import mxnet as mx
import numpy as np

from masked_opt.demo import model as demo_model


def forum_mf(n_users, n_items, latent_dim=8, sparse_grad=False):
    """The model from the forum thread, unchanged (optionally with row_sparse gradients): the
    package's one definition, :func:`masked_opt.demo.model.forum_mf`, at the tests' default
    size."""
    return demo_model.forum_mf(n_users, n_items, latent_dim, sparse_grad=sparse_grad)


def split_embedding_mf(n_users, n_items, latent_dim=8, n_train_cols=1):
    """Workaround (A): member embedding split into frozen (d-k) and trainable (k) columns."""
    y_true = mx.symbol.Variable('label')
    user_in = mx.symbol.Variable('member')
    user1 = mx.symbol.Embedding(name='member_embedding1', data=user_in, input_dim=n_users,
                                output_dim=latent_dim - n_train_cols)
    user2 = mx.symbol.Embedding(name='member_embedding2', data=user_in, input_dim=n_users,
                                output_dim=n_train_cols)
    user = mx.symbol.concat(user1, user2, dim=1)
    book = mx.symbol.Variable('book')
    book = mx.symbol.Embedding(name='book_embedding', data=book, input_dim=n_items,
                               output_dim=latent_dim)
    dot = mx.symbol.sum_axis(user * book, axis=1)
    dot = 1 - mx.symbol.Flatten(dot)
    return mx.symbol.LinearRegressionOutput(data=dot, label=y_true)


def one_hot_mf(n_users, n_items, n_old_items, latent_dim=8):
    """Workaround (B): book lookup as one_hot -> slice_axis -> FullyConnected, old | new rows."""
    y_true = mx.symbol.Variable('label')
    user = mx.symbol.Variable('member')
    user = mx.symbol.Embedding(name='member_embedding', data=user, input_dim=n_users,
                               output_dim=latent_dim)
    book = mx.symbol.Variable('book')
    onehot = mx.symbol.one_hot(book, depth=n_items)
    old = mx.symbol.slice_axis(onehot, axis=-1, begin=0, end=n_old_items)
    new = mx.symbol.slice_axis(onehot, axis=-1, begin=n_old_items, end=n_items)
    book = (mx.symbol.FullyConnected(old, num_hidden=latent_dim, no_bias=True, name='book_old')
            + mx.symbol.FullyConnected(new, num_hidden=latent_dim, no_bias=True,
                                       name='book_new'))
    dot = mx.symbol.sum_axis(user * book, axis=1)
    dot = 1 - mx.symbol.Flatten(dot)
    return mx.symbol.LinearRegressionOutput(data=dot, label=y_true)


def ratings(n_users, n_items, n, seed=0):
    """Synthetic (member, book, label) arrays."""
    rng = np.random.RandomState(seed)
    return (rng.randint(0, n_users, n).astype(np.float32),
            rng.randint(0, n_items, n).astype(np.float32),
            rng.rand(n).astype(np.float32))


def mf_iter(member, book, label, batch_size):
    return mx.io.NDArrayIter({'member': member, 'book': book}, {'label': label},
                             batch_size=batch_size, shuffle=False)


class GluonMF(mx.gluon.HybridBlock):
    """The forum's model as a Gluon block.

    Parameters are ``<prefix>user_weight`` and ``<prefix>book_weight``.

    ``forward(member, book)`` returns ``1 - sum(user * book, axis=1)`` like :func:`forum_mf`.
    """

    def __init__(self, n_users, n_items, latent_dim=8, prefix='mf_', sparse_grad=False):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.user = mx.gluon.nn.Embedding(n_users, latent_dim, prefix='user_',
                                              sparse_grad=sparse_grad)
            self.book = mx.gluon.nn.Embedding(n_items, latent_dim, prefix='book_',
                                              sparse_grad=sparse_grad)

    def hybrid_forward(self, F, member, book):
        return 1 - F.sum(self.user(member) * self.book(book), axis=1)


class ForumBlock(mx.gluon.Block):
    """The forum's model as a Gluon block whose parameters carry the Module names
    (``member_embedding_weight``, ``book_embedding_weight``), so the same masks and checkpoints
    serve both worlds."""

    def __init__(self, n_users, n_items, latent_dim=8):
        super().__init__(prefix='')
        with self.name_scope():
            self.member = mx.gluon.nn.Embedding(n_users, latent_dim, prefix='member_embedding_')
            self.book = mx.gluon.nn.Embedding(n_items, latent_dim, prefix='book_embedding_')

    def forward(self, u, i):
        return 1 - (self.member(u) * self.book(i)).sum(axis=1)


def forum_block(n_users, n_items, latent_dim, seed=0):
    """A :class:`ForumBlock` with weights drawn by numpy (uniform in [-0.5, 0.5)): the same
    start in every run and process, whatever MXNet's random state."""
    net = ForumBlock(n_users, n_items, latent_dim)
    net.initialize()
    rng = np.random.RandomState(seed)
    net.member.weight.set_data(mx.nd.array(rng.uniform(-.5, .5, (n_users, latent_dim))))
    net.book.weight.set_data(mx.nd.array(rng.uniform(-.5, .5, (n_items, latent_dim))))
    return net


def gluon_steps(net, trainer, first, count, *, n_users, n_items, batch, n_ratings, seed=4):
    """Train steps ``first .. first + count - 1`` of a fixed stream of squared-error batches
    (the same batches for a run and for its resumed or oracle twin)."""
    member, book, label = (mx.nd.array(a) for a in ratings(n_users, n_items, n_ratings,
                                                            seed=seed))
    for s in range(first, first + count):
        sl = slice(s * batch, (s + 1) * batch)
        with mx.autograd.record():
            loss = ((net(member[sl], book[sl]) - label[sl]) ** 2).sum()
        loss.backward()
        trainer.step(batch)


def module_steps(mod, batches):
    """Train a bound Module one step per batch, as ``Module.fit`` does."""
    for batch in batches:
        mod.forward_backward(batch)
        mod.update()
