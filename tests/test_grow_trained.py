"""Growing a table where training left it: every grow helper, every place a trained table lives.

A Trainer or Module that updates on a kvstore keeps the trained table there. For dense weights
MXNet pulls it back into the parameter after every step; for a row_sparse weight
(``contrib.nn.SparseEmbedding``, ``sym.contrib.SparseEmbedding``) it does not: each forward
pulls only the rows of its batch, before the step's update, so the layer's own copy holds stale
rows of the last batch (a (10, 4) table trained on ids {1, 2}, {5, 6}, {1, 2} grew into a
table storing rows [1, 2, 10, 11, 12]; none of the ten old rows equalled the trained
table). Each case here trains, grows, checks the old rows against the trained table on the bits
(read from a twin trained identically, or from the kvstore itself), then trains on with a new
Trainer (or Module) and the returned mask: old rows keep their bits, new rows in the batch move.
The dist kvstore case runs in tests/test_dist.py's jobs (``grow_sparse`` in its worker).
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, changed_bits
from mxnet import autograd, gluon
from mxnet.gluon.contrib.nn import SparseEmbedding

import masked_opt as mo

V, D, N_NEW = 10, 4, 3
BATCHES = ([1, 2], [5, 6], [1, 2])        # the issue's ids
NEW_BATCHES = ([1, 11, 12], [3, 10, 12])  # old and new ids after growing
CTX1, CTX2 = [mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]


def _full(param):
    """The whole table every context holds, as numpy (row_sparse: every row pulled)."""
    if param._stype == 'row_sparse':
        ids = mx.nd.arange(param.shape[0], dtype='int64')
        return [d.asnumpy() for d in param.list_row_sparse_data(ids)]
    return [d.asnumpy() for d in param.list_data()]


def _step(block, trainer, ctxs, ids):
    with autograd.record():
        losses = [(block(mx.nd.array(ids, ctx=c)) ** 2).sum() for c in ctxs]
    autograd.backward(losses)
    trainer.step(len(ids))


def _train_embedding(make, ctxs, kvstore, update_on_kvstore):
    block = make()
    block.initialize(mx.init.Uniform(0.5), ctx=ctxs)
    block.weight.set_data(mx.nd.array(np.random.RandomState(0).uniform(-1, 1, (V, D))))
    trainer = gluon.Trainer(block.collect_params(), 'adam', {'learning_rate': 0.1, 'wd': 0.01},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    for ids in BATCHES:
        _step(block, trainer, ctxs, ids)
    return block, trainer


# One name for every run: new rows are seeded by the seed and the parameter's name.
EMBEDDINGS = {
    'sparse_embedding': lambda: SparseEmbedding(V, D, prefix='emb_'),
    'embedding': lambda: gluon.nn.Embedding(V, D, prefix='emb_'),
    'embedding_sparse_grad': lambda: gluon.nn.Embedding(V, D, sparse_grad=True, prefix='emb_'),
}

# (layer, contexts, kvstore, update_on_kvstore): where training leaves the table.
PLACES = [
    ('sparse_embedding', CTX1, 'local', None),      # row_sparse weights: on the kvstore
    ('sparse_embedding', CTX1, 'device', None),
    ('sparse_embedding', CTX2, 'local', None),
    ('sparse_embedding', CTX2, 'device', None),
    ('embedding', CTX1, None, None),                # no kvstore: the parameter itself
    ('embedding', CTX2, 'local', False),            # reduced on the kvstore, updated per context
    ('embedding', CTX2, 'device', True),            # updated on the kvstore, pulled back
    ('embedding', CTX2, 'local', True),
    ('embedding_sparse_grad', CTX2, 'device', None),
    ('embedding_sparse_grad', CTX2, 'local', True),
]


@pytest.mark.parametrize('layer, ctxs, kvstore, update_on_kvstore', PLACES,
                         ids=['%s-%dctx-%s-%s' % (p[0], len(p[1]), p[2], p[3]) for p in PLACES])
def test_trained_embedding_grown_keeps_every_trained_row_and_trains_on(layer, ctxs, kvstore,
                                                                        update_on_kvstore):
    """grow_embedding after training: old rows are the trained table, bit for bit, on every
    context; a new Trainer with the mask trains the new rows and leaves the old ones."""
    warnings.simplefilter('ignore', UserWarning)
    make = EMBEDDINGS[layer]
    twin, _ = _train_embedding(make, ctxs, kvstore, update_on_kvstore)
    trained = _full(twin.weight)[0]      # the table training produced (its own twin's)
    block, _ = _train_embedding(make, ctxs, kvstore, update_on_kvstore)
    assert changed_bits(trained[5], np.random.RandomState(0).uniform(-1, 1, (V, D))[5]) > 0

    mask = mo.grow_embedding(block, N_NEW, seed=0)
    assert mask == mo.train_rows_from(V) and block.weight.shape == (V + N_NEW, D)
    grown = [d.tostype('default').asnumpy() for d in block.weight._data]
    for k, g in enumerate(grown):
        assert_same_bits(trained, g[:V], 'old rows on context %d vs the trained table' % k)
        assert_same_bits(grown[0], g, 'context %d vs context 0' % k)

    trainer = gluon.Trainer(block.collect_params(), 'masked',
                            {'base': 'adam', 'learning_rate': 0.1, 'wd': 0.01,
                             'masks': {block.weight: mask}},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    for ids in NEW_BATCHES:
        _step(block, trainer, ctxs, ids)
    for k, after in enumerate(_full(block.weight)):
        assert_same_bits(trained, after[:V], 'old rows after training on, context %d' % k)
        assert changed_bits(grown[0][V:], after[V:]) == N_NEW * D, 'new rows did not all train'


def test_the_issue_repro_grown_table_stores_every_row():
    """The issue's numbers: a (10, 4) SparseEmbedding after 3 steps grows into a table that
    stores all 13 rows (it stored [1, 2, 10, 11, 12]) and whose old rows are the trained ones."""
    block, _ = _train_embedding(EMBEDDINGS['sparse_embedding'], CTX1, 'local', None)
    assert block.weight._data[0].indices.asnumpy().tolist() == [1, 2]   # what the layer holds
    twin, _ = _train_embedding(EMBEDDINGS['sparse_embedding'], CTX1, 'local', None)
    mo.grow_embedding(block, N_NEW, seed=0)
    data = block.weight._data[0]
    assert data.indices.asnumpy().tolist() == list(range(V + N_NEW))
    assert_same_bits(_full(twin.weight)[0], data.asnumpy()[:V], 'old rows vs trained table')


def test_sparse_embedding_grown_twice_keeps_the_rows_trained_in_between():
    """Grow, train the new rows with a new Trainer, grow again: the second growth starts from
    the table the second Trainer trained (its kvstore), not from the first growth's copy."""
    block, _ = _train_embedding(EMBEDDINGS['sparse_embedding'], CTX1, 'local', None)
    mask = mo.grow_embedding(block, N_NEW, seed=0)
    trainer = gluon.Trainer(block.collect_params(), 'masked',
                            {'base': 'adam', 'learning_rate': 0.1, 'masks': {block.weight: mask}},
                            kvstore='local')
    for ids in NEW_BATCHES:
        _step(block, trainer, CTX1, ids)
    # Reading the trained table here would pull it into the layer: a twin run gives it.
    again = mo.grow_embedding(block, 2, seed=1)
    assert again == mo.train_rows_from(V + N_NEW)
    twin, _ = _train_embedding(EMBEDDINGS['sparse_embedding'], CTX1, 'local', None)
    twin_mask = mo.grow_embedding(twin, N_NEW, seed=0)
    twin_trainer = gluon.Trainer(twin.collect_params(), 'masked',
                                 {'base': 'adam', 'learning_rate': 0.1,
                                  'masks': {twin.weight: twin_mask}}, kvstore='local')
    for ids in NEW_BATCHES:
        _step(twin, twin_trainer, CTX1, ids)
    trained = twin.weight.row_sparse_data(mx.nd.arange(V + N_NEW, dtype='int64')).asnumpy()
    assert_same_bits(trained, block.weight._data[0].asnumpy()[:V + N_NEW],
                     'rows 0..12 after the second growth vs the table trained in between')


