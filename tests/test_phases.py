"""Masks that change between phases: staged unfreezing, Module and Gluon.

Phase 1 trains with mask A and saves the optimizer states (block-sized); phase 2 loads them
under mask B. Entries trainable in both phases keep their state bit for bit, newly trainable
entries start from the wrapped optimizer's fresh state (zeros for SGD momentum and Adam), and
frozen entries keep their bits. The expected states are built here with numpy from the saved
block and the two masks, independently of masked_opt, and a run handed those states directly
is the oracle for the training that follows. A state that cannot be matched is a ValueError
naming the parameter, raised before any weight or state is written.
"""
import pickle

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from models import forum_block, forum_mf, gluon_steps, mf_iter, module_steps, ratings

import masked_opt as mo

N_USERS, N_ITEMS, DIM, BATCH = 10, 12, 4, 8
BOOK, MEMBER = 'book_embedding_weight', 'member_embedding_weight'


def _expected(block, rows_a, rows_b, n_rows):
    """The phase-2 state of one array: rows trainable in both copied, the others zero."""
    rows_a = np.arange(n_rows) if rows_a is None else np.asarray(rows_a)
    rows_b = np.arange(n_rows) if rows_b is None else np.asarray(rows_b)
    out = np.zeros((rows_b.size,) + block.shape[1:], block.dtype)
    for k, r in enumerate(rows_b):
        hit = np.flatnonzero(rows_a == r)
        if hit.size:
            out[k] = block[hit[0]]
    return out


# ---- Module ----

def _init():
    rng = np.random.RandomState(0)
    return {MEMBER: mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            BOOK: mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}


def _batches():
    return list(mf_iter(*ratings(N_USERS, N_ITEMS, 64, seed=5), batch_size=BATCH))


def _module(arg_params, masks, base, params, begin_num_update=0):
    it = mf_iter(*ratings(N_USERS, N_ITEMS, 64, seed=5), batch_size=BATCH)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(arg_params={k: v.copy() for k, v in arg_params.items()})
    mod.init_optimizer(optimizer='masked',
                       optimizer_params=dict(params, base=base, masks=masks,
                                             begin_num_update=begin_num_update))
    return mod


def _index(mod, name):
    return [i for i, n in mod._optimizer.idx2name.items() if n == name][0]


def _arrays_np(state):
    return [a.asnumpy() for a in state_arrays(state)]


PHASES = [
    # (base, params, phase-1 book rows, phase-2 book rows (None: every row))
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, [8, 9, 10, 11], [6, 7, 8, 9, 10, 11],
                 id='adam-bigger-block'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, [8, 9, 10, 11], None,
                 id='adam-then-everything'),
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, [8, 9], [9, 10],
                 id='sgd-same-shape-other-rows'),
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9}, [2, 5, 9, 11], [5, 11],
                 id='sgd-smaller-block'),
]


def _book_mask(rows):
    return {} if rows is None else {BOOK: mo.train_rows(rows)}


@pytest.mark.parametrize('base,params,rows_a,rows_b', PHASES)
def test_module_states_follow_their_rows_into_the_next_phase(base, params, rows_a, rows_b,
                                                             tmp_path):
    batches = _batches()
    member_mask = {MEMBER: mo.train_cols([1, 3])}
    first = _module(_init(), dict(member_mask, **_book_mask(rows_a)), base, params)
    module_steps(first, batches[:3])
    first.save_optimizer_states(str(tmp_path / 'phase1.states'))
    weights = {k: v.copy() for k, v in first.get_params()[0].items()}
    saved = {i: _arrays_np(s) for i, s in first._updater.states.items()}

    # Phase 2: another book mask, the same member mask, a lower learning rate.
    lower = dict(params, learning_rate=params['learning_rate'] / 10)
    second = _module(weights, dict(member_mask, **_book_mask(rows_b)), base, lower, 3)
    second.load_optimizer_states(str(tmp_path / 'phase1.states'))
    module_steps(second, batches[3:])

    # The oracle: the same phase 2, handed the expected states directly.
    oracle = _module(weights, dict(member_mask, **_book_mask(rows_b)), base, lower, 3)
    book = _index(first, BOOK)
    expected = {}
    for i, arrays in saved.items():
        if i == book:
            arrays = [_expected(a, rows_a, rows_b, N_ITEMS) for a in arrays]
        parts = [mx.nd.array(a, dtype=a.dtype) for a in arrays]
        expected[i] = tuple(parts) if base == 'adam' else parts[0]
    oracle._updater.states = expected
    oracle._updater.states_synced = dict.fromkeys(expected, False)
    module_steps(oracle, batches[3:])

    got, want = second.get_params()[0], oracle.get_params()[0]
    for name in want:
        assert_same_bits(want[name], got[name], '%s, loaded vs expected states' % name)
    for i in expected:
        for a, b in zip(state_arrays(oracle._updater.states[i]),
                        state_arrays(second._updater.states[i]), strict=True):
            assert_same_bits(a, b, 'state of parameter %d' % i)
    trained = np.arange(N_ITEMS) if rows_b is None else np.asarray(rows_b)
    frozen = np.setdiff1d(np.arange(N_ITEMS), trained)
    assert_same_bits(weights[BOOK].asnumpy()[frozen], got[BOOK].asnumpy()[frozen],
                     'frozen book rows')
    assert_same_bits(weights[MEMBER].asnumpy()[:, [0, 2]], got[MEMBER].asnumpy()[:, [0, 2]],
                     'frozen member columns')
    assert changed_bits(weights[BOOK].asnumpy()[trained], got[BOOK].asnumpy()[trained]) > 0


