"""The demo's data: synthetic splits, the MovieLens-format loader (malformed files included),
and the time split that decides which users and items are new."""
import numpy as np
import pytest
from ratings_files import movielens_lines, write

from masked_opt.demo.data import (
    MIN_RATINGS,
    DataError,
    Ratings,
    RawRatings,
    pair_types,
    validation_split,
)
from masked_opt.demo.files import holdout_split, load_ratings, random_split, time_split
from masked_opt.demo.synthetic import synthetic_split


# ------------------------------------------------------------------ loader
@pytest.mark.parametrize('sep', ['\t', '::', ' '])
def test_load_ratings_reads_movielens_formats(tmp_path, sep):
    text = movielens_lines(sep=sep)
    path = write(tmp_path, '\n' + text.replace('\n', '\n\n', 3))  # blank lines are skipped
    raw = load_ratings(path)
    rows = [line.split(sep) for line in text.splitlines()]
    assert raw.user.tolist() == [int(r[0]) for r in rows]
    assert raw.item.tolist() == [int(r[1]) for r in rows]
    assert raw.rating.tolist() == [float(r[2]) for r in rows]
    assert raw.timestamp.tolist() == [int(r[3]) for r in rows]


@pytest.mark.parametrize('bad_line, match', [
    ('1\t2\t3', r':3: expected 4 fields .* received 3'),
    ('1\t2\t3\t4\t5', r':3: expected 4 fields .* received 5'),
    ('u1\t2\t3\t4', r':3: expected integer user id'),
    ('1\t2\t3\t4.5', r':3: expected integer user id, item id and timestamp'),
    ('1\t2\tfive\t4', r":3: expected a finite number as rating, received 'five'"),
    ('1\t2\tnan\t4', r":3: expected a finite number as rating, received 'nan'"),
    ('1\t2\tinf\t4', r":3: expected a finite number as rating, received 'inf'"),
    # Python's int/float take these; no MovieLens-format writer produces them.
    ('1_000\t2\t3\t4', r':3: expected integer user id'),
    ('\u0661\t2\t3\t4', r':3: expected integer user id'),               # ARABIC-INDIC ONE
    ('1\t2\tinfinity\t4', r":3: expected a finite number as rating, received 'infinity'"),
    ('1\t2\t3\u20284', r':3: expected 4 fields'),           # not a line break, not a tab
    # Beyond int64: a 20-digit hashed id (OverflowError escaped before).
    ('12345678901234567890\t2\t3\t4', r':3: user id 12345678901234567890 does not fit a '
     r'64-bit integer \(expected -2\*\*63 to 2\*\*63 - 1\); renumber the ids'),
    ('1\t-9223372036854775809\t3\t4', r':3: item id -9223372036854775809 does not fit'),
    ('1' * 5000 + '\t2\t3\t4', r':3: user id 1{40} does not fit'),  # int() refuses 4300+ digits
    ('1\t2\t3\t99999999999999999999', r':3: timestamp 99999999999999999999 does not fit a '
     r'64-bit integer .* seconds since 1970'),
    # Finite but huge (training overflowed and blamed the embedding before), or a timestamp in
    # the rating column.
    ('1\t2\t1e308\t4', r':3: rating 1e308 is outside \[-1e6, 1e6\] \(expected scores like 1-5 '
     r'.*check that the columns are user, item, rating, timestamp, or rescale'),
    ('1\t2\t881250949\t4', r':3: rating 881250949 is outside'),
    ('1\t2\t-1000000.5\t4', r':3: rating -1000000.5 is outside'),
])
def test_load_ratings_malformed_line_names_its_number(tmp_path, bad_line, match):
    lines = movielens_lines().splitlines()
    lines.insert(2, bad_line)
    path = write(tmp_path, '\n'.join(lines))
    with pytest.raises(DataError, match=match):
        load_ratings(path)


