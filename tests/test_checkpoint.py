"""Checkpoint and resume: bit-identical to an uninterrupted run, also after a real crash.

In-process: Module (``save_checkpoint(save_optimizer_states=True)`` -> ``Module.load(...,
load_optimizer_states=True)``) and Gluon (``save_parameters`` + ``Trainer.save_states``).
Subprocesses (``dist_scripts/ckpt_train.py``): a training process SIGKILLed between
checkpoints, or while a checkpoint is half-written, restarts from the newest complete
checkpoint and ends with the same bits as a run that was never interrupted.
Masks saved without pickle (:mod:`masked_opt.io`).
"""
import os
import signal
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits
from models import ForumBlock, forum_mf, gluon_steps, mf_iter, ratings

import masked_opt as mo
from masked_opt import io

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, 'dist_scripts', 'ckpt_train.py')
N_USERS, N_ITEMS, N_OLD, DIM, BATCH = 10, 12, 8, 4, 8
MASKS = {'book_embedding_weight': mo.train_rows_from(N_OLD),
         'member_embedding_weight': mo.train_cols([DIM - 1])}


def _init():
    rng = np.random.RandomState(0)
    return {'member_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            'book_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}


def _iter():
    return mf_iter(*ratings(N_USERS, N_ITEMS, 32, seed=3), batch_size=BATCH)


def _train(mod, it, epochs):
    for _ in range(epochs):
        it.reset()
        for batch in it:
            mod.forward_backward(batch)
            mod.update()


def _module(it, arg_params=None):
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(arg_params=arg_params or _init())
    return mod


def _params(base, begin_num_update=0):
    extra = {'momentum': 0.9} if base == 'sgd' else {}
    return dict({'base': base, 'learning_rate': 0.05, 'wd': 0.01, 'masks': MASKS,
                 'begin_num_update': begin_num_update}, **extra)


def _train_two_epochs_and_reload(it, base, tmp_path):
    """Train 2 epochs, save a checkpoint with optimizer states, load it into a bound Module."""
    first = _module(it)
    first.init_optimizer(optimizer='masked', optimizer_params=_params(base))
    _train(first, it, 2)
    prefix = str(tmp_path / 'mf')
    first.save_checkpoint(prefix, 2, save_optimizer_states=True)
    resumed = mx.mod.Module.load(prefix, 2, load_optimizer_states=True,
                                 data_names=['member', 'book'], label_names=['label'])
    resumed.bind(it.provide_data, it.provide_label)
    return resumed


@pytest.mark.parametrize('base', ['sgd', 'adam'])
def test_module_resume_is_bit_identical(base, tmp_path):
    it = _iter()
    steps = 4  # batches per epoch
    whole = _module(it)
    whole.init_optimizer(optimizer='masked', optimizer_params=_params(base))
    _train(whole, it, 4)

    resumed = _train_two_epochs_and_reload(it, base, tmp_path)
    # Module's state file holds the states, not the update counts: Adam's bias correction
    # needs begin_num_update (documented in docs/howto/checkpoint.md).
    resumed.init_optimizer(optimizer='masked',
                           optimizer_params=_params(base, begin_num_update=2 * steps))
    _train(resumed, it, 2)
    want, got = whole.get_params()[0], resumed.get_params()[0]
    init = _init()
    for name in want:
        assert_same_bits(want[name], got[name], name)
    assert_same_bits(init['book_embedding_weight'][:N_OLD], got['book_embedding_weight'][:N_OLD])
    assert changed_bits(init['book_embedding_weight'][N_OLD:],
                        got['book_embedding_weight'][N_OLD:]) > 0


def test_module_adam_resume_without_update_count_differs(tmp_path):
    """Why the docs ask for begin_num_update: without it Adam restarts its bias correction."""
    it = _iter()
    whole = _module(it)
    whole.init_optimizer(optimizer='masked', optimizer_params=_params('adam'))
    _train(whole, it, 3)
    resumed = _train_two_epochs_and_reload(it, 'adam', tmp_path)
    resumed.init_optimizer(optimizer='masked', optimizer_params=_params('adam'))
    _train(resumed, it, 1)
    name = 'book_embedding_weight'
    assert changed_bits(whole.get_params()[0][name], resumed.get_params()[0][name]) > 0


