"""C8: every mistake fails early, says what was expected and what was received, writes nothing.

Two moments of failure:

* **Construction** (``Masked(...)``, ``gluon.Trainer(...)``, ``Module.init_optimizer``): mask keys
  matching no parameter, values outside ``[0, 1]``, an unknown ``base``. Plain-data masks
  (``{'rows': ..., 'cols': ...}``, e.g. from a config file) name their parameter. Index helpers
  (``train_rows([...])``, ...) reject bad indices when they are called, before any parameter is
  known, so their message names the helper instead (the traceback points at the user's line).
* **First step**, when the mask first meets the weight's shape and dtype: wrong lengths, a column
  mask on a 1-D parameter, an index out of range, an integer parameter. The step must raise before
  any weight is written. With Module, the optimizer states of a warm start
  (``load_optimizer_states``) are checked too.
"""
import os

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits
from models import forum_mf, mf_iter, ratings
from mxnet import autograd, gluon

import masked_opt as mo

N_USERS, N_ITEMS, DIM, BATCH = 20, 16, 8, 8
USER, BOOK, BIAS = 'net_user_weight', 'net_book_weight', 'net_book_bias'
MEMBER, MBOOK = 'member_embedding_weight', 'book_embedding_weight'


class _Net(gluon.HybridBlock):
    """MF with a 1-D per-book bias; Trainer order: bias (0), user (1), book (2)."""

    def __init__(self):
        super().__init__(prefix='net_')
        with self.name_scope():
            self.bias = self.params.get('book_bias', shape=(N_ITEMS,))
            self.user = gluon.nn.Embedding(N_USERS, DIM, prefix='user_')
            self.book = gluon.nn.Embedding(N_ITEMS, DIM, prefix='book_')
        self.initialize(mx.init.Uniform(0.5))

    def hybrid_forward(self, F, member, book, bias):
        return F.sum(self.user(member) * self.book(book), axis=1) + F.take(bias, book)


def _snapshot(params):
    return {name: p.data().copy() for name, p in params.items()}


def _assert_unchanged(before, params):
    for name, value in before.items():
        assert_same_bits(value, params[name].data(), name)


def _assert_message(err, *fragments):
    msg = str(err.value)
    missing = [f for f in fragments if f not in msg]
    assert not missing, 'message %r lacks %s' % (msg, missing)


def _trainer(net, masks, base='adam'):
    return gluon.Trainer(net.collect_params(), 'masked',
                         {'base': base, 'learning_rate': 0.01, 'wd': 1e-3, 'masks': masks})


def _rejected_first_step(masks, exc, *fragments):
    """A Trainer step that must raise ``exc`` before writing any weight."""
    net = _Net()
    params = net.collect_params()
    # A valid mask on the user table too, so the step has masked and unmasked work to do.
    masks = dict({USER: mo.train_rows_from(5)}, **masks)
    trainer = _trainer(net, masks)
    before = _snapshot(params)
    rng = np.random.RandomState(0)
    member = mx.nd.array(rng.randint(0, N_USERS, BATCH))
    book = mx.nd.array(rng.randint(0, N_ITEMS, BATCH))
    with autograd.record():
        loss = net(member, book).sum()
    loss.backward()
    with pytest.raises(exc) as err:
        trainer.step(BATCH)
    _assert_message(err, *fragments)
    _assert_unchanged(before, params)


# ---- construction: keys, values, helpers, base ----

def test_unknown_key_with_trainer_lists_known_names():
    net = _Net()
    before = _snapshot(net.collect_params())
    with pytest.raises(ValueError) as err:
        _trainer(net, {'net_usr_weight': mo.train_rows([0])})
    _assert_message(err, "'net_usr_weight'", 'matches no parameter', USER, BOOK, BIAS)
    _assert_unchanged(before, net.collect_params())


def test_unknown_glob_with_trainer_lists_known_names():
    net = _Net()
    with pytest.raises(ValueError) as err:
        _trainer(net, {'*embedding*': mo.train_rows([0])})
    _assert_message(err, "'*embedding*'", 'matches no parameter', USER, BOOK, BIAS)


def _module_fit(optimizer_params, optimizer='masked'):
    member, book, label = ratings(N_USERS, N_ITEMS, 32)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    rng = np.random.RandomState(2)
    init = {MEMBER: mx.nd.array(rng.rand(N_USERS, DIM)), MBOOK: mx.nd.array(rng.rand(N_ITEMS, DIM))}
    try:
        mod.fit(mf_iter(member, book, label, BATCH), num_epoch=1, optimizer=optimizer,
                optimizer_params=optimizer_params, arg_params=init)
    finally:
        if mod.params_initialized:
            for name, value in mod.get_params()[0].items():
                assert_same_bits(init[name], value, name)


def test_unknown_key_with_module_lists_known_names():
    with pytest.raises(ValueError) as err:
        _module_fit({'base': 'sgd', 'masks': {'member_embeding_weight': mo.train_cols([7])}})
    _assert_message(err, "'member_embeding_weight'", 'matches no parameter', MEMBER, MBOOK)


