"""Ratings from a MovieLens-format file, and the splits that decide which rows are new.

:func:`load_ratings` reads the file (every malformed line is a :class:`DataError` naming
``path:line``); :func:`time_split`, :func:`holdout_split` and :func:`random_split` turn the
:class:`~masked_opt.demo.data.RawRatings` into a :class:`~masked_opt.demo.data.Split`.
"""
import math
import re
import string

import numpy as np

from ..grow import grow_vocab
from .data import (
    DEFAULT_CUTOFF,
    MIN_RATINGS,
    DataError,
    RawRatings,
    Split,
    as_ratings,
    random_holdout,
    subset,
)

__all__ = ['load_ratings', 'time_split', 'holdout_split', 'random_split', 'MAX_RATING']

MAX_RATING = 1e6
"""Largest rating magnitude a file may hold.

Ratings are scores (1-5 stars, 0/1 clicks, a 0-100 scale); the forum's model fits them in
float32, where the squared errors of ratings near ``1e19`` already overflow and training
returns NaN. A number above a million in the rating column is almost always another column
(a timestamp, an id) in its place, so the loader stops there and names the line."""


def load_ratings(path):
    """Read ratings in MovieLens format: ``user<TAB>item<TAB>rating<TAB>timestamp``.

    ``u.data`` of MovieLens 100k is tab-separated; ``ratings.dat`` of MovieLens 1M/10M uses
    ``::``; both are accepted. Blank lines are skipped. Ids and timestamps are decimal integers
    that fit int64, ratings finite decimal numbers of magnitude at most :data:`MAX_RATING`.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    RawRatings

    Raises
    ------
    DataError
        Missing or unreadable file, a malformed line or a number out of range (the message
        gives ``path:line``), or fewer than :data:`~masked_opt.demo.data.MIN_RATINGS` ratings.

    Examples
    --------
    >>> import os, tempfile
    >>> from masked_opt.demo.files import load_ratings
    >>> path = os.path.join(tempfile.mkdtemp(), 'u.data')
    >>> with open(path, 'w') as f:
    ...     _ = f.write(''.join('%d\\t%d\\t%d\\t%d\\n' % (u, i, 1 + (u + i) % 5, 100 * u + i)
    ...                         for u in range(1, 6) for i in range(1, 6)))
    >>> r = load_ratings(path)
    >>> len(r.rating), r.user[:3].tolist(), r.rating[:3].tolist()
    (25, [1, 1, 1], [3.0, 4.0, 5.0])
    """
    try:
        with open(path, 'rb') as f:
            # Decoded here, not by a text-mode file: that would end lines at a lone '\r', and
            # its utf-8-sig reader takes a file holding a cut-off byte-order mark for empty.
            text = f.read().decode('utf-8').removeprefix('\ufeff')   # a BOM is not data
    except OSError as err:
        raise DataError('cannot read ratings file %s: %s' % (path, err.strerror or err)) \
            from None
    except UnicodeDecodeError:
        raise DataError('%s is not a text file (expected UTF-8 lines user<TAB>item<TAB>'
                        'rating<TAB>timestamp)' % path) from None
    users, items, values, times = [], [], [], []
    # Lines end at '\n' only (not at a lone '\r' or str.splitlines' other separators), so the
    # line numbers in messages are those `sed -n Np` or an editor shows.
    for number, line in enumerate(text.split('\n'), start=1):
        user, item, value, stamp = _parse_line(line, path, number)
        if user is None:
            continue
        users.append(user)
        items.append(item)
        values.append(value)
        times.append(stamp)
    if len(values) < MIN_RATINGS:
        raise DataError('%s holds %d ratings; expected at least %d'
                        % (path, len(values), MIN_RATINGS))
    return RawRatings(np.array(users, dtype=np.int64), np.array(items, dtype=np.int64),
                      np.array(values, dtype=np.float64), np.array(times, dtype=np.int64))


_INTEGER = re.compile(r'[+-]?[0-9]+\Z')
_NUMBER = re.compile(r'[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z')
_INT64 = (-2 ** 63, 2 ** 63 - 1)
_RENUMBER = 'renumber the ids (0, 1, 2, ...) or hash them to at most 18 digits'
_MAX_TEXT = ('%g' % MAX_RATING).replace('e+0', 'e').replace('e+', 'e')   # 1e6, not 1e+06