def _gluon(base):
    net = ForumBlock(N_USERS, N_ITEMS, DIM)
    net.initialize()
    for name, value in _init().items():
        net.collect_params()[name].set_data(value)
    params = _params(base)
    del params['begin_num_update']
    return net, mx.gluon.Trainer(net.collect_params(), 'masked', params)


def _gluon_steps(net, trainer, first, count):
    gluon_steps(net, trainer, first, count, n_users=N_USERS, n_items=N_ITEMS, batch=BATCH,
                n_ratings=64)


@pytest.mark.parametrize('base', ['sgd', 'adam'])
def test_gluon_resume_is_bit_identical(base, tmp_path):
    net, trainer = _gluon(base)
    _gluon_steps(net, trainer, 0, 6)

    first, first_trainer = _gluon(base)
    _gluon_steps(first, first_trainer, 0, 3)
    first.save_parameters(str(tmp_path / 'p.params'))
    first_trainer.save_states(str(tmp_path / 's.states'))

    resumed, resumed_trainer = _gluon(base)
    resumed.load_parameters(str(tmp_path / 'p.params'))
    resumed_trainer.load_states(str(tmp_path / 's.states'))
    # The state file holds only the trainable block's state (C6), and the masks.
    states = resumed_trainer._updaters[0].states
    book = [i for i, p in enumerate(resumed_trainer._params) if p.name == 'book_embedding_weight']
    first_state = states[book[0]][0] if base == 'adam' else states[book[0]]
    assert first_state.shape == (N_ITEMS - N_OLD, DIM)
    assert resumed_trainer._optimizer.masks == MASKS
    _gluon_steps(resumed, resumed_trainer, 3, 3)
    for name, p in net.collect_params().items():
        assert_same_bits(p.data(), resumed.collect_params()[name].data(), name)


# ------------------------------------------------------------- a real crash

