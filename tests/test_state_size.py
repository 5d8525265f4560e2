"""C6: the optimizer state exists only for the trainable block (bytes, not time).

Adam keeps two arrays the size of its parameter. Wrapped by masked_opt, it keeps them the size
of the trainable block: 1% of the rows of a (10000, 64) table -> ~1% of the bytes of unmasked
Adam, 1 column of 8 -> exactly 1/8. Checked through the objects MXNet's trainers really hold
(Gluon Trainer's updater, Module's updater, the kvstore's updater for a row_sparse weight),
after training steps, for dense and row_sparse gradients.
"""
import mxnet as mx
import numpy as np
import pytest
from models import forum_mf, mf_iter, ratings
from mxnet import autograd, gluon

import masked_opt as mo

ROWS, DIM = 10000, 64
NEW = ROWS // 100   # 1% new rows


def nbytes(state):
    """Bytes held by the NDArrays of a (possibly nested) optimizer state."""
    if isinstance(state, mx.nd.NDArray):
        return state.size * np.dtype(state.dtype).itemsize
    if isinstance(state, (list, tuple)):
        return sum(nbytes(s) for s in state)
    return 0


def _gluon_state_bytes(optimizer, params, mask, sparse_grad, dtype='float32'):
    """Train an Embedding(ROWS, DIM) two steps; return the bytes of its optimizer state."""
    net = gluon.nn.Embedding(ROWS, DIM, sparse_grad=sparse_grad, dtype=dtype)
    net.initialize(mx.init.Uniform(0.1))
    if mask is None:
        trainer = gluon.Trainer(net.collect_params(), optimizer, params)
    else:
        trainer = gluon.Trainer(net.collect_params(), 'masked',
                                dict(params, base=optimizer, masks={net.weight: mask}))
    x = mx.nd.array(np.r_[np.arange(0, ROWS, 97), np.arange(ROWS - NEW, ROWS, 3)])
    for _ in range(2):
        with autograd.record():
            loss = net(x).astype('float32').sum()
        loss.backward()
        trainer.step(1)
    states = trainer._updaters[0].states
    assert len(states) == 1
    return nbytes(states[0])


@pytest.mark.parametrize('sparse_grad', [False, True], ids=['dense-grad', 'sparse-grad'])
def test_adam_state_for_one_percent_of_rows_is_at_most_two_percent(sparse_grad):
    params = {'learning_rate': 1e-3}
    plain = _gluon_state_bytes('adam', params, None, sparse_grad)
    masked = _gluon_state_bytes('adam', params, mo.train_rows_from(ROWS - NEW), sparse_grad)
    assert plain == 2 * ROWS * DIM * 4                 # mean and variance, float32
    assert masked == 2 * NEW * DIM * 4                 # the same, for the block only
    assert masked <= 0.02 * plain


@pytest.mark.parametrize('sparse_grad', [False, True], ids=['dense-grad', 'sparse-grad'])
def test_latent_split_one_column_of_eight_holds_one_eighth(sparse_grad):
    params = {'learning_rate': 1e-3}
    plain = _gluon_state_bytes('adam', params, None, sparse_grad)
    cols = mo.train_cols(range(DIM - DIM // 8, DIM))  # 1 of every 8 latent columns
    masked = _gluon_state_bytes('adam', params, cols, sparse_grad)
    assert masked * 8 == plain


def test_multi_precision_master_copy_is_block_sized_too():
    """float16 weight + multi_precision: the float32 master copy covers the block only."""
    params = {'learning_rate': 1e-3, 'multi_precision': True}
    plain = _gluon_state_bytes('adam', params, None, False, dtype='float16')
    masked = _gluon_state_bytes('adam', params, mo.train_rows_from(ROWS - NEW), False,
                                dtype='float16')
    assert plain == 3 * ROWS * DIM * 4                 # master copy, mean, variance
    assert masked == 3 * NEW * DIM * 4


def test_sgd_momentum_state_in_module():
    """Module.fit holds the state in its updater: block-sized for the masked table only."""
    n_items = ROWS
    member, book, label = ratings(50, n_items, 64, seed=1)
    mod = mx.mod.Module(forum_mf(50, n_items, 8), data_names=['member', 'book'],
                        label_names=['label'])
    mod.fit(mf_iter(member, book, label, 32), num_epoch=1, optimizer='masked',
            optimizer_params={'base': 'sgd', 'momentum': 0.9, 'learning_rate': 0.01,
                              'masks': {'book_embedding_weight': mo.train_rows_from(n_items -
                                                                                    NEW)}})
    names = mod._exec_group.param_names
    states = mod._updater.states
    assert nbytes(states[names.index('book_embedding_weight')]) == NEW * 8 * 4
    assert nbytes(states[names.index('member_embedding_weight')]) == 50 * 8 * 4   # unmasked


def test_row_sparse_weight_state_on_kvstore_is_block_sized():
    """SparseEmbedding (row_sparse weight, updated on the kvstore): block-sized Adam state."""
    net = gluon.contrib.nn.SparseEmbedding(ROWS, DIM)
    net.initialize(mx.init.Uniform(0.1))
    trainer = gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 1e-3, 'masks': {net.weight: mo.train_rows_from(
            ROWS - NEW)}}, kvstore='local')
    x = mx.nd.array(np.arange(ROWS - 50, ROWS))
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    trainer.step(1)
    assert trainer._update_on_kvstore
    states = trainer._kvstore._updater.states
    assert len(states) == 1
    assert nbytes(next(iter(states.values()))) == 2 * NEW * DIM * 4


@pytest.mark.parametrize('path', ['pure', 'auto'])
def test_dense_path_keeps_one_block_sized_buffer(path):
    """Besides the state, the pure dense path keeps one reusable block-sized weight buffer,
    and a contiguous mask keeps no index arrays: the plan's device memory follows the block.
    The in-place strategy (path 'auto' with the native library) keeps no buffer at all."""
    from masked_opt import inplace_check
    opt = mo.Masked(base='adam', learning_rate=1e-3, param_idx2name={0: 'emb_weight'},
                    masks={'emb_weight': mo.train_rows_from(ROWS - NEW)})
    opt.step_path = path
    weight = mx.nd.zeros((ROWS, DIM))
    state = opt.create_state(0, weight)
    for _ in range(2):
        opt.update(0, weight, mx.nd.ones((ROWS, DIM)), state)
    plan = opt.plan_for(0, weight)
    in_place = path == 'auto' and inplace_check.status().usable
    assert sum(nbytes(b) for b in plan.buffers()) == (0 if in_place else NEW * DIM * 4)
    assert plan.index_arrays() == []


def test_nbytes_counts_nested_states():
    assert nbytes((mx.nd.zeros((2, 3)), None, [mx.nd.zeros(4, dtype='float16')])) == 24 + 8
