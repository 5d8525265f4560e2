"""What the demo measures masked training against: the ceiling and the floors (numpy only).

Ceiling
    Once the old rows are frozen, the masked phase minimises, over the new rows only,

    ``J = sum_k (1 - u_k . b_k - y_k)**2 + lam * (||U_new||**2 + ||B_new||**2)``

    on its training ratings, with ``lam = N_train * wd``: one full-batch step of Module with
    ``LinearRegressionOutput`` (gradient ``pred - label``), ``rescale_grad = 1 / batch`` and
    weight decay ``wd`` (added to the gradient as ``wd * w``) is the gradient of ``J / (2N)``.
    For a new item rated only by frozen users the optimum is a ridge regression of ``1 - y``
    on the users' rows ("fold-in", as in ALS libraries); when new users rate new items the
    problem is biconvex and :func:`fold_in` alternates over new users and new items, each half
    exact. A new row with no training rating has the optimum 0 (the ridge term alone), which
    predicts ``1``: the mean label.
Floors
    :func:`global_mean` and the regularised bias-only model ``mu + b_u + b_i``
    (:func:`bias_only`): what a model with no latent factors scores on the same pairs.

For example:

>>> import numpy as np
>>> from masked_opt.demo.data import Ratings
>>> from masked_opt.demo.reference import fold_in, objective
>>> users = np.array([[1.0, 0.0], [0.0, 1.0]])        # two frozen users
>>> items = np.zeros((1, 2))                            # one new item (row 0, n_old_items 0)
>>> r = Ratings(np.array([0, 1]), np.array([0, 0]), np.array([0.0, 0.5]))
>>> u, b, info = fold_in(users, items, 2, 0, r, lam=1e-9)
>>> np.round(b, 6).tolist()                             # 1 - y = [1, 0.5], exactly fitted
[[1.0, 0.5]]
>>> round(objective(u, b, 2, 0, r, 1e-9), 6)
0.0
"""
import numpy as np

__all__ = ['predict', 'objective', 'fold_in', 'choose_lambda', 'last_column_fold_in',
           'global_mean', 'bias_only', 'choose_bias_lambda', 'LAMBDAS', 'BIAS_LAMBDAS']

#: The ridge strengths the demo tries on validation (``lam = N_train * wd``).
LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
#: The bias regularisation strengths tried on validation for the bias-only floor.
BIAS_LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0)


def predict(users, items, ratings):
    """The forum model's prediction ``1 - <user row, item row>`` for each rating, float64."""
    u = np.asarray(users, dtype=np.float64)[ratings.user]
    b = np.asarray(items, dtype=np.float64)[ratings.item]
    return 1.0 - np.einsum('ij,ij->i', u, b)


def objective(users, items, n_old_users, n_old_items, ratings, lam):
    """``J`` of the masked phase (module documentation): squared errors + ridge on new rows."""
    err = predict(users, items, ratings) - ratings.label.astype(np.float64)
    new_u = np.asarray(users, dtype=np.float64)[n_old_users:]
    new_b = np.asarray(items, dtype=np.float64)[n_old_items:]
    return float(err @ err + lam * ((new_u ** 2).sum() + (new_b ** 2).sum()))


def _ridge(design, target, row, n_rows, lam):
    """Per row ``r``: argmin_w sum_{k: row_k = r} (target_k - design_k . w)**2 + lam ||w||**2."""
    dim = design.shape[1]
    outer = (design[:, :, None] * design[:, None, :]).reshape(len(row), dim * dim)
    gram = np.stack([np.bincount(row, outer[:, j], n_rows) for j in range(dim * dim)], axis=1)
    gram = gram.reshape(n_rows, dim, dim) + lam * np.eye(dim)
    rhs = np.stack([np.bincount(row, design[:, j] * target, n_rows) for j in range(dim)], axis=1)
    return np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]


def fold_in(users, items, n_old_users, n_old_items, ratings, lam, *, sweeps=100, tol=1e-9):
    """The optimum of ``J`` over the new rows, old rows frozen (ridge fold-in, alternating).

    Parameters
    ----------
    users, items : numpy.ndarray
        Grown tables (old rows first); the new rows are the starting point when new users
        rate new items (otherwise one sweep is exact and the start does not matter).
    n_old_users, n_old_items : int
        Frozen rows of each table.
    ratings : Ratings
        The masked phase's training ratings (each involves a new user or a new item).
    lam : float
        Ridge strength, > 0 (``N_train * wd``).
    sweeps, tol : int, float
        At most ``sweeps`` alternations; stop when ``J`` falls by less than ``tol * J``.

    Returns
    -------
    users, items : numpy.ndarray
        float64 copies with the optimal new rows.
    info : dict
        ``{'sweeps': ..., 'objective': ...}``.
    """
    if not lam > 0:
        raise ValueError('lam: expected a ridge strength > 0 (with 0 the optimum of rows with '
                         'few ratings is not unique), received %r' % (lam,))
    users = np.array(users, dtype=np.float64)
    items = np.array(items, dtype=np.float64)
    target = 1.0 - ratings.label.astype(np.float64)
    n_new_users, n_new_items = users.shape[0] - n_old_users, items.shape[0] - n_old_items
    by_user = ratings.user >= n_old_users
    by_item = ratings.item >= n_old_items
    both = bool((by_user & by_item).any())
    previous = np.inf
    for sweep in range(1, sweeps + 1):  # noqa: B007 (returned after the loop)
        if n_new_users:
            users[n_old_users:] = _ridge(items[ratings.item[by_user]], target[by_user],
                                         ratings.user[by_user] - n_old_users, n_new_users, lam)
        if n_new_items:
            items[n_old_items:] = _ridge(users[ratings.user[by_item]], target[by_item],
                                         ratings.item[by_item] - n_old_items, n_new_items, lam)
        value = objective(users, items, n_old_users, n_old_items, ratings, lam)
        if not both or previous - value <= tol * value:
            break
        previous = value
    return users, items, {'sweeps': sweep, 'objective': value}


