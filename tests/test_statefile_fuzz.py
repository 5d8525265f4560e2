"""Damaged and crafted state files: masked_opt.load_states either loads them or refuses them with
a ValueError/TypeError that names the file, before anything is written.

Hypothesis corrupts a valid file of a masked Gluon run (Adam with a FactorScheduler, two steps
done, so every part of the format is present): values anywhere in the JSON manifest replaced,
keys removed or added, list items removed, arrays replaced by drawn ones (any dtype, any
shape), removed or added, the manifest's text or the file's bytes garbled. After a refusal the
Trainer's weights, states and optimizer are bit for bit as before. A key removed from or added
to any object of the manifest, and an array removed or added, must be refused (the format has
no optional keys and no spare arrays). A Module run is fuzzed the same way; Module matches
states to its masks at the first update, so there an accepted file's first update either
trains or refuses before writing a weight.
"""
import functools
import json
import os
import tempfile

import json_tree
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from models import forum_block, forum_mf, gluon_steps, mf_iter, module_steps, ratings

import masked_opt as mo
from masked_opt.plain_optimizer import to_plain

N_USERS, N_ITEMS, DIM, BATCH = 6, 8, 3, 4
MASKS = {'book_embedding_weight': mo.train_rows_from(5),
         'member_embedding_weight': mo.train_cols([0, 2])}


def _params():
    return {'base': 'adam', 'learning_rate': 0.01, 'masks': MASKS,
            'lr_scheduler': mx.lr_scheduler.FactorScheduler(1, factor=0.9, warmup_steps=1)}


def _gluon(steps=3):
    """A trained masked Trainer. The live ones have taken a step more than the run that saved
    the valid file, so a load that is refused half-way would show in the counts and states."""
    net = forum_block(N_USERS, N_ITEMS, DIM)
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked', _params())
    gluon_steps(net, trainer, 0, steps, n_users=N_USERS, n_items=N_ITEMS, batch=BATCH,
                n_ratings=16)
    return net, trainer


def _iter():
    return mf_iter(*ratings(N_USERS, N_ITEMS, 16, seed=2), batch_size=BATCH)


def _module(steps=3):
    it = _iter()
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(mx.init.Uniform(0.5))
    mod.init_optimizer(optimizer='masked', optimizer_params=_params())
    module_steps(mod, list(it)[:steps])
    return mod


@functools.lru_cache(maxsize=None)
def _valid(api):
    """(manifest text, {name: array}) of a valid state file of a two-step run."""
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, 'valid.states')
    mo.save_states(_gluon(2)[1] if api == 'gluon' else _module(2), path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return str(arrays.pop('manifest')), arrays


# ---------------------------------------------------------------- what "untouched" means

def _parts(owner):
    if isinstance(owner, mx.mod.Module):
        weights = {k: v.copy() for k, v in owner.get_params()[0].items()}
        updater, opt = owner._updater, owner._optimizer
    else:
        net, trainer = owner
        weights = {n: p.data().copy() for n, p in net.collect_params().items()}
        updater, opt = trainer._updaters[0], trainer._optimizer
    states = {i: [a.copy() for a in state_arrays(s)] for i, s in updater.states.items()}
    return weights, states, to_plain(opt.base), opt.masks


def _assert_same(before, after):
    for name in before[0]:
        assert_same_bits(before[0][name], after[0][name], 'weight %s' % name)
    assert sorted(before[1]) == sorted(after[1])
    for i in before[1]:
        assert len(before[1][i]) == len(after[1][i])
        for a, b in zip(before[1][i], after[1][i], strict=True):
            assert_same_bits(a, b, 'state %s' % i)
    assert before[2] == after[2], 'optimizer settings or counts changed'
    assert before[3] == after[3], 'masks changed'


# ---------------------------------------------------------------- drawn corruptions

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2 ** 70) | st.floats(allow_nan=True)
    | st.text(max_size=6) | st.sampled_from(['adam', 'sgd', 's0', 's3', 'rows4', 'tuple',
                                             'FactorScheduler', 'masked_opt.states/1',
                                             'book_embedding_weight']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(['array', 'tuple', 'list', 'x']) | st.text(max_size=4), inner,
        max_size=2),
    max_leaves=5)