def test_unknown_key_with_a_module_given_an_instance():
    opt = mo.Masked(base='sgd', masks={'book_weight': mo.train_rows_from(3)},
                    rescale_grad=1.0 / BATCH)
    with pytest.raises(ValueError) as err:
        _module_fit(None, optimizer=opt)
    _assert_message(err, "'book_weight'", 'matches no parameter', MEMBER, MBOOK)


@pytest.mark.parametrize('axis', ['rows', 'cols'])
@pytest.mark.parametrize('value', [-0.25, 1.5, np.nan, np.inf, -np.inf])
def test_scale_outside_unit_interval_in_plain_data(axis, value):
    n = N_ITEMS if axis == 'rows' else DIM
    scales = np.ones(n)
    scales[3] = value
    net = _Net()
    with pytest.raises(ValueError) as err:
        _trainer(net, {BOOK: {axis: scales.tolist()}})
    _assert_message(err, "'%s'" % BOOK, 'in [0, 1]', 'received %r' % value, 'position 3')


@pytest.mark.parametrize('helper', [mo.scale_rows, mo.scale_cols])
def test_scale_helpers_reject_values_outside_unit_interval(helper):
    with pytest.raises(ValueError) as err:
        helper([0.5, 1.0, 2.0])
    _assert_message(err, helper.__name__, 'in [0, 1]', 'received 2.0', 'position 2')


def test_scale_of_wrong_type():
    with pytest.raises(TypeError) as err:
        _trainer(_Net(), {BOOK: {'rows': ['a'] * N_ITEMS}})
    _assert_message(err, "'%s'" % BOOK, 'numbers in [0, 1]', '<U1')


@pytest.mark.parametrize('helper', [mo.train_rows, mo.freeze_rows, mo.train_cols,
                                    mo.freeze_cols])
def test_negative_index(helper):
    with pytest.raises(ValueError) as err:
        helper([2, -1])
    _assert_message(err, helper.__name__, 'non-negative indices', 'received -1')


@pytest.mark.parametrize('helper', [mo.train_rows, mo.freeze_rows, mo.train_cols,
                                    mo.freeze_cols])
def test_repeated_index(helper):
    with pytest.raises(ValueError) as err:
        helper([4, 1, 4])
    _assert_message(err, helper.__name__, 'each index once', 'repeated indices [4]')


@pytest.mark.parametrize('indices', [[1.5], np.array([0.0, 2.25]), ['a']])
def test_non_integer_index(indices):
    with pytest.raises(TypeError) as err:
        mo.train_rows(indices)
    _assert_message(err, 'train_rows', 'integer indices', 'received')


@pytest.mark.parametrize('n_old', [2.5, -1, True])
def test_train_rows_from_needs_a_row_count(n_old):
    with pytest.raises(ValueError) as err:
        mo.train_rows_from(n_old)
    _assert_message(err, 'train_rows_from', 'non-negative integer', 'received %r' % n_old)


def test_unknown_base_with_trainer():
    net = _Net()
    with pytest.raises(ValueError) as err:
        _trainer(net, {USER: mo.train_rows_from(3)}, base='adamm')
    _assert_message(err, "unknown base optimizer 'adamm'", 'registered names', "'adam'", "'sgd'")


def test_unknown_base_with_module():
    with pytest.raises(ValueError) as err:
        _module_fit({'base': 'sdg', 'masks': {MEMBER: mo.train_cols([7])}})
    _assert_message(err, "unknown base optimizer 'sdg'", "'sgd'")


def test_mask_of_wrong_type():
    with pytest.raises(TypeError) as err:
        _trainer(_Net(), {BOOK: [0, 1, 1]})
    _assert_message(err, "'%s'" % BOOK, 'expected a masked_opt.Mask', 'received list')


# ---- first step: the mask meets the weight ----

def test_rows_length_differs_from_weight_rows():
    _rejected_first_step({BOOK: {'rows': np.ones(N_ITEMS + 1)}}, ValueError,
                         "'%s'" % BOOK, 'has %d values' % (N_ITEMS + 1), 'expected %d' % N_ITEMS)


def test_cols_length_differs_from_weight_cols():
    _rejected_first_step({BOOK: {'cols': np.ones(DIM - 1)}}, ValueError,
                         "'%s'" % BOOK, 'has %d values' % (DIM - 1), 'expected %d' % DIM)


def test_cols_on_a_1d_parameter():
    _rejected_first_step({BIAS: mo.train_cols([0])}, ValueError,
                         "'%s'" % BIAS, '1-D', '(%d,)' % N_ITEMS, 'expected a row mask only',
                         'received a column mask')