def test_untrained_sparse_embedding_needs_no_trainer():
    """A SparseEmbedding no Trainer has touched holds its whole table: grown as it is."""
    block = SparseEmbedding(V, D)
    block.initialize(mx.init.Uniform(0.5))
    before = block.weight._data[0].asnumpy()
    mo.grow_embedding(block, N_NEW, seed=0)
    assert_same_bits(before, block.weight._data[0].asnumpy()[:V])


@pytest.mark.parametrize('ctxs, kvstore, update_on_kvstore', [
    (CTX1, None, None), (CTX2, 'device', True), (CTX2, 'local', False)])
def test_trained_dense_head_grown_keeps_every_trained_row(ctxs, kvstore, update_on_kvstore):
    """grow_dense after training on a kvstore or per context: old weight rows and bias entries
    are the trained ones on every context; a new Trainer trains only the new units."""
    def train():
        net = gluon.nn.Dense(3, in_units=D, prefix='head_')
        net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
        rng = np.random.RandomState(0)
        net.weight.set_data(mx.nd.array(rng.uniform(-1, 1, (3, D))))
        net.bias.set_data(mx.nd.array(rng.uniform(-1, 1, 3)))
        trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.1},
                                kvstore=kvstore, update_on_kvstore=update_on_kvstore)
        x = mx.nd.array(np.random.RandomState(1).normal(size=(4, D)))
        for _ in range(3):
            with autograd.record():
                losses = [(net(x.as_in_context(c)) ** 2).sum() for c in ctxs]
            autograd.backward(losses)
            trainer.step(4)
        return net, x
    twin, _ = train()
    net, x = train()
    trained = [p.list_data()[0].asnumpy() for p in (twin.weight, twin.bias)]
    masks = mo.grow_dense(net, 2, seed=0)
    grown = [p.list_data()[0].asnumpy() for p in (net.weight, net.bias)]
    for p, old in zip((net.weight, net.bias), trained, strict=True):
        for d in p.list_data():
            assert_same_bits(old, d.asnumpy()[:3], p.name + ' old rows vs trained')
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            {'base': 'adam', 'learning_rate': 0.1, 'masks': masks},
                            kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    with autograd.record():
        losses = [(net(x.as_in_context(c)) ** 2).sum() for c in ctxs]
    autograd.backward(losses)
    trainer.step(4)
    for p, old, new in zip((net.weight, net.bias), trained, grown, strict=True):
        for d in p.list_data():
            assert_same_bits(old, d.asnumpy()[:3], p.name + ' old rows after a masked step')
            assert changed_bits(new[3:], d.asnumpy()[3:]) > 0, p.name + ' new rows did not move'


