"""The id -> row map that goes with a grown table: :func:`grow_vocab`.

Part of :mod:`masked_opt.grow` (imported from there); kept apart so that module stays about
the tables themselves.
"""
import collections
import numbers

import numpy as np

from .masks import train_rows_from


# ---------------------------------------------------------------------------- vocabularies
class VocabGrowth(collections.namedtuple('VocabGrowth', 'vocab added n_old mask')):
    """Result of :func:`grow_vocab`.

    Attributes
    ----------
    vocab : dict
        Extended id -> row map (old entries unchanged).
    added : list
        The new ids, in the order their rows were given (first appearance in ``new_ids``).
    n_old : int
        Rows of the table before growing; new rows are ``n_old, n_old + 1, ...``.
    mask : Mask
        ``train_rows_from(n_old)``.
    """

    @property
    def n_new(self):
        """Rows to add to the table (``len(added)``)."""
        return len(self.added)


def _id_kind(value):
    if isinstance(value, (bool, np.bool_)):
        return 'bool'
    if isinstance(value, (numbers.Integral, np.integer)):
        return 'int'
    return type(value).__name__


def grow_vocab(vocab, new_ids, *, n_rows=None):
    """Extend an id -> row map with new ids; old ids keep their rows.

    Parameters
    ----------
    vocab : dict
        Old map from ids (user ids, item ids, words; hashable) to distinct row numbers.
    new_ids : iterable
        Ids that arrived. Ids already in ``vocab`` and repeats are skipped (no duplicate
        rows); the others get rows ``n_rows, n_rows + 1, ...`` in order of first appearance.
    n_rows : int, optional
        Rows of the table before growing; default ``max(row) + 1`` (0 for an empty vocab).
        Give it when the table has rows no id maps to (padding, unknown token).

    Returns
    -------
    VocabGrowth
        ``(vocab, added, n_old, mask)``; ``vocab`` is a new dict.

    Raises
    ------
    TypeError
        If new ids are not of the old ids' type (e.g. ``'17'`` among int ids), an id is
        unhashable, or a row is not an integer.
    ValueError
        If old rows repeat, are negative or do not fit in ``n_rows``.

    Examples
    --------
    >>> import masked_opt as mo
    >>> g = mo.grow_vocab({'alice': 0, 'bob': 1}, ['carol', 'bob', 'dan', 'carol'])
    >>> g.vocab
    {'alice': 0, 'bob': 1, 'carol': 2, 'dan': 3}
    >>> g.added, g.n_old, g.n_new
    (['carol', 'dan'], 2, 2)
    """
    if not isinstance(vocab, dict):
        raise TypeError('vocab: expected a dict {id: row}, received %s' % type(vocab).__name__)
    rows = list(vocab.values())
    for key, row in vocab.items():
        if isinstance(row, bool) or not isinstance(row, (numbers.Integral, np.integer)):
            raise TypeError('vocab: id %r maps to %r; expected an integer row number'
                            % (key, row))
    rows_arr = np.asarray(rows, dtype=np.int64)
    if rows_arr.size and rows_arr.min() < 0:
        raise ValueError('vocab: row numbers must be non-negative, received %d'
                         % rows_arr.min())
    unique, counts = np.unique(rows_arr, return_counts=True)
    if np.any(counts > 1):
        raise ValueError('vocab: rows %s are used by several ids; expected one row per id'
                         % unique[counts > 1][:10].tolist())
    needed = int(rows_arr.max()) + 1 if rows_arr.size else 0
    if n_rows is None:
        n_rows = needed
    elif isinstance(n_rows, bool) or not isinstance(n_rows, numbers.Integral) or \
            n_rows < needed:
        raise ValueError('n_rows: expected an integer >= %d (the largest row in vocab + 1), '
                         'received %r' % (needed, n_rows))
    if isinstance(new_ids, (str, bytes)):
        raise TypeError('new_ids: expected an iterable of ids, received the single string %r; '
                        'wrap it in a list' % (new_ids,))
    new_ids = list(new_ids)
    kinds = {_id_kind(k) for k in vocab}
    for new in new_ids:
        try:
            hash(new)
        except TypeError:
            raise TypeError('new_ids: id %r is unhashable; expected ids like the old ones '
                            '(%s)' % (new, ', '.join(sorted(kinds)))) from None
        if kinds and _id_kind(new) not in kinds:
            raise TypeError('new_ids: id %r is %s but the old ids are %s; convert the ids to '
                            'one type (is a user id read as text?)'
                            % (new, _id_kind(new), ', '.join(sorted(kinds))))
    out = dict(vocab)
    added = []
    for new in new_ids:
        if new not in out:
            out[new] = int(n_rows) + len(added)
            added.append(new)
    return VocabGrowth(out, added, int(n_rows), train_rows_from(int(n_rows)))



# Documented as part of masked_opt.grow, where they are imported from.
VocabGrowth.__module__ = grow_vocab.__module__ = 'masked_opt.grow'
