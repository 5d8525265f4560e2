"""Synthetic ratings for the demo: hidden low-rank factors, with new users and items.

The default data of ``masked-opt demo``: a :class:`~masked_opt.demo.data.Split` whose labels
are ``1 - <u, v> + noise`` for hidden factors ``u`` and ``v``, so the noise level is known and
the report can say how close any model gets to it.
"""
import numpy as np

from .data import DataError, Split, as_ratings, random_holdout, subset

__all__ = ['synthetic_split']


def synthetic_split(n_old_users=600, n_old_items=400, n_new_users=120, n_new_items=80, *,
                    per_user=40, per_new_item=15, rank=8, noise=0.1, test_fraction=0.2,
                    seed=0):
    """Ratings from hidden low-rank user and item factors, with new users and items.

    Hidden factors are standard normal; latent dimension ``k`` is weighted by ``0.75 ** k``
    (normalised so that ``<u, v>`` has unit variance), so later dimensions carry less signal,
    as in a trained model. Label = ``1 - <u, v> + noise``.

    Parameters
    ----------
    n_old_users, n_old_items, n_new_users, n_new_items : int
        Table sizes before and after growing.
    per_user : int
        Items each user rates (old users rate old items; new users rate any item).
    per_new_item : int
        Extra ratings of each new item by random old users.
    rank : int
        Rank of the hidden factors.
    noise : float
        Standard deviation of the label noise.
    test_fraction : float
        Share of held-out ratings, for old pairs and for new pairs.
    seed : int
        Same seed, same data.

    Returns
    -------
    Split

    Examples
    --------
    >>> from masked_opt.demo.synthetic import synthetic_split
    >>> s = synthetic_split(50, 40, 10, 8, per_user=5, seed=0)
    >>> s.n_users, s.n_items, s.sizes()['old_train']
    (60, 48, 200)
    """
    for name, value in (('n_old_users', n_old_users), ('n_old_items', n_old_items),
                        ('per_user', per_user), ('rank', rank)):
        if value < 1:
            raise DataError('%s: expected a positive integer, received %r' % (name, value))
    if per_user > n_old_items:
        raise DataError('per_user=%d: expected at most n_old_items=%d (each user rates '
                        'distinct items)' % (per_user, n_old_items))
    rng = np.random.default_rng(seed)
    n_users, n_items = n_old_users + n_new_users, n_old_items + n_new_items
    weight = 0.75 ** np.arange(rank)
    weight /= np.sqrt((weight ** 2).sum())
    users = rng.standard_normal((n_users, rank)) * weight
    items = rng.standard_normal((n_items, rank))

    def rate(u, i):
        return 1.0 - (users[u] * items[i]).sum(axis=1) + noise * rng.standard_normal(len(u))

    def distinct_items(u, pool, k):
        return [(u, int(i)) for i in rng.choice(pool, size=min(k, pool), replace=False)]

    old_pairs = [p for u in range(n_old_users) for p in distinct_items(u, n_old_items, per_user)]
    new_pairs = [p for u in range(n_old_users, n_users)
                 for p in distinct_items(u, n_items, per_user)]
    for i in range(n_old_items, n_items):
        for u in rng.choice(n_old_users, size=min(per_new_item, n_old_users), replace=False):
            new_pairs.append((int(u), i))
    new_pairs = sorted(set(new_pairs))
    old_u, old_i = np.array(old_pairs).T
    old = as_ratings(old_u, old_i, rate(old_u, old_i))
    test = random_holdout(len(old_u), test_fraction, rng)
    if new_pairs:
        new_u, new_i = np.array(new_pairs).T
        new = as_ratings(new_u, new_i, rate(new_u, new_i))
    else:
        new = as_ratings([], [], [])
    new_test = random_holdout(len(new.label), test_fraction, rng)
    return Split(n_old_users, n_new_users, n_old_items, n_new_items,
                 subset(old, ~test), subset(old, test), subset(new, ~new_test),
                 subset(new, new_test), 'synthetic (seed %d)' % seed, float(noise))