def _integer(text):
    """``int(text)``, or None when it has more than 19 digits (beyond int64 anyway; Python
    refuses to convert more than 4300 with a ValueError of its own)."""
    return None if len(text.lstrip('+-').lstrip('0')) > 19 else int(text)


def _parse_line(line, path, number):
    """``(user, item, rating, timestamp)`` of one line, ``(None,) * 4`` for a blank one.

    Only ASCII decimal numbers count: Python's ``int`` and ``float`` would also take ``1_000``,
    other scripts' digits and ``infinity``, which no MovieLens-format writer produces.
    """
    line = line.strip(string.whitespace)             # ASCII blanks only, '\u2028' is no blank
    if not line:
        return None, None, None, None
    fields = line.split('::') if '::' in line else re.split(r'[ \t]+', line)
    fields = [f.strip(string.whitespace) for f in fields]
    where = '%s:%d' % (path, number)
    if len(fields) != 4:
        raise DataError('%s: expected 4 fields user<TAB>item<TAB>rating<TAB>timestamp, '
                        'received %d: %r%s' % (where, len(fields), line[:80], (
                            ' (a carriage return inside the line: lines must end with a '
                            'newline, e.g. dos2unix or mac2unix the file)') if '\r' in line
                            else ''))
    if not all(_INTEGER.match(fields[k]) for k in (0, 1, 3)):
        raise DataError('%s: expected integer user id, item id and timestamp, received %r'
                        % (where, line[:80]))
    user, item, stamp = (_integer(fields[k]) for k in (0, 1, 3))
    for what, text, value, fix in (('user id', fields[0], user, _RENUMBER),
                                   ('item id', fields[1], item, _RENUMBER),
                                   ('timestamp', fields[3], stamp, 'a timestamp counts seconds '
                                    'since 1970 (e.g. 881250949): check the column order')):
        if value is None or not _INT64[0] <= value <= _INT64[1]:
            raise DataError('%s: %s %s does not fit a 64-bit integer (expected -2**63 to '
                            '2**63 - 1); %s' % (where, what, text[:40], fix))
    value = float(fields[2]) if _NUMBER.match(fields[2]) else math.nan
    if not math.isfinite(value):
        raise DataError('%s: expected a finite number as rating, received %r'
                        % (where, fields[2][:40]))
    if abs(value) > MAX_RATING:
        raise DataError('%s: rating %s is outside [-%s, %s] (expected scores like 1-5 or 0/1; '
                        'the model fits them in float32): check that the columns are user, '
                        'item, rating, timestamp, or rescale the ratings'
                        % (where, fields[2][:40], _MAX_TEXT, _MAX_TEXT))
    return user, item, value, stamp


def _first_seen_vocab(ids):
    """id -> row in order of first appearance (ids already sorted by time)."""
    return grow_vocab({}, ids.tolist()).vocab


