"""The demo's data: rated pairs, the split into old and new rows, and errors about them.

Two sources produce a :class:`Split`: synthetic low-rank ratings
(:mod:`masked_opt.demo.synthetic`) and a MovieLens-format file
(:mod:`masked_opt.demo.files`). In a split, users and items are numbered as table rows, old
ones first (``0 .. n_old - 1``) and new ones after them, and there are four sets of ratings:

- ``old_train``: old user x old item, what the first model is trained on;
- ``old_test``: old user x old item, held out (to check old predictions do not change);
- ``new_train`` / ``new_test``: every rating that involves a new user or a new item, split at
  random (80/20 by default): what the new rows are trained and judged on.

Labels follow the forum's model, which predicts ``1 - <user, item>``: synthetic labels are
``1 - <u, v> + noise``; MovieLens ratings ``r`` become ``r - mean + 1`` (``mean`` of the old
training ratings), a shift, so an RMSE on labels is an RMSE in rating units.
"""
import collections

import numpy as np

__all__ = ['DataError', 'Ratings', 'Split', 'RawRatings', 'validation_split', 'pair_types',
           'as_ratings', 'subset', 'random_holdout', 'PAIR_TYPES', 'DEFAULT_CUTOFF',
           'MIN_RATINGS', 'VALIDATION_FRACTION']

DEFAULT_CUTOFF = 0.8
"""Default time cut-off: the 0.8 quantile of timestamps (the latest 20% of ratings are new)."""

MIN_RATINGS = 20
"""Fewest ratings a file must hold, and fewest old training ratings a cut-off may leave."""

VALIDATION_FRACTION = 0.1
"""Share of training ratings the demo carves out to choose ``wd`` and epochs on."""

PAIR_TYPES = ('old user x new item', 'new user x old item', 'new user x new item')
"""The kinds of new pairs, in the order of the codes :func:`pair_types` returns (0, 1, 2)."""


class DataError(ValueError):
    """Input data that cannot be used; the message says where and what was expected."""


Ratings = collections.namedtuple('Ratings', 'user item label')
Ratings.__doc__ = 'Rated pairs: int64 user rows, int64 item rows, float32 labels.'

RawRatings = collections.namedtuple('RawRatings', 'user item rating timestamp')
RawRatings.__doc__ = 'Ratings as read from a file: raw integer ids, float ratings, timestamps.'

_Split = collections.namedtuple('Split', 'n_old_users n_new_users n_old_items n_new_items '
                                'old_train old_test new_train new_test source noise')


class Split(_Split):
    """Users, items and ratings of the demo, old rows first (see the module documentation).

    ``noise`` is the label noise standard deviation of synthetic data (None for real data).
    No model reaches it once the old rows are frozen: the old rows carry their own error.
    """

    @property
    def n_users(self):
        """Rows of the grown user table."""
        return self.n_old_users + self.n_new_users

    @property
    def n_items(self):
        """Rows of the grown item table."""
        return self.n_old_items + self.n_new_items

    def sizes(self):
        """Counts for the report."""
        return {'old_users': self.n_old_users, 'new_users': self.n_new_users,
                'old_items': self.n_old_items, 'new_items': self.n_new_items,
                'old_train': len(self.old_train.label), 'old_test': len(self.old_test.label),
                'new_train': len(self.new_train.label), 'new_test': len(self.new_test.label)}


def as_ratings(user, item, label):
    """:class:`Ratings` with the demo's dtypes (int64 rows, float32 labels).

    Examples
    --------
    >>> from masked_opt.demo.data import as_ratings
    >>> as_ratings([0, 1], [2, 3], [0.5, 1.5]).label.dtype
    dtype('float32')
    """
    return Ratings(np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64),
                   np.asarray(label, dtype=np.float32))


def subset(r, keep):
    """The ratings of ``r`` selected by a boolean mask or an index array.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import as_ratings, subset
    >>> subset(as_ratings([0, 1, 2], [0, 1, 2], [1, 2, 3]), np.array([True, False, True])).user
    array([0, 2])
    """
    return Ratings(r.user[keep], r.item[keep], r.label[keep])


def random_holdout(n, fraction, rng):
    """Boolean mask of ``round(n * fraction)`` held-out positions (at least 1 when n > 1).

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import random_holdout
    >>> int(random_holdout(10, 0.2, np.random.default_rng(0)).sum())
    2
    """
    k = int(round(n * fraction))
    k = min(max(k, 1 if n > 1 else 0), n - 1 if n > 1 else n)
    test = np.zeros(n, dtype=bool)
    test[rng.permutation(n)[:k]] = True
    return test


def validation_split(ratings, fraction=VALIDATION_FRACTION, *, seed=0):
    """Carve a validation share out of training ratings: returns ``(fit, validation)``.

    The demo chooses ``wd`` and the number of epochs on the validation part, so the test
    ratings are used once, at the end. At least one rating goes to each part (when there are
    two or more).

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import Ratings, validation_split
    >>> r = Ratings(np.arange(20), np.arange(20), np.zeros(20, dtype=np.float32))
    >>> fit, val = validation_split(r, 0.1)
    >>> len(fit.label), len(val.label), sorted(set(fit.user) | set(val.user)) == list(range(20))
    (18, 2, True)
    """
    held = random_holdout(len(ratings.label), fraction, np.random.default_rng([seed, 7]))
    return subset(ratings, ~held), subset(ratings, held)


def pair_types(ratings, n_old_users, n_old_items):
    """Code per rating: 0 old user x new item, 1 new user x old item, 2 new x new, -1 old x old.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import Ratings, pair_types
    >>> r = Ratings(np.array([0, 5, 5, 0]), np.array([9, 0, 9, 0]), np.zeros(4))
    >>> pair_types(r, n_old_users=3, n_old_items=4).tolist()
    [0, 1, 2, -1]
    """
    new_u = ratings.user >= n_old_users
    new_i = ratings.item >= n_old_items
    return np.where(new_u & new_i, 2, np.where(new_u, 1, np.where(new_i, 0, -1)))