def _run(api, folder, epochs, *flags, kill_when=None):
    """Run ckpt_train.py; with ``kill_when``, SIGKILL it when it prints that line."""
    proc = subprocess.Popen([sys.executable, SCRIPT, api, str(folder), str(epochs)]
                            + [str(f) for f in flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    lines = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors='replace').rstrip()
            lines.append(line)
            if kill_when is not None and line == kill_when:
                proc.send_signal(signal.SIGKILL)  # this process's PID only
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, lines


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    finals = {}
    for api in ('module', 'gluon'):
        folder = tmp_path_factory.mktemp('whole_' + api)
        code, lines = _run(api, folder, 4)
        assert code == 0 and 'finished' in lines, lines
        finals[api] = dict(np.load(folder / 'final.npz'))
    return finals


@pytest.mark.slow
@pytest.mark.parametrize('api', ['module', 'gluon'])
def test_sigkill_between_checkpoints_then_resume(api, tmp_path, uninterrupted):
    code, lines = _run(api, tmp_path, 4, '--crash-after', 2, kill_when='waiting')
    assert code == -signal.SIGKILL and 'finished' not in lines, lines
    assert io.latest_checkpoint(str(tmp_path / 'ckpt')) == 2
    code, lines = _run(api, tmp_path, 4)
    assert code == 0 and 'starting at epoch 2' in lines and 'finished' in lines, lines
    final = np.load(tmp_path / 'final.npz')
    for name, want in uninterrupted[api].items():
        assert_same_bits(want, final[name], name)


@pytest.mark.slow
@pytest.mark.parametrize('api', ['module', 'gluon'])
def test_sigkill_while_writing_a_checkpoint_then_resume(api, tmp_path, uninterrupted):
    code, lines = _run(api, tmp_path, 4, '--crash-in-save', 3)
    assert code == -signal.SIGKILL, lines
    leftovers = [p.name for p in tmp_path.iterdir() if '.tmp-' in p.name]
    assert leftovers and leftovers[0].startswith('ckpt-0003.params'), leftovers
    assert io.latest_checkpoint(str(tmp_path / 'ckpt')) == 2  # the half-written one is ignored
    code, lines = _run(api, tmp_path, 4)
    assert code == 0 and 'starting at epoch 2' in lines, lines
    final = np.load(tmp_path / 'final.npz')
    for name, want in uninterrupted[api].items():
        assert_same_bits(want, final[name], name)


# ------------------------------------------------------------- atomic files

def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / 'f.txt'
    path.write_text('old')
    with pytest.raises(RuntimeError):
        with io.atomic_write(str(path)) as tmp:
            with open(tmp, 'w') as f:
                f.write('half')
            raise RuntimeError('crash while writing')
    assert path.read_text() == 'old'
    assert [p.name for p in tmp_path.iterdir()] == ['f.txt']


def test_latest_checkpoint_needs_params_and_states(tmp_path):
    prefix = str(tmp_path / 'm')
    for name in ('m-0001.params', 'm-0001.states', 'm-0002.params', 'm-0003.states',
                 'm-0004.params.tmp-77', 'm-0004.states', 'other-0009.params'):
        (tmp_path / name).write_bytes(b'x')
    assert io.latest_checkpoint(prefix) == 1


# ------------------------------------------------------------- masks without pickle

ALL_KINDS = {
    'a': mo.train_rows_from(2),
    'b': mo.train_rows([0, 3]) & mo.train_cols([1]),
    'c': mo.freeze_rows([1]) & mo.freeze_cols([0, 2]),
    'd': mo.scale_rows([0, 0.25, 1, 1]) & mo.scale_cols([1, 0.5, 0]),
    'e*_weight': {'rows': [1, 0, 1, 0], 'cols': None},
}


def test_masks_round_trip_every_kind(tmp_path):
    path = str(tmp_path / 'masks.npz')
    io.save_masks(path, ALL_KINDS)
    back = io.load_masks(path)
    assert list(back) == list(ALL_KINDS)
    for name, mask in ALL_KINDS.items():
        assert back[name] == mo.as_mask(mask)
        want_both = mo.as_mask(mask).resolve((4, 3), name)
        for got, want in zip(back[name].resolve((4, 3), name), want_both, strict=True):
            assert (got is None and want is None) or np.array_equal(got, want)


def test_mask_file_holds_no_pickle(tmp_path):
    path = str(tmp_path / 'masks.npz')
    io.save_masks(path, ALL_KINDS)
    with np.load(path, allow_pickle=False) as data:  # raises on any object array
        assert all(data[k].dtype != object for k in data.files)


def test_loaded_masks_train_the_same_bits(tmp_path):
    path = str(tmp_path / 'masks.npz')
    io.save_masks(path, MASKS)
    results = []
    for masks in (MASKS, io.load_masks(path)):
        it = _iter()
        mod = _module(it)
        mod.init_optimizer(optimizer='masked', optimizer_params=dict(_params('adam'),
                                                                    masks=masks))
        _train(mod, it, 1)
        results.append(mod.get_params()[0])
    for name in results[0]:
        assert_same_bits(results[0][name], results[1][name], name)


def test_bad_mask_files_are_refused(tmp_path):
    plain = str(tmp_path / 'plain.npz')
    np.savez(plain, x=np.arange(3))
    with pytest.raises(ValueError, match='not a masked_opt mask file'):
        io.load_masks(plain)
    good = str(tmp_path / 'good.npz')
    io.save_masks(good, {'w': mo.train_rows([1])})
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    arrays['a0'] = np.array([1, 1])  # a repeated index: the helpers' validation applies
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match='repeated'):
        io.load_masks(bad)
    with pytest.raises(TypeError, match='param.name'):
        io.save_masks(str(tmp_path / 'x.npz'), {mx.gluon.Parameter('w', shape=(2,)):
                                                mo.train_rows([0])})