def time_split(raw, cutoff=DEFAULT_CUTOFF, *, test_fraction=0.2, seed=0, source='file'):
    """Old and new users/items by time: new ones are first seen after the cut-off.

    The cut-off time is the ``cutoff`` quantile of the timestamps. Ratings up to it are
    between old users and old items (by definition); 10% of them, at random, are held out
    as ``old_test`` together with the old x old ratings after the cut-off. Ratings after the
    cut-off that involve a new user or item are split at random into ``new_train`` and
    ``new_test``. Rows: old ids in order of first appearance, then new ids the same way
    (:func:`~masked_opt.grow_vocab`).

    Parameters
    ----------
    raw : RawRatings
        From :func:`load_ratings`.
    cutoff : float, default 0.8
        Quantile of timestamps in (0, 1).
    test_fraction : float
        Share of new-pair ratings held out.
    seed : int
        For the random hold-outs.
    source : str
        Description for the report.

    Returns
    -------
    Split

    Raises
    ------
    DataError
        A cut-off outside (0, 1), or one leaving fewer than :data:`MIN_RATINGS` old training
        ratings, no new users and no new items, or fewer than 2 ratings of new pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import RawRatings
    >>> from masked_opt.demo.files import time_split
    >>> u = np.repeat(np.arange(10), 5); i = np.tile(np.arange(5), 10)
    >>> raw = RawRatings(u, i + 10 * (u >= 8), np.full(50, 4.0), np.arange(50))
    >>> s = time_split(raw, 0.8)
    >>> s.n_old_users, s.n_new_users, s.n_old_items, s.n_new_items
    (8, 2, 5, 5)
    """
    if not (isinstance(cutoff, (int, float)) and 0 < cutoff < 1):
        raise DataError('cutoff: expected a quantile of the timestamps strictly between 0 and '
                        '1 (default %.1f), received %r' % (DEFAULT_CUTOFF, cutoff))
    order = np.argsort(raw.timestamp, kind='stable')
    user, item = raw.user[order], raw.item[order]
    rating, stamp = raw.rating[order], raw.timestamp[order]
    t0 = np.quantile(stamp, cutoff, method='lower')
    before = stamp <= t0
    old_users = _first_seen_vocab(user[before])
    old_items = _first_seen_vocab(item[before])
    users = grow_vocab(old_users, user[~before].tolist())
    items = grow_vocab(old_items, item[~before].tolist())
    rows_u = np.array([users.vocab[x] for x in user.tolist()], dtype=np.int64)
    rows_i = np.array([items.vocab[x] for x in item.tolist()], dtype=np.int64)
    new_pair = (rows_u >= users.n_old) | (rows_i >= items.n_old)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(rating), dtype=bool)
    held[np.flatnonzero(before)] = random_holdout(int(before.sum()), 0.1, rng)
    old_train = before & ~held
    if old_train.sum() < MIN_RATINGS:
        raise DataError('cutoff %s leaves %d old ratings to train on; expected at least %d. '
                        'Raise --cutoff.' % (cutoff, int(old_train.sum()), MIN_RATINGS))
    if users.n_new == 0 and items.n_new == 0:
        raise DataError('cutoff %s leaves no new users and no new items (every id is seen '
                        'by the cut-off time); lower --cutoff' % cutoff)
    if new_pair.sum() < 2:
        raise DataError('cutoff %s leaves %d ratings of new users/items; expected at least 2 '
                        '(to train and to test). Lower --cutoff.' % (cutoff, int(new_pair.sum())))
    offset = rating[old_train].mean() - 1.0
    all_r = as_ratings(rows_u, rows_i, rating - offset)
    new_idx = np.flatnonzero(new_pair)
    new_test = np.zeros(len(rating), dtype=bool)
    new_test[new_idx] = random_holdout(len(new_idx), test_fraction, rng)
    return Split(users.n_old, users.n_new, items.n_old, items.n_new,
                 subset(all_r, old_train), subset(all_r, (held | ~before) & ~new_pair),
                 subset(all_r, new_pair & ~new_test), subset(all_r, new_test),
                 '%s (cut-off: %s quantile of timestamps)' % (source, cutoff), None)


def random_split(raw, *, test_fraction=0.1, seed=0, source='file'):
    """All users and items old, ratings held out at random (for ``--mode latent-split``).

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import RawRatings
    >>> from masked_opt.demo.files import random_split
    >>> raw = RawRatings(np.arange(30) % 6, np.arange(30) % 5, np.full(30, 3.0), np.arange(30))
    >>> s = random_split(raw)
    >>> s.n_users, s.n_items, s.sizes()['old_test']
    (6, 5, 3)
    """
    users = _first_seen_vocab(raw.user)
    items = _first_seen_vocab(raw.item)
    rows_u = np.array([users[x] for x in raw.user.tolist()], dtype=np.int64)
    rows_i = np.array([items[x] for x in raw.item.tolist()], dtype=np.int64)
    test = random_holdout(len(raw.rating), test_fraction, np.random.default_rng(seed))
    offset = raw.rating[~test].mean() - 1.0
    all_r = as_ratings(rows_u, rows_i, raw.rating - offset)
    empty = as_ratings([], [], [])
    return Split(len(users), 0, len(items), 0, subset(all_r, ~test), subset(all_r, test),
                 empty, empty, '%s (random %.0f%% test split)' % (source, 100 * test_fraction),
                 None)


