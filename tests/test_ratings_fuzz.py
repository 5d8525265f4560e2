"""Untrusted ratings files: whatever ``--data`` holds, a clear one-line error or a run.

:func:`masked_opt.demo.files.load_ratings` either returns ratings that respect its documented
ranges (int64 ids and timestamps, finite ratings within ``MAX_RATING``, at least
``MIN_RATINGS`` of them, every value as written) or raises ``DataError`` -- never another
exception. A message about a line names ``path:line`` with the *first* bad line as an editor
counts lines: everything before it loads, and it fails again on its own. ``masked-opt demo
--data`` on such files exits 0 or 1 with a report, or 2 with one line on stderr; nothing
escapes as a traceback.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masked_opt.cli import main
from masked_opt.demo.data import MIN_RATINGS, DataError
from masked_opt.demo.files import MAX_RATING, load_ratings

INT64 = st.integers(-2 ** 63, 2 ** 63 - 1)
SMALL_ID = st.integers(0, 60)
RATING = st.one_of(st.integers(1, 5).map(float),
                   st.floats(-MAX_RATING, MAX_RATING, allow_nan=False, allow_infinity=False))
SEP = st.sampled_from(['\t', '::', ' ', '  ', '\t ', ' :: '])
GOOD = '1\t1\t3\t100'

# Tokens a field may be replaced by: other scripts' digits, numbers Python reads but the format
# does not, out-of-range and non-finite numbers, separators that are no separators.
SPECIAL = ['nan', 'NaN', 'inf', '-inf', 'Infinity', '1e308', '-1e308', '1e309', '1000001',
           '881250949', '99999999999999999999', '-9223372036854775809', '9223372036854775808',
           '\u0661', '\uff11', '1_000', '0x10', '1.5', '', ' ', '\x0c', '\x0b', '\u2028',
           '\u00a0', '\ufeff1', '\r', '1\r', '3.', '.5', '-0', '+7', '1e5', '1E-3', '5 5',
           '9' * 5000, '0' * 40 + '1']
BEYOND_INT64 = st.one_of(st.integers(2 ** 63, 10 ** 25), st.integers(-10 ** 25, -2 ** 63 - 1))
TOKEN = st.one_of(st.sampled_from(SPECIAL), st.text(max_size=12), BEYOND_INT64.map(str),
                  st.integers(-10 ** 25, 10 ** 25).map(str), st.floats().map(repr))


@st.composite
def valid_lines(draw, min_size=0, max_size=30):
    """``(lines, rows)``: well-formed lines and the values they hold."""
    rows = draw(st.lists(st.tuples(st.one_of(SMALL_ID, INT64), st.one_of(SMALL_ID, INT64),
                                   RATING, INT64), min_size=min_size, max_size=max_size))
    lines = []
    for row in rows:
        sep = draw(SEP)
        lines.append(sep.join([str(row[0]), str(row[1]), repr(row[2]), str(row[3])]))
    return lines, rows


@st.composite
def corrupted_text(draw):
    """A ratings file with some lines replaced by junk, or fields replaced by odd tokens."""
    # Often enough valid lines that one bad field is the only thing wrong with the file.
    lines, _ = draw(valid_lines(min_size=draw(st.sampled_from([0, MIN_RATINGS])), max_size=30))
    for _ in range(draw(st.sampled_from([1, 0, 2, 3]))):
        position = draw(st.integers(0, len(lines)))
        if draw(st.booleans()):
            junk = draw(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL)))
        else:
            fields = GOOD.split('\t')
            fields[draw(st.integers(0, 3))] = draw(TOKEN)
            junk = draw(SEP).join(fields)
        lines.insert(position, junk)
    ending = draw(st.sampled_from(['\n', '\r\n']))
    return draw(st.sampled_from(['', '\ufeff'])) + ending.join(lines) + draw(
        st.sampled_from(['', ending]))


def _write(tmp_path, text, name='u.data'):
    path = tmp_path / name
    path.write_bytes(text.encode('utf-8') if isinstance(text, str) else text)
    return str(path)


def _check_loaded(raw):
    n = len(raw.rating)
    assert n >= MIN_RATINGS
    for array, dtype in zip(raw, (np.int64, np.int64, np.float64, np.int64), strict=True):
        assert array.dtype == dtype and array.shape == (n,)
    assert np.isfinite(raw.rating).all() and (np.abs(raw.rating) <= MAX_RATING).all()


def _check_refusal(tmp_path, path, text, err):
    """One line; a line-level message names the first bad line (as an editor counts)."""
    message = str(err)
    assert '\n' not in message and message.startswith(path), message
    line = re.match(re.escape(path) + r':(\d+): ', message)
    if line is None:
        assert re.match(re.escape(path) + r' (holds \d+ ratings; expected at least %d|is not '
                        r'a text file)' % MIN_RATINGS, message), message
        return
    number = int(line.group(1))
    lines = text.split('\n')
    assert 1 <= number <= len(lines)
    padding = [GOOD] * MIN_RATINGS
    load_ratings(_write(tmp_path, '\n'.join(lines[:number - 1] + padding), 'before.data'))
    with pytest.raises(DataError, match=r'before\.data:%d: ' % number):
        load_ratings(_write(tmp_path, '\n'.join(lines[:number] + padding), 'before.data'))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=valid_lines(min_size=MIN_RATINGS, max_size=40), data=st.data())
def test_valid_files_load_every_value_as_written(tmp_path, drawn, data):
    lines, rows = drawn
    position = data.draw(st.integers(0, len(lines)))
    lines.insert(position, data.draw(st.sampled_from(['', ' ', '\t', '\r', '\x0c'])))  # blank
    text = data.draw(st.sampled_from(['', '\ufeff'])) + data.draw(
        st.sampled_from(['\n', '\r\n'])).join(lines)
    raw = load_ratings(_write(tmp_path, text))
    _check_loaded(raw)
    assert raw.user.tolist() == [r[0] for r in rows]
    assert raw.item.tolist() == [r[1] for r in rows]
    assert raw.rating.tolist() == [r[2] for r in rows]
    assert raw.timestamp.tolist() == [r[3] for r in rows]


@settings(max_examples=max(200, settings.default.max_examples),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(corrupted_text(), st.text(max_size=200)))
def test_malformed_files_load_cleanly_or_name_their_first_bad_line(tmp_path, text):
    path = _write(tmp_path, text)
    try:
        raw = load_ratings(path)
    except DataError as err:
        _check_refusal(tmp_path, path, text, err)
    else:
        _check_loaded(raw)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300))
def test_bytes_that_are_not_text_are_a_data_error(tmp_path, blob):
    path = _write(tmp_path, blob)
    try:
        text = blob.decode('utf-8')
    except UnicodeDecodeError:
        with pytest.raises(DataError, match=r'is not a text file \(expected UTF-8 lines'):
            load_ratings(path)
        return
    try:
        load_ratings(path)
    except DataError as err:
        _check_refusal(tmp_path, path, text.removeprefix('\ufeff'), err)


# ------------------------------------------------------------------ the command line
@st.composite
def demo_files(draw):
    """A small ratings file the demo could run on, with drawn scales and drawn damage."""
    n_users, n_items = draw(st.integers(6, 16)), draw(st.integers(6, 12))
    scale = draw(st.sampled_from(['stars', 'constant', 'huge', 'tiny', 'negative']))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    lines = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=5, replace=False):
            rating = {'stars': int(rng.integers(1, 6)), 'constant': 1,
                      'huge': float(rng.choice([-1, 1]) * MAX_RATING), 'tiny': 1e-300,
                      'negative': -int(rng.integers(1, 6))}[scale]
            lines.append('%d\t%d\t%r\t%d' % (u, i, rating, 1000 + 10 * u + int(i)))
    for _ in range(draw(st.integers(0, 1))):
        fields = GOOD.split('\t')
        fields[draw(st.integers(0, 3))] = draw(TOKEN)
        lines.insert(draw(st.integers(0, len(lines))), '\t'.join(fields))
    return '\n'.join(lines) + '\n'


@pytest.mark.slow
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=demo_files(), split=st.sampled_from([[], ['--new-items', '0.25'],
                                                 ['--new-users', '0.25', '--new-items', '0.2'],
                                                 ['--cutoff', '0.5'],
                                                 ['--mode', 'latent-split']]))
def test_cli_on_fuzzed_files_reports_or_fails_in_one_line(tmp_path, capsys, text, split):
    path = _write(tmp_path, text)
    code = main(['demo', '--data', path, *split, '--epochs', '1', '--new-epochs', '1',
                 '--seeds', '1', '--batch-size', '64', '--no-progress'])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    if code == 2:
        assert out == '' and err.count('\n') == 1 and err.startswith('masked-opt: error: '), err
    else:
        assert out.startswith('masked-opt demo: ') and 'Traceback' not in err


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=corrupted_text())
def test_cli_refuses_a_bad_line_in_one_line_naming_it(tmp_path, capsys, text):
    path = _write(tmp_path, text)
    try:
        load_ratings(path)
    except DataError as err:
        expected = str(err)
    else:
        return                       # drawn valid: the slow test above runs such files
    assert main(['demo', '--data', path, '--no-progress']) == 2
    out, err = capsys.readouterr()
    assert out == '' and err == 'masked-opt: error: %s\n' % expected