def test_load_ratings_accepts_the_edges_of_its_ranges(tmp_path):
    lines = movielens_lines().splitlines()
    lines[0] = '9223372036854775807\t-9223372036854775808\t1e6\t-9223372036854775808'
    lines[1] = '+7\t-%s8\t-1E+6\t9223372036854775807\r' % ('0' * 30)  # sign, zeros, CRLF
    path = write(tmp_path, '\ufeff' + '\n'.join(lines))  # a byte-order mark (Excel) is no data
    raw = load_ratings(path)
    assert raw.user[:2].tolist() == [2 ** 63 - 1, 7] and raw.item[:2].tolist() == [-2 ** 63, -8]
    assert raw.rating[:2].tolist() == [1e6, -1e6]
    assert raw.timestamp[:2].tolist() == [-2 ** 63, 2 ** 63 - 1]


def test_line_numbers_are_the_editors(tmp_path):
    # A form feed ends a line for str.splitlines, not for an editor or `sed -n 5p`: the line
    # number in a message must be the one they show (it said 6 here before).
    lines = movielens_lines().splitlines()
    lines[1] += '\x0c'
    lines[4] = '1\t2\t3'
    with pytest.raises(DataError, match=r'u\.data:5: expected 4 fields'):
        load_ratings(write(tmp_path, '\n'.join(lines)))


def test_a_lone_carriage_return_does_not_end_a_line(tmp_path):
    # Python's text files end a line there (universal newlines), `sed` and the line numbers in
    # messages do not: an old-Mac line ending is a line with too many fields, said so.
    lines = movielens_lines().splitlines()
    lines[1] = lines[1] + '\r' + lines[2]
    with pytest.raises(DataError, match=r'u\.data:2: expected 4 fields .* received 7: .* \(a '
                       r'carriage return inside the line: lines must end with a newline'):
        load_ratings(write(tmp_path, '\n'.join(lines)))


def test_a_cut_off_byte_order_mark_is_not_an_empty_file(tmp_path):
    # Python's utf-8-sig text reader returns '' for these bytes; they are not UTF-8 text.
    for blob in (b'\xef', b'\xef\xbb'):
        (tmp_path / 'cut.data').write_bytes(blob)
        with pytest.raises(DataError, match='not a text file'):
            load_ratings(str(tmp_path / 'cut.data'))


def test_load_ratings_missing_short_and_binary_files(tmp_path):
    with pytest.raises(DataError, match='cannot read ratings file .*nope.data: No such file'):
        load_ratings(str(tmp_path / 'nope.data'))
    with pytest.raises(DataError, match='cannot read'):
        load_ratings(str(tmp_path))  # a folder
    short = '\n'.join('1\t%d\t3\t%d' % (i, i) for i in range(MIN_RATINGS - 1))
    with pytest.raises(DataError, match='holds %d ratings; expected at least %d'
                       % (MIN_RATINGS - 1, MIN_RATINGS)):
        load_ratings(write(tmp_path, short))
    with pytest.raises(DataError, match='holds 0 ratings'):
        load_ratings(write(tmp_path, ''))
    binary = tmp_path / 'u.bin'
    binary.write_bytes(b'\xff\xfe\x00\x81' * 50)
    with pytest.raises(DataError, match='not a text file'):
        load_ratings(str(binary))