def holdout_split(raw, *, new_users=0.0, new_items=0.1, test_fraction=0.2, seed=0,
                  source='file'):
    """Whole users and/or items held out at random: they are the new rows.

    A time split of MovieLens brings mostly new users (on MovieLens 100k with the 0.8
    cut-off, 3390 of 3427 new-pair test ratings are new user x old item and 37 involve a new
    item), so it hardly exercises item growth. This split draws ``new_items`` of the item ids
    (and ``new_users`` of the user ids) at random: every rating of theirs is a new pair
    (split ``test_fraction`` / rest into ``new_test`` / ``new_train``); the other ratings are
    old pairs, 10% of them held out as ``old_test``. Labels are shifted by the mean of the old
    training ratings, as in :func:`time_split`.

    Parameters
    ----------
    raw : RawRatings
        From :func:`load_ratings`.
    new_users, new_items : float
        Shares of the user and item ids that become new, in [0, 1); not both 0.
    test_fraction : float
        Share of new-pair ratings held out.
    seed : int
        For the draws and the hold-outs.
    source : str
        Description for the report.

    Returns
    -------
    Split

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.data import RawRatings
    >>> from masked_opt.demo.files import holdout_split
    >>> u = np.repeat(np.arange(20), 10); i = u + np.tile(np.arange(10), 20)   # 29 items
    >>> s = holdout_split(RawRatings(u, i, np.full(200, 4.0), np.arange(200)), new_items=0.2)
    >>> s.n_old_items, s.n_new_items, s.n_new_users
    (23, 6, 0)
    """
    for name, value in (('new_users', new_users), ('new_items', new_items)):
        if not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise DataError('--%s: expected a share of the ids in [0, 1) with --data (e.g. '
                            '0.1), received %r' % (name.replace('_', '-'), value))
    if new_users == 0 and new_items == 0:
        raise DataError('--new-users and --new-items are both 0: nothing to grow')
    rng = np.random.default_rng(seed)

    def draw(ids, share):
        unique = np.unique(ids)
        k = int(round(share * unique.size))
        if share > 0:
            k = min(max(k, 1), unique.size - 1)
        new = set(rng.permutation(unique)[:k].tolist())
        old_ids = [x for x in ids.tolist() if x not in new]
        vocab = grow_vocab(_first_seen_vocab(np.array(old_ids, dtype=np.int64)),
                           ids.tolist())
        return vocab, np.array([vocab.vocab[x] for x in ids.tolist()], dtype=np.int64)

    users, rows_u = draw(raw.user, new_users)
    items, rows_i = draw(raw.item, new_items)
    new_pair = (rows_u >= users.n_old) | (rows_i >= items.n_old)
    old_idx = np.flatnonzero(~new_pair)
    held = np.zeros(len(raw.rating), dtype=bool)
    held[old_idx] = random_holdout(old_idx.size, 0.1, rng)
    old_train = ~new_pair & ~held
    if old_train.sum() < MIN_RATINGS or new_pair.sum() < 2:
        raise DataError('holding out %g of the users and %g of the items leaves %d old '
                        'ratings to train on and %d new-pair ratings; expected at least %d and '
                        '2. Change --new-users/--new-items.'
                        % (new_users, new_items, int(old_train.sum()), int(new_pair.sum()),
                           MIN_RATINGS))
    offset = raw.rating[old_train].mean() - 1.0
    all_r = as_ratings(rows_u, rows_i, raw.rating - offset)
    new_idx = np.flatnonzero(new_pair)
    new_test = np.zeros(len(raw.rating), dtype=bool)
    new_test[new_idx] = random_holdout(new_idx.size, test_fraction, rng)
    what = ' and '.join('%g of the %s' % (v, n) for v, n in ((new_users, 'users'),
                                                            (new_items, 'items')) if v)
    return Split(users.n_old, users.n_new, items.n_old, items.n_new,
                 subset(all_r, old_train), subset(all_r, held),
                 subset(all_r, new_pair & ~new_test), subset(all_r, new_test),
                 '%s (new: %s, drawn at random)' % (source, what), None)