def _rmse(pred, ratings):
    if len(ratings.label) == 0:
        return None
    return float(np.sqrt(np.mean((pred - ratings.label.astype(np.float64)) ** 2)))


def choose_lambda(users, items, n_old_users, n_old_items, train, val, lambdas=LAMBDAS):
    """The ridge strength of :data:`LAMBDAS` whose fold-in scores the lowest validation RMSE.

    Returns ``(lam, {lam: validation RMSE})``.
    """
    scores = {}
    for lam in lambdas:
        u, b, _ = fold_in(users, items, n_old_users, n_old_items, train, lam)
        scores[lam] = _rmse(predict(u, b, val), val)
    return min(scores, key=lambda k: scores[k]), scores


def last_column_fold_in(users, items, ratings, lam, *, sweeps=200, tol=1e-9):
    """The optimum over the last column of both tables, the other columns frozen.

    ``sum_k (1 - u_k . b_k - y_k)**2 + lam * (||U[:, -1]||**2 + ||B[:, -1]||**2)``, alternating
    between the users' and the items' last entries (each half exact). Returns
    ``(users, items, info)`` as :func:`fold_in`.
    """
    users = np.array(users, dtype=np.float64)
    items = np.array(items, dtype=np.float64)
    u, i = ratings.user, ratings.item
    rest = 1.0 - ratings.label.astype(np.float64) - np.einsum(
        'ij,ij->i', users[u, :-1], items[i, :-1])
    previous = np.inf
    for sweep in range(1, sweeps + 1):  # noqa: B007 (returned after the loop)
        z = items[i, -1]
        users[:, -1] = (np.bincount(u, z * rest, users.shape[0])
                        / (np.bincount(u, z * z, users.shape[0]) + lam))
        x = users[u, -1]
        items[:, -1] = (np.bincount(i, x * rest, items.shape[0])
                        / (np.bincount(i, x * x, items.shape[0]) + lam))
        err = rest - users[u, -1] * items[i, -1]
        value = float(err @ err + lam * ((users[:, -1] ** 2).sum() + (items[:, -1] ** 2).sum()))
        if previous - value <= tol * value:
            break
        previous = value
    return users, items, {'sweeps': sweep, 'objective': value}


def global_mean(train):
    """The mean training label: the prediction of a model that knows nothing else."""
    return float(np.mean(train.label.astype(np.float64)))


def bias_only(train, n_users, n_items, lam, *, sweeps=30):
    """``mu + b_u + b_i`` fitted by alternating ridge steps (``lam`` on every bias).

    Returns a function ``ratings -> predictions``.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import Ratings
    >>> from masked_opt.demo.reference import bias_only
    >>> r = Ratings(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([1., 2., 3., 4.]))
    >>> np.round(bias_only(r, 2, 2, 1e-9)(r), 6).tolist()       # additive data: exact
    [1.0, 2.0, 3.0, 4.0]
    """
    y = train.label.astype(np.float64)
    mu = float(y.mean())
    n_u = np.bincount(train.user, minlength=n_users)
    n_i = np.bincount(train.item, minlength=n_items)
    b_u, b_i = np.zeros(n_users), np.zeros(n_items)
    for _ in range(sweeps):
        b_u = np.bincount(train.user, y - mu - b_i[train.item], n_users) / (n_u + lam)
        b_i = np.bincount(train.item, y - mu - b_u[train.user], n_items) / (n_i + lam)
    return lambda r: mu + b_u[r.user] + b_i[r.item]


def choose_bias_lambda(train, val, n_users, n_items, lambdas=BIAS_LAMBDAS):
    """The bias regularisation of :data:`BIAS_LAMBDAS` with the lowest validation RMSE.

    Returns ``(lam, predict function fitted with it)``.
    """
    fits = {lam: bias_only(train, n_users, n_items, lam) for lam in lambdas}
    best = min(fits, key=lambda lam: _rmse(fits[lam](val), val))
    return best, fits[best]
