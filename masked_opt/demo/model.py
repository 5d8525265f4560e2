"""The forum's model and one training run of it with ``Module.fit``, chosen on validation.

The model is the forum's, unchanged: two Embeddings (``member_embedding``,
``book_embedding``) and ``LinearRegressionOutput(1 - <member, book>)``. :func:`fit` trains it
with Adam (optionally through the ``'masked'`` optimizer), halving the learning rate every
``halve_every`` epochs (``mx.lr_scheduler.FactorScheduler``), records the validation RMSE
after every epoch and returns the parameters of the epoch with the lowest one: the number of
epochs is chosen on validation, never on the test ratings.
"""
import collections
import math
import time

import mxnet as mx
import numpy as np

__all__ = ['MEMBER', 'BOOK', 'forum_mf', 'rmse', 'fit', 'Fit', 'DemoError']

MEMBER, BOOK = 'member_embedding_weight', 'book_embedding_weight'

class DemoError(ValueError):
    """Settings the demo cannot run with, or a training run they made diverge (one line)."""


Fit = collections.namedtuple('Fit', 'params epoch curve seconds track', defaults=(None,))
Fit.__doc__ = """One training run: ``params`` (numpy, of the chosen ``epoch``, 1-based), the
validation RMSE after every epoch (``curve``), the wall time of ``Module.fit``, and ``track``:
``track(params)`` after every epoch when :func:`fit` was given one (else None)."""


def forum_mf(n_users, n_items, latent_dim, sparse_grad=False):
    """The forum's model, unchanged: ``LinearRegressionOutput(1 - <member, book>)``.

    The one definition of it: the tests (``tests/models.py``) and the benchmarks
    (``benchmarks/models.py``) build this function's network.

    Parameters
    ----------
    n_users, n_items, latent_dim : int
        Table sizes.
    sparse_grad : bool
        Row_sparse gradients for both Embeddings (the forum's model has dense ones).

    Examples
    --------
    >>> from masked_opt.demo.model import forum_mf
    >>> forum_mf(10, 5, 8).list_arguments()
    ['member', 'member_embedding_weight', 'book', 'book_embedding_weight', 'label']
    """
    y_true = mx.symbol.Variable('label')
    user = mx.symbol.Embedding(name='member_embedding', data=mx.symbol.Variable('member'),
                               input_dim=n_users, output_dim=latent_dim,
                               sparse_grad=sparse_grad)
    book = mx.symbol.Embedding(name='book_embedding', data=mx.symbol.Variable('book'),
                               input_dim=n_items, output_dim=latent_dim,
                               sparse_grad=sparse_grad)
    dot = 1 - mx.symbol.Flatten(mx.symbol.sum_axis(user * book, axis=1))
    return mx.symbol.LinearRegressionOutput(data=dot, label=y_true)


def rmse(params, ratings):
    """RMSE of the forum model with ``params`` on ``ratings``, in float64 (None if empty).

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.model import rmse
    >>> from masked_opt.demo.data import Ratings
    >>> p = {'member_embedding_weight': np.ones((2, 1)), 'book_embedding_weight': np.ones((1, 1))}
    >>> rmse(p, Ratings(np.array([0, 1]), np.array([0, 0]), np.array([0.0, 1.0])))
    0.7071067811865476
    """
    if len(ratings.label) == 0:
        return None
    users, items = np.asarray(params[MEMBER], np.float64), np.asarray(params[BOOK], np.float64)
    pred = 1.0 - (users[ratings.user] * items[ratings.item]).sum(axis=1)
    return float(np.sqrt(np.mean((pred - ratings.label.astype(np.float64)) ** 2)))