def _loaded_refusal(second, name):
    """The first update refuses, naming ``name``; weights and loaded states are as they were."""
    weights = {k: v.copy() for k, v in second.get_params()[0].items()}
    states = {i: [a.copy() for a in state_arrays(s)] for i, s in second._updater.states.items()}
    with pytest.raises(ValueError, match=name):
        module_steps(second, _batches()[3:4])
    for name, value in second.get_params()[0].items():
        assert_same_bits(weights[name], value, '%s after the refused update' % name)
    for i, arrays in states.items():
        for a, b in zip(arrays, state_arrays(second._updater.states[i]), strict=True):
            assert_same_bits(a, b, 'state %d after the refused update' % i)


def test_module_refuses_states_of_another_optimizer_before_writing(tmp_path):
    first = _module(_init(), {BOOK: mo.train_rows_from(8)}, 'sgd',
                    {'learning_rate': 0.1, 'momentum': 0.9})
    module_steps(first, _batches()[:2])
    first.save_optimizer_states(str(tmp_path / 'sgd.states'))
    second = _module(first.get_params()[0], {BOOK: mo.train_rows_from(6)}, 'adam',
                     {'learning_rate': 0.01})
    second.load_optimizer_states(str(tmp_path / 'sgd.states'))
    _loaded_refusal(second, MEMBER)   # the first parameter: its SGD momentum is not Adam's


def test_module_refuses_block_states_without_layout_of_another_shape(tmp_path):
    """A state file written without layouts (by MXNet's own Updater, or an older masked_opt):
    a block of another shape than the current mask's is refused, not half-applied."""
    first = _module(_init(), {BOOK: mo.train_rows_from(8)}, 'adam', {'learning_rate': 0.01})
    module_steps(first, _batches()[:2])
    plain = {i: s for i, s in first._updater.states.items()}
    with open(tmp_path / 'old.states', 'wb') as f:
        f.write(pickle.dumps(plain))
    second = _module(first.get_params()[0], {BOOK: mo.train_rows_from(6)}, 'adam',
                     {'learning_rate': 0.01}, 2)
    second.load_optimizer_states(str(tmp_path / 'old.states'))
    _loaded_refusal(second, BOOK)


def test_module_state_file_still_loads_without_masked_opt_updater(tmp_path):
    """The layouts are plain Python data under one extra key: MXNet's Updater ignores it."""
    first = _module(_init(), {BOOK: mo.train_rows_from(8)}, 'adam', {'learning_rate': 0.01})
    module_steps(first, _batches()[:2])
    first.save_optimizer_states(str(tmp_path / 'p1.states'))
    with open(tmp_path / 'p1.states', 'rb') as f:
        data = f.read()
    globals_used = {str(arg) for op, arg, _ in __import__('pickletools').genops(data)
                    if op.name in ('GLOBAL', 'STACK_GLOBAL')}
    assert not [g for g in globals_used if 'masked_opt' in g]
    updater = mx.optimizer.Updater(mx.optimizer.create('adam'))
    updater.set_states(data)
    assert mo.states.LAYOUTS_KEY in updater.states


# ---- Gluon ----

def _net(n_items=N_ITEMS):
    return forum_block(N_USERS, n_items, DIM)


