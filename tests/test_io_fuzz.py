"""Untrusted mask files: every field read from a file is validated.

:func:`masked_opt.io.load_masks` opens files from anyone. Whatever a file holds, loading it
either gives masks that the helpers (``train_rows``, ``scale_rows``, ...) could have built, or
raises ``ValueError``/``TypeError`` -- never another exception, never a scale outside
``[0, 1]`` (an inside-scale of NaN makes every weight NaN on the first step).

The regression tests corrupt one field of a valid file at a time; the hypothesis test corrupts
the manifest, the arrays and the raw bytes in drawn ways.
"""
import io as _pyio
import json
import math
import os
import zipfile

import json_tree
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from payloads import assert_payload_is_live, payload_array

import masked_opt as mo
from masked_opt import io
from masked_opt.masks import _From, _Indices, _Scales

MASKS = {
    'a_weight': mo.train_rows_from(2),
    'b_weight': mo.train_rows([0, 3]) & mo.train_cols([1]),
    'c_weight': mo.freeze_rows([1]) & mo.freeze_cols([0, 2]),
    'd_weight': mo.scale_rows([0, 0.25, 1, 1]) & mo.scale_cols([1, 0.5, 0]),
}
SHAPE = (4, 3)


def _valid_parts(tmp_path):
    """(manifest dict, {array name: array}) of a valid file holding MASKS."""
    path = str(tmp_path / 'valid.npz')
    io.save_masks(path, MASKS)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop('manifest'))), arrays


def _write(tmp_path, manifest, arrays, name='bad.npz'):
    """Write a mask file from parts; ``manifest`` may be a dict (dumped) or the raw array."""
    path = str(tmp_path / name)
    out = dict(arrays)
    if manifest is not None:
        out['manifest'] = (np.array(json.dumps(manifest)) if isinstance(manifest, (dict, list))
                           else manifest)
    np.savez(path, **out)
    return path


def _entry(manifest, name):
    return next(e for e in manifest['masks'] if e['name'] == name)


def _load_refused(path, match=None):
    """load_masks raises ValueError or TypeError (matching ``match``) and nothing else."""
    with pytest.raises((ValueError, TypeError), match=match) as info:
        io.load_masks(path)
    return info.value


# ------------------------------------------------ the inside-scale of an indices entry

@pytest.mark.parametrize('inside', [2.0, -1.0, float('nan'), float('inf'), float('-inf'), 0.5,
                                    'a string', None, True])
@pytest.mark.parametrize('mask, helper', [('b_weight', 'train_rows'),
                                          ('c_weight', 'freeze_cols')])
def test_indices_inside_scale_other_than_the_helpers_is_refused(tmp_path, inside, mask, helper):
    manifest, arrays = _valid_parts(tmp_path)
    entry = _entry(manifest, mask)
    spec = next(s for s in entry['rows'] + entry['cols'] if s['helper'] == helper)
    spec['inside'] = inside
    err = _load_refused(_write(tmp_path, manifest, arrays), match='inside')
    assert mask in str(err)  # names the mask


def test_nan_inside_scale_never_reaches_a_weight(tmp_path):
    """The reproduction of the issue: a crafted file with inside NaN made every weight NaN."""
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['rows'][0]['inside'] = float('nan')
    path = _write(tmp_path, manifest, arrays)
    with pytest.raises(ValueError, match='inside'):
        masks = io.load_masks(path)
        # Today's code gets here: the scales are NaN and would train.
        rows, _ = masks['b_weight'].resolve(SHAPE, 'b_weight')
        assert np.all((rows >= 0) & (rows <= 1)), rows


# ------------------------------------------------ arrays: values, dtypes, shapes

@pytest.mark.parametrize('values, match', [
    (np.array([0, 2.0, 1, 1]), r'\[0, 1\]'),
    (np.array([0, -1.0, 1, 1]), r'\[0, 1\]'),
    (np.array([0, np.nan, 1, 1]), r'\[0, 1\]'),
    (np.array([0, np.inf, 1, 1]), r'\[0, 1\]'),
    (np.array([[0, 1], [1, 1.0]]), '1-D'),
    (np.array(0.5), '1-D'),
    (np.array(['0', '1', '1', '1']), 'numbers'),
    (np.array([0, 0.5 + 1j, 1, 1]), 'complex'),
    (np.array([0, 1, 1, 1], dtype='m8[s]'), 'timedelta'),
])
def test_scales_array_is_validated_like_scale_rows(tmp_path, values, match):
    manifest, arrays = _valid_parts(tmp_path)
    key = _entry(manifest, 'd_weight')['rows'][0]['array']
    arrays[key] = values
    _load_refused(_write(tmp_path, manifest, arrays), match=match)