# ------------------------------------------------------------------ time split
def test_time_split_new_means_first_seen_after_the_cutoff(tmp_path):
    raw = load_ratings(write(tmp_path, movielens_lines()))
    split = time_split(raw, 0.5, seed=1)
    t0 = np.quantile(raw.timestamp, 0.5, method='lower')
    first_user = {u: raw.timestamp[raw.user == u].min() for u in set(raw.user.tolist())}
    first_item = {i: raw.timestamp[raw.item == i].min() for i in set(raw.item.tolist())}
    assert split.n_old_users == sum(t <= t0 for t in first_user.values())
    assert split.n_new_users == sum(t > t0 for t in first_user.values())
    assert split.n_old_items == sum(t <= t0 for t in first_item.values())
    assert split.n_new_items == sum(t > t0 for t in first_item.values())
    assert split.n_new_users > 0 and split.n_new_items > 0
    for part in (split.old_train, split.old_test):
        assert (part.user < split.n_old_users).all() and (part.item < split.n_old_items).all()
    for part in (split.new_train, split.new_test):
        assert ((part.user >= split.n_old_users) | (part.item >= split.n_old_items)).all()
        assert (part.user < split.n_users).all() and (part.item < split.n_items).all()
    sizes = split.sizes()
    assert sizes['old_train'] + sizes['old_test'] + sizes['new_train'] + sizes['new_test'] \
        == len(raw.rating)
    assert sizes['old_train'] <= int((raw.timestamp <= t0).sum())
    # Labels are the ratings shifted by one constant: differences are rating differences.
    label = np.concatenate([p.label for p in split[4:8]])
    assert np.allclose(np.sort(label - label.min()), np.sort(raw.rating - raw.rating.min()),
                       atol=1e-5)
    assert abs(split.old_train.label.mean() - 1.0) < 1e-5


@pytest.mark.parametrize('cutoff, match', [
    (0.0, 'strictly between 0 and 1'), (1.0, 'strictly between 0 and 1'),
    (1.5, 'strictly between 0 and 1'), ('0.5', 'strictly between 0 and 1'),
    (0.05, 'old ratings to train on; expected at least'),
])
def test_time_split_bad_cutoff(tmp_path, cutoff, match):
    raw = load_ratings(write(tmp_path, movielens_lines()))
    with pytest.raises(DataError, match=match):
        time_split(raw, cutoff)


def test_time_split_cutoff_leaving_no_new_users_or_items():
    n = 60
    raw = RawRatings(np.arange(n) % 5, np.arange(n) % 4, np.full(n, 3.0), np.arange(n))
    with pytest.raises(DataError, match='no new users and no new items.*lower --cutoff'):
        time_split(raw, 0.9)


# ------------------------------------------------------------------ synthetic and random splits
def test_synthetic_split_shapes_and_reproducible():
    a = synthetic_split(50, 40, 10, 8, per_user=6, per_new_item=4, seed=3)
    b = synthetic_split(50, 40, 10, 8, per_user=6, per_new_item=4, seed=3)
    c = synthetic_split(50, 40, 10, 8, per_user=6, per_new_item=4, seed=4)
    for x, y in zip(a[4:8], b[4:8], strict=True):
        for u, v in zip(x, y, strict=True):
            assert np.array_equal(u, v)
    assert not np.array_equal(a.old_train.label, c.old_train.label)
    assert (a.n_users, a.n_items, a.noise) == (60, 48, 0.1)
    assert a.sizes()['old_train'] + a.sizes()['old_test'] == 50 * 6
    # Each new user rates 6 items, each new item gets 4 extra ratings (pairs are unique).
    assert 10 * 6 <= a.sizes()['new_train'] + a.sizes()['new_test'] <= 10 * 6 + 8 * 4
    for part in (a.old_train, a.old_test):
        assert (part.user < 50).all() and (part.item < 40).all()
    for part in (a.new_train, a.new_test):
        assert ((part.user >= 50) | (part.item >= 40)).all()
    pairs = np.concatenate([a.old_train.user * 1000 + a.old_train.item,
                            a.old_test.user * 1000 + a.old_test.item])
    assert len(np.unique(pairs)) == len(pairs)
    with pytest.raises(DataError, match='per_user=41: expected at most n_old_items=40'):
        synthetic_split(50, 40, 10, 8, per_user=41)


def test_random_split_keeps_every_rating():
    n = 100
    raw = RawRatings(np.arange(n) % 7 + 100, np.arange(n) % 11, np.arange(n) % 5 + 1.0,
                     np.arange(n))
    s = random_split(raw, test_fraction=0.2, seed=0)
    assert (s.n_users, s.n_items, s.n_new_users, s.n_new_items) == (7, 11, 0, 0)
    assert s.sizes()['old_train'] == 80 and s.sizes()['old_test'] == 20
    assert s.sizes()['new_train'] == 0


