"""Warm start: optimizer states of an *unmasked* run loaded into a masked one.

Pre-train everything, then freeze the old rows and continue with the saved moments. In Gluon,
``Trainer.load_states`` of the unmasked run's file must keep the masks (MXNet alone replaces the
Trainer's optimizer with the file's plain one): frozen rows keep their bits, and the trainable
rows continue with the file's full-size states updated through the block -- the same bits as
the warm-state path gives when the full-size states are handed to the masked optimizer
directly. Module's ``load_optimizer_states`` of an unmasked run keeps working.
"""
import pickle

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from models import forum_block, forum_mf, gluon_steps, mf_iter, module_steps, ratings

import masked_opt as mo

N_USERS, N_ITEMS, N_OLD, DIM, BATCH = 10, 12, 8, 4, 8
BOOK = 'book_embedding_weight'
SETTINGS = [
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-momentum'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam'),
]


def _net():
    return forum_block(N_USERS, N_ITEMS, DIM)


def _steps(net, trainer, first, count):
    gluon_steps(net, trainer, first, count, n_users=N_USERS, n_items=N_ITEMS, batch=BATCH,
                n_ratings=96)


def _pretrain(base, params, path):
    """An unmasked run: every row trains; its states (full-size) and weights are saved."""
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), base, dict(params))
    _steps(net, trainer, 0, 3)
    trainer.save_states(str(path / 'pre.states'))
    net.save_parameters(str(path / 'pre.params'))


def _masks():
    return {BOOK: mo.train_rows_from(N_OLD)}


@pytest.mark.parametrize('update_on_kvstore', [False, True])
@pytest.mark.parametrize('base,params', SETTINGS)
def test_gluon_load_states_of_unmasked_run_keeps_masks(base, params, update_on_kvstore,
                                                       tmp_path):
    _pretrain(base, params, tmp_path)
    net = _net()
    net.load_parameters(str(tmp_path / 'pre.params'))
    start = net.book.weight.data().copy()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               dict(params, base=base, masks=_masks()),
                               kvstore=mx.kv.create('local'),
                               update_on_kvstore=update_on_kvstore)
    trainer.load_states(str(tmp_path / 'pre.states'))
    assert isinstance(trainer._optimizer, mo.Masked)
    assert trainer._optimizer.masks == _masks()
    _steps(net, trainer, 3, 4)

    assert_same_bits(start[:N_OLD], net.book.weight.data()[:N_OLD], 'frozen book rows')
    assert changed_bits(start[N_OLD:], net.book.weight.data()[N_OLD:]) > 0

    # The oracle: the existing warm-state path, the file's optimizer and full-size states
    # handed to the masked optimizer directly.
    with open(tmp_path / 'pre.states', 'rb') as f:
        states, plain = pickle.loads(f.read())
    plain.rescale_grad = 1.0   # Trainer takes its scale from an optimizer instance
    oracle = _net()
    oracle.load_parameters(str(tmp_path / 'pre.params'))
    oracle_trainer = mx.gluon.Trainer(oracle.collect_params(),
                                      mo.Masked(base=plain, masks=_masks()),
                                      update_on_kvstore=False)
    updater = oracle_trainer._updaters[0]
    updater.states = {i: s for i, s in states.items() if not isinstance(i, str)}
    updater.states_synced = dict.fromkeys(updater.states, False)
    _steps(oracle, oracle_trainer, 3, 4)
    for name in ('member', 'book'):
        assert_same_bits(getattr(oracle, name).weight.data(), getattr(net, name).weight.data(),
                         '%s table, load_states vs warm-state path' % name)


def test_gluon_load_states_of_unmasked_run_keeps_frozen_states(tmp_path):
    """The full-size states from the file: frozen entries keep their bits after training."""
    _pretrain('adam', {'learning_rate': 0.01}, tmp_path)
    net = _net()
    net.load_parameters(str(tmp_path / 'pre.params'))
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'adam', 'learning_rate': 0.01, 'masks': _masks()})
    trainer.load_states(str(tmp_path / 'pre.states'))
    book = [i for i, p in enumerate(trainer._params) if p.name == BOOK][0]
    before = [a.copy() for a in state_arrays(trainer._updaters[0].states[book])]
    _steps(net, trainer, 3, 3)
    after = state_arrays(trainer._updaters[0].states[book])
    assert [a.shape for a in after] == [(N_ITEMS, DIM)] * 2
    for b, a in zip(before, after, strict=True):
        assert_same_bits(b[:N_OLD], a[:N_OLD], 'state of frozen rows')
        assert changed_bits(b[N_OLD:], a[N_OLD:]) > 0


def test_gluon_load_states_takes_the_files_optimizer_under_the_masks(tmp_path):
    """As in MXNet, the file's optimizer comes back (type, update counts); masks stay."""
    _pretrain('adam', {'learning_rate': 0.01}, tmp_path)
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'sgd', 'learning_rate': 1.0, 'masks': _masks()})
    trainer.load_states(str(tmp_path / 'pre.states'))
    opt = trainer._optimizer
    assert isinstance(opt, mo.Masked) and isinstance(opt.base, mx.optimizer.Adam)
    assert opt.learning_rate == 0.01 and opt.num_update == 3
    trainer.set_learning_rate(0.001)
    assert opt.base.learning_rate == 0.001


# ---- Module: load_optimizer_states of an unmasked run (worked before; keep it working) ----

def _module(it, arg_params):
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(arg_params={k: v.copy() for k, v in arg_params.items()})
    return mod


@pytest.mark.parametrize('base,params', SETTINGS)
def test_module_load_optimizer_states_of_unmasked_run(base, params, tmp_path):
    it = mf_iter(*ratings(N_USERS, N_ITEMS, 64, seed=6), batch_size=BATCH)
    batches = list(it)
    rng = np.random.RandomState(1)
    init = {'member_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            'book_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}
    pre = _module(it, init)
    pre.init_optimizer(optimizer=base, optimizer_params=params)
    module_steps(pre, batches[:3])
    pre.save_optimizer_states(str(tmp_path / 'pre.states'))
    weights = {k: v.copy() for k, v in pre.get_params()[0].items()}

    masked = _module(it, weights)
    masked.init_optimizer(optimizer='masked',
                          optimizer_params=dict(params, base=base, masks=_masks(),
                                                begin_num_update=3))
    masked.load_optimizer_states(str(tmp_path / 'pre.states'))
    module_steps(masked, batches[3:])
    got = masked.get_params()[0][BOOK]
    assert_same_bits(weights[BOOK][:N_OLD], got[:N_OLD], 'frozen book rows')
    assert changed_bits(weights[BOOK][N_OLD:], got[N_OLD:]) > 0

    # The same continuation with the full-size states handed over directly.
    with open(tmp_path / 'pre.states', 'rb') as f:
        states = pickle.loads(f.read())
    oracle = _module(it, weights)
    oracle.init_optimizer(optimizer='masked',
                          optimizer_params=dict(params, base=base, masks=_masks(),
                                                begin_num_update=3))
    oracle._updater.states = {i: s for i, s in states.items() if not isinstance(i, str)}
    oracle._updater.states_synced = dict.fromkeys(oracle._updater.states, False)
    module_steps(oracle, batches[3:])
    for name, value in oracle.get_params()[0].items():
        assert_same_bits(value, masked.get_params()[0][name], name)