_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_,
                           np.complex64, 'U3', '>f4', '<i2']),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))


@st.composite
def _corruption(draw, api):
    """(manifest text, arrays, raw-byte edit or None, must the file be refused?)"""
    text, arrays = _valid(api)
    manifest, arrays = json.loads(text), dict(arrays)
    must_fail = False
    kinds = ['set', 'set', 'set', 'del', 'add', 'array', 'array', 'drop', 'extra', 'text',
             'bytes']
    byte_edit = None
    for _ in range(draw(st.integers(1, 2), label='edits')):
        kind = draw(st.sampled_from(kinds), label='kind')
        if kind in ('set', 'del', 'add'):
            spots = list(json_tree.spots(manifest)) if isinstance(manifest, dict) else []
            if not spots:
                continue
            path, key = draw(st.sampled_from(spots), label='where')
            parent = json_tree.at(manifest, path)
            if kind == 'set':
                parent[key] = draw(_json, label='value')
            elif kind == 'del':
                must_fail |= isinstance(parent, dict)
                del parent[key]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=5), label='new key') + '?'] = 1
                must_fail = True
        elif kind == 'array':
            key = draw(st.sampled_from(sorted(arrays)), label='array')
            arrays[key] = draw(_arrays, label='new array')
        elif kind == 'drop':
            del arrays[draw(st.sampled_from(sorted(arrays)), label='dropped')]
            must_fail = True
        elif kind == 'extra':
            arrays['x%d' % len(arrays)] = np.zeros(2, np.float32)
            must_fail = True
        elif kind == 'text':
            base = json.dumps(manifest)
            cut = draw(st.integers(0, len(base)), label='cut')
            manifest = base[:cut] + draw(st.text(max_size=3), label='text') + base[cut + 1:]
        else:
            byte_edit = (draw(st.floats(0, 1), label='at'),
                         draw(st.binary(max_size=4), label='bytes'))
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return text, arrays, byte_edit, must_fail


def _write(folder, text, arrays, byte_edit):
    path = os.path.join(folder, 'drawn.states')
    with open(path, 'wb') as f:
        np.savez(f, manifest=np.array(text), **arrays)
    if byte_edit is not None:
        data = open(path, 'rb').read()
        at = int(byte_edit[0] * len(data))
        with open(path, 'wb') as f:
            f.write(data[:at] + byte_edit[1] + data[at + len(byte_edit[1]) + 1:])
    return path


def _load_or_refuse(owner_target, owner, path, must_fail):
    """load_states loads, or raises ValueError/TypeError naming the file with nothing changed.
    Returns True when it loaded."""
    before = _parts(owner)
    try:
        mo.load_states(owner_target, path)
    except (ValueError, TypeError) as err:
        assert path in str(err), 'the message does not name the file: %s' % err
        _assert_same(before, _parts(owner))
        return False
    assert not must_fail, 'a file with a key or an array removed or added was loaded'
    return True


FUZZ = settings(max_examples=max(150, settings.default.max_examples),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(_corruption('gluon'))
def test_fuzzed_gluon_state_files_load_or_are_refused_untouched(drawn):
    text, arrays, byte_edit, must_fail = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, text, arrays, byte_edit)
        net, trainer = _gluon()
        _load_or_refuse(trainer, (net, trainer), path, must_fail)


@settings(parent=FUZZ, max_examples=max(60, settings.default.max_examples))
@given(_corruption('module'))
def test_fuzzed_module_state_files_load_or_are_refused_untouched(drawn):
    text, arrays, byte_edit, must_fail = drawn
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, text, arrays, byte_edit)
        mod = _module()
        if not _load_or_refuse(mod, mod, path, must_fail):
            return
        # Accepted: the first update trains, or refuses before writing any weight.
        weights = {k: v.copy() for k, v in mod.get_params()[0].items()}
        try:
            module_steps(mod, list(_iter())[3:4])
        except (ValueError, TypeError):
            for name, value in mod.get_params()[0].items():
                assert_same_bits(weights[name], value, 'weight %s after a refused update'
                                 % name)


def test_the_valid_files_load():
    """The fuzz starts from files that load (so a refusal is the corruption's doing)."""
    for api in ('gluon', 'module'):
        text, arrays = _valid(api)
        with tempfile.TemporaryDirectory() as folder:
            path = _write(folder, text, arrays, None)
            owner = _gluon() if api == 'gluon' else _module()
            assert _load_or_refuse(owner[1] if api == 'gluon' else owner, owner, path, False)