def test_random_split_label_shift_comes_from_training_ratings_only():
    # Test ratings far from the training ones: if they entered the shift, the training labels
    # would not average 1 (the forum model's 1 - <u, v> with zero rows).
    rng = np.random.default_rng(0)
    pairs = rng.permutation(20 * 25)[:400]          # distinct (user, item) pairs
    u, i = pairs // 25, pairs % 25
    raw = RawRatings(u, i, rng.uniform(1, 5, 400), np.arange(400))
    s = random_split(raw, seed=3)
    train_mean = s.old_train.label.astype(np.float64).mean()
    assert abs(train_mean - 1.0) < 1e-6
    # Change only the held-out ratings: the training labels stay exactly as they were.
    users = {x: k for k, x in enumerate(dict.fromkeys(u.tolist()))}
    items = {x: k for k, x in enumerate(dict.fromkeys(i.tolist()))}
    rows = list(zip([users[x] for x in u.tolist()], [items[x] for x in i.tolist()], strict=True))
    test_keys = set(zip(s.old_test.user.tolist(), s.old_test.item.tolist(), strict=True))
    held = np.array([r in test_keys for r in rows])
    shifted = raw.rating.copy()
    shifted[held] += 100.0
    again = random_split(RawRatings(u, i, shifted, raw.timestamp), seed=3)
    assert np.array_equal(again.old_train.label, s.old_train.label)


def test_time_split_label_shift_comes_from_old_training_ratings_only():
    raw = RawRatings(np.repeat(np.arange(10), 5), np.tile(np.arange(5), 10) +
                     10 * (np.repeat(np.arange(10), 5) >= 8), np.full(50, 4.0), np.arange(50))
    s = time_split(raw, 0.8)
    late = np.arange(50) > np.quantile(np.arange(50), 0.8, method='lower')
    shifted = raw.rating.copy()
    shifted[late] = 1.0                            # only ratings after the cut-off change
    again = time_split(RawRatings(raw.user, raw.item, shifted, raw.timestamp), 0.8)
    assert np.array_equal(again.old_train.label, s.old_train.label)


def test_holdout_split_holds_out_whole_items():
    rng = np.random.default_rng(1)
    u, i = rng.integers(0, 40, 2000), rng.integers(0, 50, 2000)
    raw = RawRatings(u, i, rng.integers(1, 6, 2000).astype(float), np.arange(2000))
    s = holdout_split(raw, new_items=0.2, seed=4)
    assert (s.n_old_items, s.n_new_items, s.n_new_users) == (40, 10, 0)
    new_pairs = np.concatenate([s.new_train.item, s.new_test.item])
    old_pairs = np.concatenate([s.old_train.item, s.old_test.item])
    assert (new_pairs >= s.n_old_items).all() and (old_pairs < s.n_old_items).all()
    assert len(new_pairs) + len(old_pairs) == 2000           # every rating is somewhere
    assert abs(s.old_train.label.astype(np.float64).mean() - 1.0) < 1e-6
    both = holdout_split(raw, new_users=0.1, new_items=0.1, seed=4)
    assert both.n_new_users == 4 and both.n_new_items == 5
    assert set(pair_types(both.new_test, both.n_old_users, both.n_old_items)) <= {0, 1, 2}
    with pytest.raises(DataError, match=r'--new-items: expected a share of the ids in \[0, 1\)'):
        holdout_split(raw, new_items=3)
    with pytest.raises(DataError, match='nothing to grow'):
        holdout_split(raw, new_items=0.0)


def test_validation_split_is_a_partition():
    r = synthetic_split(30, 20, 5, 4, per_user=5).old_train
    fit, val = validation_split(r, 0.1, seed=2)
    assert len(val.label) == round(0.1 * len(r.label)) and len(fit.label) + len(val.label) == len(
        r.label)
    key = lambda x: sorted(zip(x.user.tolist(), x.item.tolist(), strict=True))  # noqa: E731
    assert key(Ratings(*(np.concatenate(p) for p in zip(fit, val, strict=True)))) == key(r)