# ---- Module: get_params() is where the trained table is read ----

def _sparse_module(n_rows, ctxs):
    data = mx.sym.Variable('data')
    weight = mx.sym.Variable('emb_weight', stype='row_sparse', shape=(n_rows, D))
    emb = mx.sym.contrib.SparseEmbedding(data, weight, input_dim=n_rows, output_dim=D,
                                         name='emb')
    out = mx.sym.sum(emb, axis=1)
    net = mx.sym.LinearRegressionOutput(out, mx.sym.Variable('label'))
    return mx.mod.Module(net, data_names=['data'], label_names=['label'], context=ctxs)


def _dense_module(n_rows, ctxs):
    data = mx.sym.Variable('data')
    emb = mx.sym.Embedding(data, input_dim=n_rows, output_dim=D, name='emb')
    net = mx.sym.LinearRegressionOutput(mx.sym.sum(emb, axis=1), mx.sym.Variable('label'))
    return mx.mod.Module(net, data_names=['data'], label_names=['label'], context=ctxs)


def _module_iter(batches, n):
    ids = np.array([i for b in batches for i in b], dtype=np.float32)
    label = np.random.RandomState(2).normal(size=ids.size).astype(np.float32)
    return mx.io.NDArrayIter({'data': ids}, {'label': label}, batch_size=n)


@pytest.mark.parametrize('kind, ctxs, kvstore', [('sparse', CTX1, 'local'),
                                                 ('sparse', CTX2, 'device'),
                                                 ('dense', CTX2, 'device'),
                                                 ('dense', CTX2, 'local')])
def test_module_trained_on_a_kvstore_grow_params(kind, ctxs, kvstore):
    """Module reads a row_sparse weight back from the kvstore in get_params(): grow_params on
    it keeps every trained row (checked against the kvstore's own table), and a Module of the
    new size trains only the new rows."""
    make = _sparse_module if kind == 'sparse' else _dense_module
    mod = make(V, ctxs)
    it = _module_iter(BATCHES, 2)
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(mx.init.Uniform(0.5))
    mod.init_optimizer(kvstore=kvstore, optimizer='adam',
                       optimizer_params={'learning_rate': 0.1})
    for batch in it:
        mod.forward_backward(batch)
        mod.update()
    arg_params, aux_params = mod.get_params()
    trained = arg_params['emb_weight'].tostype('default').asnumpy()
    # Module makes no kvstore for one device: the table is then the module's own.
    assert (mod._kvstore is not None) == (len(ctxs) > 1) == bool(mod._update_on_kvstore)
    if kind == 'sparse' and mod._kvstore is not None:
        # The kvstore's own table, pulled by hand: what get_params() must have returned.
        out = mx.nd.sparse.zeros('row_sparse', (V, D))
        mod._kvstore.row_sparse_pull('emb_weight', out=out,
                                     row_ids=mx.nd.arange(V, dtype='int64'))
        assert_same_bits(out.asnumpy(), trained, 'get_params vs the kvstore')
    params, masks = mo.grow_params(arg_params, {'emb_weight': N_NEW}, seed=0)
    assert_same_bits(trained, params['emb_weight'].tostype('default').asnumpy()[:V])

    grown = make(V + N_NEW, ctxs)
    it = _module_iter(NEW_BATCHES, 3)
    grown.bind(it.provide_data, it.provide_label)
    grown.init_params(arg_params=params, aux_params=aux_params)
    grown.init_optimizer(kvstore=kvstore, optimizer='masked',
                         optimizer_params={'base': 'adam', 'learning_rate': 0.1,
                                           'masks': masks})
    for batch in it:
        grown.forward_backward(batch)
        grown.update()
    after = grown.get_params()[0]['emb_weight'].tostype('default').asnumpy()
    assert_same_bits(trained, after[:V], 'old rows after training on')
    assert changed_bits(as_bits(params['emb_weight'].tostype('default'))[V:],
                        as_bits(after[V:])) > 0