def _first(manifest):
    """The name of the first array of the first state."""
    return manifest['states'][0]['state']['tuple'][0]['array']


@pytest.mark.parametrize('edit,match', [
    (lambda m, a: m.update(format='masked_opt.states/2'), "reads 'masked_opt.states/1'"),
    (lambda m, a: m['optimizer']['base']['fields'].update(beta1='0.9'),
     "field 'beta1': expected a number"),
    (lambda m, a: m['optimizer']['base']['fields'].pop('epsilon'), r"missing \['epsilon'\]"),
    (lambda m, a: m['optimizer']['base'].update(current_device=3), 'expected one of the '
     'devices'),
    (lambda m, a: m['optimizer']['base']['lr_scheduler'].update(type='Evil'),
     "expected one of MXNet's schedulers"),
    (lambda m, a: m['optimizer']['base']['lr_scheduler']['fields'].update(step=0),
     'refuses these settings'),
    (lambda m, a: m['optimizer']['base']['update_counts'][0][1][0].__setitem__(1, -1),
     'expected an integer >= 0'),
    (lambda m, a: m['states'][0].update(index=40), 'not a parameter of this Trainer'),
    (lambda m, a: m['states'][0]['layout'].update(shape=[8, 5]), r'weight of shape \(8, 5\)'),
    (lambda m, a: a.update({_first(m): a[_first(m)].astype('>f4')}), 'native byte order'),
    (lambda m, a: a.update({_first(m): a[_first(m)][:1]}), 'does not fit the block'),
    (lambda m, a: m['states'][0]['state']['tuple'].pop(), 'holds arrays .* that no state uses'),
    (lambda m, a: m['states'][0]['state']['tuple'].append(None), 'does not have the structure'),
    (lambda m, a: m['states'][0].update(state={'array': 'nothing'}),
     "names array 'nothing', which the file does not hold"),
], ids=['format', 'wrong-type', 'missing-field', 'device', 'scheduler-class',
        'scheduler-settings', 'negative-count', 'index', 'layout-shape', 'byte-order',
        'array-shape', 'unused-array', 'state-structure', 'missing-array'])
def test_each_refusal_says_what_was_expected(edit, match, tmp_path):
    text, arrays = _valid('gluon')
    manifest, arrays = json.loads(text), dict(arrays)
    edit(manifest, arrays)
    path = _write(str(tmp_path), json.dumps(manifest), arrays, None)
    net, trainer = _gluon()
    before = _parts((net, trainer))
    with pytest.raises((ValueError, TypeError), match=match) as err:
        mo.load_states(trainer, path)
    assert path in str(err.value)
    _assert_same(before, _parts((net, trainer)))


def _directory_before_start(path):
    """Rewrite ``path`` so that its zip directory says it starts 1000 bytes later than it does:
    zipfile then seeks to negative offsets for the first members (OSError, not BadZipFile)."""
    data = bytearray(open(path, 'rb').read())
    end = data.rindex(b'PK\x05\x06')             # the end-of-central-directory record
    offset = int.from_bytes(data[end + 16:end + 20], 'little')
    data[end + 16:end + 20] = (offset + 1000).to_bytes(4, 'little')
    open(path, 'wb').write(bytes(data))


def test_a_zip_whose_directory_points_before_its_start_is_refused(tmp_path):
    """Found by the fuzz: an OSError from a seek inside the file escaped as if the file could
    not be opened; it is the file's content, so a ValueError naming it. Mask files too."""
    text, arrays = _valid('gluon')
    path = _write(str(tmp_path), text, arrays, None)
    _directory_before_start(path)
    net, trainer = _gluon()
    before = _parts((net, trainer))
    with pytest.raises(ValueError, match='cannot be read as an .npz of plain arrays'):
        mo.load_states(trainer, path)
    _assert_same(before, _parts((net, trainer)))
    masks = str(tmp_path / 'masks.npz')
    mo.io.save_masks(masks, MASKS)
    _directory_before_start(masks)
    with pytest.raises(ValueError, match='masks.npz'):
        mo.io.load_masks(masks)