def fit(n_users, n_items, latent_dim, train, val, *, epochs, batch_size, learning_rate, seed,
        wd=0.0, halve_every=None, masks=None, arg_params=None, progress=None, desc='',
        track=None):
    """``Module.fit`` with Adam on ``train``; keep the epoch with the lowest RMSE on ``val``.

    Parameters
    ----------
    n_users, n_items, latent_dim : int
        Table sizes.
    train, val : Ratings
        Training and validation ratings.
    epochs, batch_size, learning_rate, seed : int, int, float, int
        As for ``Module.fit``; the seed fixes MXNet's and numpy's generators (the iterator
        shuffles with numpy's global one).
    wd : float
        Adam's weight decay (``lam = N_train * wd`` in the objective; see
        :mod:`masked_opt.demo.reference`).
    halve_every : int, optional
        Halve the learning rate every that many epochs.
    masks : dict, optional
        Train through ``'masked'`` with these masks (Adam as the base optimizer).
    arg_params : dict, optional
        Starting parameters (numpy); default ``Normal(0.1)`` initialisation.
    progress : Progress, optional
        Counts the batches (:class:`~masked_opt.demo.progress.Progress`, one bar for the
        whole demo); ``desc`` names the stage on it.
    desc : str
        The stage's label on the bar.
    track : callable, optional
        ``track(params)`` (numpy parameters) after every epoch, e.g. the masked phase's
        objective; the values land in ``Fit.track``.

    Returns
    -------
    Fit

    Raises
    ------
    DemoError
        Every epoch ended with NaN or Inf in the weights or the validation RMSE (a learning
        rate too large for the ratings' scale): nothing to choose from.
    """
    mx.random.seed(seed)
    np.random.seed(seed)
    batch = min(batch_size, len(train.label))
    it = mx.io.NDArrayIter({'member': train.user.astype(np.float32),
                            'book': train.item.astype(np.float32)},
                           {'label': train.label}, batch_size=batch, shuffle=True)
    mod = mx.mod.Module(forum_mf(n_users, n_items, latent_dim), data_names=['member', 'book'],
                        label_names=['label'], context=mx.cpu())
    n_batches = math.ceil(len(train.label) / batch)
    opt = dict(wd=wd, learning_rate=learning_rate)
    if halve_every:  # base_lr equal to learning_rate, or MXNet warns and overwrites it
        opt['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(
            step=halve_every * n_batches, factor=0.5, stop_factor_lr=1e-12,
            base_lr=learning_rate)
    if masks is not None:
        opt.update(base='adam', masks=masks)
    curve, best, tracked = [], {}, []
    if progress is not None:
        progress.stage(desc)

    def on_batch(_):
        if progress is not None:
            progress.update()

    def on_epoch(epoch, symbol, args, auxs):
        params = {k: v.asnumpy() for k, v in args.items()}
        curve.append(rmse(params, val))
        if track is not None:
            tracked.append(track(params))
        # A diverged epoch is never the chosen one: NaN compares false, so without this check
        # a NaN first epoch would stay "best", and its NaN rows would reach the next phase.
        finite = curve[-1] is not None and math.isfinite(curve[-1]) and all(
            np.isfinite(v).all() for v in params.values())
        if finite and (not best or curve[-1] < best['score']):
            best.update(score=curve[-1], epoch=epoch + 1, params=params)
        if progress is not None:
            progress.note('validation RMSE %.4f' % curve[-1])

    start = time.perf_counter()
    mod.fit(it, num_epoch=epochs, optimizer='masked' if masks is not None else 'adam',
            optimizer_params=opt, initializer=mx.init.Normal(0.1),
            arg_params=None if arg_params is None else
            {k: mx.nd.array(v, dtype=v.dtype) for k, v in arg_params.items()},
            batch_end_callback=on_batch, epoch_end_callback=on_epoch)
    seconds = time.perf_counter() - start
    if not best:
        raise DemoError('%s: training diverged (NaN or Inf in the weights or the validation '
                        'RMSE after each of its %d epochs, learning rate %g); lower that '
                        'phase\'s learning rate (--learning-rate for the masked phase, '
                        '--retrain-learning-rate for the old model and the full retrain)'
                        % (desc or 'Module.fit', epochs, learning_rate))
    return Fit(best['params'], best['epoch'], curve, seconds,
               tracked if track is not None else None)