@pytest.mark.parametrize('mask,fragments', [
    (mo.train_rows([0, N_ITEMS]), ('index %d is out of range' % N_ITEMS,
                                   'expected indices in [0, %d)' % N_ITEMS)),
    (mo.freeze_cols([DIM]), ('index %d is out of range' % DIM,
                             'expected indices in [0, %d)' % DIM)),
    (mo.train_rows_from(N_ITEMS + 1), ('train_rows_from(%d) starts past the end' % (N_ITEMS + 1),
                                       'expected a start in [0, %d]' % N_ITEMS)),
], ids=['rows', 'cols', 'rows-from'])
def test_index_out_of_range(mask, fragments):
    _rejected_first_step({BOOK: mask}, ValueError, "'%s'" % BOOK, *fragments)


def test_integer_parameter():
    counts = gluon.Parameter('counts', shape=(4, 2), dtype='int32')
    counts.initialize(mx.init.Constant(3))
    trainer = gluon.Trainer([counts], 'masked',
                            {'base': 'sgd', 'masks': {counts: mo.train_rows([0])}})
    counts.grad()[:] = 1
    counts.list_data()[0]._fresh_grad = True  # what backward() would set
    before = counts.data().copy()
    with pytest.raises(TypeError) as err:
        trainer.step(1)
    _assert_message(err, "'counts'", 'dtype int32', 'floating-point')
    assert_same_bits(before, counts.data(), 'integer parameter')


def test_overlapping_globs():
    _rejected_first_step({'net_book*': mo.train_rows([0]), '*book_weight': mo.train_rows([1])},
                         ValueError, "'%s'" % BOOK, 'several mask patterns', 'at most one')


# ---- a warm start: the optimizer states must not move either ----

def _warm_module(masks, tmp_path):
    """A Module resumed from a plain Adam run (weights and states), then given ``masks``."""
    member, book, label = ratings(N_USERS, N_ITEMS, 32)
    it = mf_iter(member, book, label, BATCH)

    def module():
        mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                            label_names=['label'])
        mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
        return mod

    plain = module()
    plain.init_params(mx.init.Uniform(0.5))
    plain.init_optimizer(optimizer='adam', optimizer_params={'learning_rate': 0.01, 'wd': 1e-3})
    for batch in it:
        plain.forward_backward(batch)
        plain.update()
    states = os.path.join(tmp_path, 'adam.states')
    plain.save_optimizer_states(states)

    mod = module()
    mod.init_params(arg_params=plain.get_params()[0])
    mod.init_optimizer(optimizer='masked', optimizer_params={
        'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-3, 'masks': masks})
    mod.load_optimizer_states(states)
    it.reset()
    mod.forward_backward(next(iter(it)))
    return mod


def _module_bits(mod):
    weights = {n: as_bits(a[0]) for n, a in zip(mod._exec_group.param_names,
                                                 mod._exec_group.param_arrays, strict=True)}
    states = {i: [as_bits(s) for s in st] for i, st in mod._updater.states.items()}
    return weights, states


def _assert_same_module_bits(before, after):
    for name in before[0]:
        assert np.array_equal(before[0][name], after[0][name]), 'weight %s was written' % name
    assert before[1].keys() == after[1].keys()
    for i in before[1]:
        for k, (b, a) in enumerate(zip(before[1][i], after[1][i], strict=True)):
            assert np.array_equal(b, a), 'state %d[%d] was written' % (i, k)


def test_warm_module_rejected_step_leaves_weights_and_states(tmp_path):
    # member_embedding_weight is the Module's first parameter: the mask is checked before
    # anything of the step is written.
    mod = _warm_module({MEMBER: {'cols': np.ones(DIM + 2)}}, tmp_path)
    before = _module_bits(mod)
    with pytest.raises(ValueError) as err:
        mod.update()
    _assert_message(err, "'%s'" % MEMBER, 'has %d values' % (DIM + 2), 'expected %d' % DIM)
    _assert_same_module_bits(before, _module_bits(mod))


def test_warm_module_rejected_step_on_a_later_parameter(tmp_path):
    # With states already loaded the Updater creates none; the wrapper still sees the whole
    # step at once (aggregate_num) and resolves every mask before the first write.
    mod = _warm_module({MBOOK: {'rows': np.ones(N_ITEMS + 1)}}, tmp_path)
    before = _module_bits(mod)
    with pytest.raises(ValueError, match=MBOOK):
        mod.update()
    _assert_same_module_bits(before, _module_bits(mod))


def test_scale_product_that_underflows_to_zero_is_rejected():
    """r[i] > 0 and c[j] > 0 but r[i] * c[j] == 0: the entry would be neither frozen nor moved."""
    mask = mo.scale_rows([0.5, 0.0]) & mo.scale_cols([5e-324, 1.0])
    with pytest.raises(ValueError, match="parameter 'w'.*underflows to 0"):
        mask.resolve((2, 2), 'w')
    # The smallest positive product that does not underflow is accepted.
    rows, cols = (mo.scale_rows([0.5, 0.0]) & mo.scale_cols([1e-300, 1.0])).resolve((2, 2), 'w')
    assert rows.tolist() == [0.5, 0.0] and cols.tolist() == [1e-300, 1.0]