@pytest.mark.parametrize('values, match', [
    (np.array([1, 1]), 'repeated'),
    (np.array([-1, 3]), 'non-negative'),
    (np.array([0.5, 3]), 'integer'),
    (np.array([np.nan, 3]), 'integer'),
    (np.array([True, False]), 'integer'),
    (np.array(['0', '3']), 'integer'),
    (np.array([[0, 3]]), '1-D'),
    (np.array(3), '1-D'),
    (np.array([0, 3], dtype='m8[s]'), 'timedelta'),
])
def test_indices_array_is_validated_like_train_rows(tmp_path, values, match):
    manifest, arrays = _valid_parts(tmp_path)
    key = _entry(manifest, 'b_weight')['rows'][0]['array']
    arrays[key] = values
    _load_refused(_write(tmp_path, manifest, arrays), match=match)


def test_missing_array_is_refused(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    key = _entry(manifest, 'b_weight')['rows'][0]['array']
    del arrays[key]
    _load_refused(_write(tmp_path, manifest, arrays), match='lacks array')


def test_array_no_mask_uses_is_refused(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    arrays['a99'] = np.array([1, 2])
    _load_refused(_write(tmp_path, manifest, arrays), match='a99')


# ------------------------------------------------ the manifest: fields and their types

@pytest.mark.parametrize('start', [2.5, 2.0, '2', True, None, -1, [2], 1e300])
def test_train_rows_from_start_must_be_a_non_negative_integer(tmp_path, start):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'a_weight')['rows'][0]['start'] = start
    _load_refused(_write(tmp_path, manifest, arrays), match='start')


@pytest.mark.parametrize('helper', ['scale_rows', 'train_cols', 'eval', '', None, 3])
def test_indices_helper_must_be_a_row_indices_helper(tmp_path, helper):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['rows'][0]['helper'] = helper
    _load_refused(_write(tmp_path, manifest, arrays), match='helper')


@pytest.mark.parametrize('helper', ['scale_rows', 'train_rows', None])
def test_scales_helper_must_match_its_axis(tmp_path, helper):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'd_weight')['cols'][0]['helper'] = helper
    _load_refused(_write(tmp_path, manifest, arrays), match='helper')


def test_train_rows_from_on_columns_is_refused(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    entry = _entry(manifest, 'a_weight')
    entry['cols'], entry['rows'] = entry['rows'], []
    _load_refused(_write(tmp_path, manifest, arrays), match='cols')


@pytest.mark.parametrize('kind', ['pickle', None, 1, ['from']])
def test_unknown_axis_kind_is_refused(tmp_path, kind):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'a_weight')['rows'][0]['kind'] = kind
    _load_refused(_write(tmp_path, manifest, arrays), match='kind')


@pytest.mark.parametrize('where, key', [
    ('header', 'format'), ('header', 'masks'),
    ('entry', 'name'), ('entry', 'rows'), ('entry', 'cols'),
    ('from', 'kind'), ('from', 'start'),
    ('indices', 'helper'), ('indices', 'inside'), ('indices', 'array'),
    ('scales', 'helper'), ('scales', 'array'),
])
def test_missing_key_is_refused(tmp_path, where, key):
    manifest, arrays = _valid_parts(tmp_path)
    target = {'header': manifest, 'entry': _entry(manifest, 'b_weight'),
              'from': _entry(manifest, 'a_weight')['rows'][0],
              'indices': _entry(manifest, 'b_weight')['rows'][0],
              'scales': _entry(manifest, 'd_weight')['rows'][0]}[where]
    del target[key]
    _load_refused(_write(tmp_path, manifest, arrays), match=repr(key).replace('[', r'\['))


