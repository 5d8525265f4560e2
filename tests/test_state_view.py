"""masked_opt.optimizer_state: a parameter's state with the weight rows and columns it belongs to,
from a Trainer, a Module or an updater; the block equals the wrapped optimizer's full state at
those rows and columns, bit for bit."""
import mxnet as mx
import numpy as np
import pytest
from bits import as_bits

import masked_opt as mo

V, D = 10, 4


def _net(seed=0):
    mx.random.seed(seed)
    net = mx.gluon.nn.Embedding(V, D)
    net.initialize(mx.init.Uniform(0.5))
    return net


def _step(net, trainer, ids=(1, 8, 9, 3)):
    ctxs = net.weight.list_ctx()
    with mx.autograd.record():
        losses = [(net(mx.nd.array(ids, ctx=c)) ** 2).sum() for c in ctxs]
    for loss in losses:
        loss.backward()
    trainer.step(1)


def test_the_block_is_the_wrapped_optimizers_state_at_its_rows_and_columns():
    mask = mo.train_rows_from(7) & mo.train_cols([1, 3])
    masked_net, plain_net = _net(), _net()
    masked = mx.gluon.Trainer(masked_net.collect_params(), 'masked',
                              {'base': 'adam', 'learning_rate': 0.1,
                               'masks': {masked_net.weight: mask}})
    plain = mx.gluon.Trainer(plain_net.collect_params(), 'adam', {'learning_rate': 0.1})
    for _ in range(3):
        _step(masked_net, masked)
        _step(plain_net, plain)
    st = mo.optimizer_state(masked, masked_net.weight)
    full = mo.optimizer_state(plain, plain_net.weight.name)
    assert st.name == masked_net.weight.name
    assert st.rows.tolist() == [7, 8, 9] and st.cols.tolist() == [1, 3]
    assert full.rows.tolist() == list(range(V)) and full.cols.tolist() == list(range(D))
    assert len(st.arrays) == len(full.arrays) == 2            # Adam: mean, variance
    for block, whole in zip(st.arrays, full.arrays, strict=True):
        assert block.shape == (3, 2)
        expect = whole.asnumpy()[np.ix_(st.rows, st.cols)]
        assert (as_bits(block) == as_bits(expect)).all()


def test_module_states_and_a_second_device():
    data = mx.sym.Variable('item')
    emb = mx.sym.Embedding(data, input_dim=V, output_dim=D, name='item_embedding')
    sym = mx.sym.LinearRegressionOutput(mx.sym.sum_axis(emb, axis=1), name='y')
    it = mx.io.NDArrayIter({'item': np.arange(8) % V}, {'y_label': np.ones(8)}, batch_size=4)
    mod = mx.mod.Module(sym, data_names=['item'], label_names=['y_label'],
                        context=[mx.cpu(0), mx.cpu(1)])
    mod.fit(it, num_epoch=1, kvstore=None, optimizer='masked',
            optimizer_params={'base': 'sgd', 'momentum': 0.9, 'learning_rate': 0.1,
                              'masks': {'item_embedding_weight': mo.train_rows_from(6)}})
    for device in (0, 1):
        st = mo.optimizer_state(mod, 'item_embedding_weight', device=device)
        assert st.rows.tolist() == [6, 7, 8, 9] and st.cols.tolist() == list(range(D))
        assert [a.shape for a in st.arrays] == [(4, D)]
        assert st.arrays[0].context == mx.cpu(device)


def test_states_loaded_from_a_file_keep_their_rows(tmp_path):
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'adam', 'masks': {net.weight: mo.train_rows([2, 5])}})
    _step(net, trainer, ids=(2, 5))
    trainer.save_states(str(tmp_path / 's.states'))
    saved = [a.copy() for a in mo.optimizer_state(trainer, net.weight).arrays]
    again = mx.gluon.Trainer(net.collect_params(), 'adam')
    again.load_states(str(tmp_path / 's.states'))     # the file's masked optimizer comes back
    st = mo.optimizer_state(again, net.weight)
    assert st.rows.tolist() == [2, 5]
    for a, b in zip(st.arrays, saved, strict=True):
        assert (as_bits(a) == as_bits(b)).all()


def test_state_on_a_local_kvstore():
    mx.random.seed(0)
    net = mx.gluon.nn.Embedding(V, D)
    net.initialize(mx.init.Uniform(0.5), ctx=[mx.cpu(0), mx.cpu(1)])
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'sgd', 'momentum': 0.5,
                                'masks': {net.weight: mo.train_rows_from(8)}},
                               kvstore='local', update_on_kvstore=True)
    _step(net, trainer)
    assert trainer._updaters == [] or not trainer._updaters[0].states   # all on the kvstore
    st = mo.optimizer_state(trainer, net.weight)
    assert st.rows.tolist() == [8, 9] and [a.shape for a in st.arrays] == [(2, D)]


def test_no_state_kept_gives_no_arrays():
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'sgd', 'masks': {net.weight: mo.train_cols([0])}})
    _step(net, trainer)
    st = mo.optimizer_state(trainer, net.weight)
    assert st.arrays == [] and st.cols.tolist() == [0]


def test_clear_errors():
    net = _net()
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {'base': 'adam', 'masks': {}})
    with pytest.raises(KeyError, match='has no optimizer state yet'):
        mo.optimizer_state(trainer, net.weight)
    _step(net, trainer)
    with pytest.raises(KeyError, match=r"received 'nope'; known: .*weight"):
        mo.optimizer_state(trainer, 'nope')
    with pytest.raises(TypeError, match='expected a gluon.Trainer, a Module or an'):
        mo.optimizer_state(object(), 'w')


def test_a_warm_state_kept_whole_covers_every_row(tmp_path):
    pre = _net()
    pre_trainer = mx.gluon.Trainer(pre.collect_params(), 'adam')
    _step(pre, pre_trainer)
    pre_trainer.save_states(str(tmp_path / 'pre.states'))
    trainer = mx.gluon.Trainer(pre.collect_params(), 'masked',
                               {'base': 'adam', 'masks': {pre.weight: mo.train_rows_from(8)}})
    trainer.load_states(str(tmp_path / 'pre.states'))   # full-size moments, updated via the block
    st = mo.optimizer_state(trainer, pre.weight)
    assert st.rows.tolist() == list(range(V)) and [a.shape for a in st.arrays] == [(V, D)] * 2