def _steps(net, trainer, first, count):
    gluon_steps(net, trainer, first, count, n_users=N_USERS, n_items=N_ITEMS, batch=BATCH,
                n_ratings=96)


def _gluon_index(trainer, name):
    return [i for i, p in enumerate(trainer._params) if p.name == name][0]


@pytest.mark.parametrize('rows_a,rows_b', [
    pytest.param([8, 9, 10, 11], None, id='new-rows-then-everything'),
    pytest.param([8, 9], [9, 10], id='same-shape-other-rows'),
])
def test_gluon_staged_unfreezing(rows_a, rows_b, tmp_path):
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'adam', 'learning_rate': 0.01,
                                'masks': {BOOK: mo.train_rows(rows_a)}})
    _steps(net, trainer, 0, 3)
    net.save_parameters(str(tmp_path / 'p1.params'))
    trainer.save_states(str(tmp_path / 'p1.states'))
    book = _gluon_index(trainer, BOOK)
    saved = {i: _arrays_np(s) for i, s in trainer._updaters[0].states.items()}

    second = _net()
    second.load_parameters(str(tmp_path / 'p1.params'))
    start = second.book.weight.data().copy()
    t2 = mx.gluon.Trainer(second.collect_params(), 'masked',
                          {'base': 'adam', 'learning_rate': 0.01, 'masks': _book_mask(rows_b)})
    t2.load_states(str(tmp_path / 'p1.states'))
    t2.set_learning_rate(0.001)
    assert isinstance(t2._optimizer, mo.Masked) and t2._optimizer.masks == _book_mask(rows_b)
    assert t2._optimizer.num_update == 3       # the file's update counts (Adam's bias correction)
    # Matched when load_states returns: the weights are known in Gluon.
    states = t2._updaters[0].states
    for k, a in enumerate(state_arrays(states[book])):
        assert_same_bits(_expected(saved[book][k], rows_a, rows_b, N_ITEMS), a,
                         'book state %d after loading' % k)
    member = _gluon_index(t2, MEMBER)
    for a, b in zip(saved[member], state_arrays(states[member]), strict=True):
        assert_same_bits(a, b, 'member state (unmasked in both phases)')

    expected = {i: tuple(mx.nd.array(a) for a in arrays) for i, arrays in saved.items()}
    expected[book] = tuple(mx.nd.array(_expected(a, rows_a, rows_b, N_ITEMS))
                           for a in saved[book])
    _steps(second, t2, 3, 3)

    with open(tmp_path / 'p1.states', 'rb') as f:
        _, file_opt = pickle.loads(f.read())
    inner = file_opt.base
    inner.rescale_grad = 1.0
    oracle = _net()
    oracle.load_parameters(str(tmp_path / 'p1.params'))
    ot = mx.gluon.Trainer(oracle.collect_params(), mo.Masked(base=inner, masks=_book_mask(rows_b)))
    ot.set_learning_rate(0.001)
    ot._updaters[0].states = expected
    ot._updaters[0].states_synced = dict.fromkeys(expected, False)
    _steps(oracle, ot, 3, 3)
    for name in ('member', 'book'):
        assert_same_bits(getattr(oracle, name).weight.data(), getattr(second, name).weight.data(),
                         name)
    if rows_b is not None:
        frozen = np.setdiff1d(np.arange(N_ITEMS), rows_b)
        assert_same_bits(start.asnumpy()[frozen], second.book.weight.data().asnumpy()[frozen],
                         'frozen book rows')


def test_gluon_load_states_refuses_another_shape_before_writing(tmp_path):
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'adam', 'learning_rate': 0.01,
                                'masks': {BOOK: mo.train_rows_from(8)}})
    _steps(net, trainer, 0, 2)
    trainer.save_states(str(tmp_path / 'p1.states'))

    grown = _net(n_items=N_ITEMS + 2)
    t2 = mx.gluon.Trainer(grown.collect_params(), 'masked',
                          {'base': 'adam', 'learning_rate': 0.01,
                           'masks': {BOOK: mo.train_rows_from(N_ITEMS)}})
    opt = t2._optimizer
    with pytest.raises(ValueError, match=BOOK):
        t2.load_states(str(tmp_path / 'p1.states'))
    assert t2._optimizer is opt and opt.num_update == 0, 'the optimizer was replaced'
    assert t2._updaters[0].states == {}, 'states were written'