def test_unknown_key_is_refused(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['rows'][0]['scale'] = 2.0
    _load_refused(_write(tmp_path, manifest, arrays), match='scale')


@pytest.mark.parametrize('name', [None, 3, ['w'], ''])
def test_mask_name_must_be_a_non_empty_string(tmp_path, name):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['name'] = name
    _load_refused(_write(tmp_path, manifest, arrays), match='name')


def test_repeated_mask_name_is_refused(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['name'] = 'a_weight'
    _load_refused(_write(tmp_path, manifest, arrays), match='a_weight')


@pytest.mark.parametrize('field, value', [
    ('masks', {'w': []}), ('masks', None), ('masks', 'w'), ('masks', [1]),
    ('rows', {'kind': 'from', 'start': 1}), ('rows', None), ('rows', ['from']),
])
def test_wrong_container_types_are_refused(tmp_path, field, value):
    manifest, arrays = _valid_parts(tmp_path)
    if field == 'masks':
        manifest['masks'] = value
    else:
        _entry(manifest, 'a_weight')[field] = value
    _load_refused(_write(tmp_path, manifest, arrays), match=field)


@pytest.mark.parametrize('fmt', ['masked_opt.masks/2', None, 1, ''])
def test_wrong_format_tag_is_refused(tmp_path, fmt):
    manifest, arrays = _valid_parts(tmp_path)
    manifest['format'] = fmt
    _load_refused(_write(tmp_path, manifest, arrays), match='format')


@pytest.mark.parametrize('text', ['{"format": ', '[]', '5', 'null', '"masks"', 'NaN',
                                  '[' * 100000 + ']' * 100000, ''])
def test_bad_json_manifest_is_refused(tmp_path, text):
    _, arrays = _valid_parts(tmp_path)
    _load_refused(_write(tmp_path, np.array(text), arrays), match='manifest')


@pytest.mark.parametrize('manifest', [np.array(5), np.array([1, 2]), np.array(b'{}'),
                                      np.array(['{}', '{}'])])
def test_manifest_that_is_not_one_string_is_refused(tmp_path, manifest):
    _, arrays = _valid_parts(tmp_path)
    _load_refused(_write(tmp_path, manifest, arrays), match='manifest')


def test_missing_manifest_is_refused(tmp_path):
    _, arrays = _valid_parts(tmp_path)
    _load_refused(_write(tmp_path, None, arrays), match='manifest')


def _npy_file(tmp_path):
    path = str(tmp_path / 'plain.npy')
    np.save(path, np.arange(3))
    return open(path, 'rb').read()


def _zip_without_npy(tmp_path):
    buf = _pyio.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('manifest.npy', b'not an npy file')
    return buf.getvalue()


@pytest.mark.parametrize('make', [
    lambda tmp_path: b'',
    lambda tmp_path: b'\x00' * 100,
    lambda tmp_path: b'PK\x03\x04' + b'\x00' * 40,
    lambda tmp_path: open(str(tmp_path / 'valid.npz'), 'rb').read()[:200],
    lambda tmp_path: open(str(tmp_path / 'valid.npz'), 'rb').read()[:-30],
    _npy_file,
    _zip_without_npy,
], ids=['empty', 'zeros', 'zip-magic', 'head', 'truncated', 'npy', 'zip-not-npy'])
def test_file_that_is_not_an_npz_is_refused(tmp_path, make):
    _valid_parts(tmp_path)
    path = tmp_path / 'bad.npz'
    path.write_bytes(make(tmp_path))
    _load_refused(str(path))


@pytest.mark.parametrize('where', ['array', 'manifest'])
def test_pickled_member_is_refused_and_never_unpickled(tmp_path, where):
    """An object array (a pickle inside the .npz) whose unpickling would create a folder: the
    file is refused and the folder never appears, so nothing was unpickled, not merely an
    unpickled object array refused afterwards."""
    manifest, arrays = _valid_parts(tmp_path)
    marker = str(tmp_path / 'payload-ran')
    key = _entry(manifest, 'b_weight')['rows'][0]['array'] if where == 'array' else 'manifest'
    arrays['manifest'] = np.array(json.dumps(manifest))
    arrays[key] = payload_array(marker)
    path = str(tmp_path / 'bad.npz')
    np.savez(path, **arrays)
    _load_refused(path)
    assert not os.path.exists(marker), 'load_masks unpickled the payload'
    assert_payload_is_live(path, key, marker)


def test_error_says_what_to_do(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    _entry(manifest, 'b_weight')['rows'][0]['inside'] = 2.0
    err = str(_load_refused(_write(tmp_path, manifest, arrays)))
    assert 'bad.npz' in err and "'b_weight'" in err   # where
    assert '2.0' in err                                # what was received
    assert '1.0' in err                                # what was expected (train_rows)
    assert 'save_masks' in err                         # how to fix


def test_valid_file_still_loads(tmp_path):
    manifest, arrays = _valid_parts(tmp_path)
    back = io.load_masks(_write(tmp_path, manifest, arrays, name='again.npz'))
    assert back == MASKS


# ------------------------------------------------ fuzz: drawn corruptions of a valid file

def _helper_built(mask):
    """The same mask rebuilt by the public helpers from what it holds (spec by spec)."""
    out = mo.Mask()
    for axis, specs in (('rows', mask.rows), ('cols', mask.cols)):
        for spec in specs:
            if isinstance(spec, _From):
                assert axis == 'rows'
                out = out & mo.train_rows_from(spec.start)
            elif isinstance(spec, _Indices):
                assert spec.inside == {'train': 1.0, 'freeze': 0.0}[spec.helper.split('_')[0]]
                assert spec.helper.endswith('_' + axis)
                out = out & getattr(mo, spec.helper)(spec.indices)
            else:
                assert isinstance(spec, _Scales), spec
                assert spec.helper == 'scale_' + axis
                out = out & getattr(mo, spec.helper)(spec.values)
    return out


def _check_loaded(masks):
    assert isinstance(masks, dict)
    for name, mask in masks.items():
        assert isinstance(name, str) and name
        assert mask == _helper_built(mask), name
        for spec in mask.rows + mask.cols:
            if isinstance(spec, _Indices):
                assert spec.inside in (0.0, 1.0)
                assert spec.indices.dtype == np.int64
            if isinstance(spec, _Scales):
                assert spec.values.dtype == np.float64
                assert np.all((spec.values >= 0) & (spec.values <= 1)), spec.values
        try:
            rows, cols = mask.resolve(SHAPE, name)
        except ValueError:
            continue  # e.g. an index past the end of this shape: refused at plan time
        for scales in (rows, cols):
            if scales is not None:
                assert np.all(np.isfinite(scales) & (scales >= 0) & (scales <= 1)), scales


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2 ** 70) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.sampled_from(['from', 'indices', 'scales', 'train_rows',
                                             'freeze_cols', 'scale_rows', 'a0', 'a1',
                                             'masked_opt.masks/1', 'b_weight']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6)

_arrays = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.float64, np.float32, np.float16,
                           np.bool_, np.complex64, 'U3', 'S2', 'm8[s]', '>f8', '<i2']),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5))


@st.composite
def _corruptions(draw):
    """A list of edits: ('set'|'del', path, key, value) on the manifest, ('array', ...) or
    ('bytes', ...) on the file."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        edits.append(draw(st.sampled_from(['set', 'set', 'del', 'array', 'array', 'drop',
                                           'text', 'bytes'])))
    return edits, draw(st.randoms(use_true_random=False))


def _apply(edits, rnd, manifest, arrays, data):
    """Apply drawn edits; returns (manifest or raw text, arrays, raw-byte edit or None)."""
    text, byte_edit = None, None
    for edit in edits:
        if edit in ('set', 'del'):
            spots = list(json_tree.spots(manifest))
            if not spots or text is not None:
                continue
            path, key = rnd.choice(spots)
            parent = json_tree.at(manifest, path)
            if edit == 'del':
                del parent[key]
            else:
                parent[key] = data.draw(_json, label='json value')
        elif edit == 'array':
            key = rnd.choice(sorted(arrays) or ['a0'])
            arrays[key] = data.draw(_arrays, label='array %s' % key)
        elif edit == 'drop' and arrays:
            del arrays[rnd.choice(sorted(arrays))]
        elif edit == 'text':
            base = json.dumps(manifest, allow_nan=True)
            cut = rnd.randrange(len(base) + 1)
            text = base[:cut] + data.draw(st.text(max_size=4), label='text') + base[cut + 1:]
        elif edit == 'bytes':
            byte_edit = (rnd.random(), data.draw(st.binary(min_size=0, max_size=4),
                                                 label='bytes'))
    return (manifest if text is None else np.array(text)), arrays, byte_edit


@settings(max_examples=max(300, settings.default.max_examples),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(_corruptions(), st.data())
def test_fuzzed_mask_files_load_cleanly_or_fail_with_value_or_type_error(tmp_path, drawn, data):
    edits, rnd = drawn
    manifest, arrays = _valid_parts(tmp_path)
    manifest, arrays, byte_edit = _apply(edits, rnd, manifest, arrays, data)
    path = _write(tmp_path, manifest, arrays, name='fuzz.npz')
    if byte_edit is not None:
        raw = bytearray(open(path, 'rb').read())
        at = int(byte_edit[0] * len(raw))
        raw[at:at + len(byte_edit[1])] = byte_edit[1]
        open(path, 'wb').write(bytes(raw))
    try:
        masks = io.load_masks(path)
    except (ValueError, TypeError) as err:
        assert str(err), 'an error without a message'
        return
    _check_loaded(masks)


def test_inside_values_the_fuzz_must_refuse():
    """Guard for the fuzz's own oracle: it would notice a mask with a bad inside-scale."""
    bad = mo.Mask(rows=(_Indices([0], 1.0, 'train_rows'),))
    bad.rows[0].inside = math.nan
    with pytest.raises(AssertionError):
        _check_loaded({'w': bad})
