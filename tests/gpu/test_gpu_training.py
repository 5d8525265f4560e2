"""Training on the device under test: gluon.Trainer (dense and sparse gradients), Module.fit,
and several contexts at once (``[mx.gpu(0), mx.cpu(0)]``), checked on the bits."""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits
from gpu_env import RUN, SKIP_REASON, device, second_device
from models import GluonMF, forum_mf, mf_iter, ratings

import masked_opt as mo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not RUN, reason=SKIP_REASON)]

N_USERS, N_ITEMS, N_OLD, DIM = 30, 25, 20, 8


def _batches(n=256, batch_size=32, seed=0):
    member, book, label = ratings(N_USERS, N_ITEMS, n, seed=seed)
    return [(member[i:i + batch_size], book[i:i + batch_size], label[i:i + batch_size])
            for i in range(0, n, batch_size)]


def _train_gluon(ctxs, sparse_grad=False, kvstore='device', update_on_kvstore=None):
    net = GluonMF(N_USERS, N_ITEMS, DIM, sparse_grad=sparse_grad)
    net.initialize(mx.init.Normal(0.1), ctx=ctxs)
    net.hybridize()
    before = {p.name: p.data(ctxs[0]).asnumpy() for p in (net.user.weight, net.book.weight)}
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-3,
        'masks': {net.book.weight: mo.train_rows_from(N_OLD),
                  net.user.weight: mo.train_cols([DIM - 1])}},
        kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    loss_fn = mx.gluon.loss.L2Loss()
    for member, book, label in _batches():
        parts = [np.array_split(a, len(ctxs)) for a in (member, book, label)]
        with mx.autograd.record():
            losses = [loss_fn(net(mx.nd.array(m, ctx=c), mx.nd.array(b, ctx=c)),
                              mx.nd.array(y, ctx=c))
                      for c, m, b, y in zip(ctxs, *parts, strict=True)]
        for loss in losses:
            loss.backward()
        trainer.step(len(member))
    after = {p.name: [p.data(c).asnumpy() for c in ctxs]
             for p in (net.user.weight, net.book.weight)}
    return net, before, after


def _check_frozen_and_moved(net, before, after):
    user, book = net.user.weight.name, net.book.weight.name
    for copy in range(len(after[user])):
        assert_same_bits(before[book][:N_OLD], after[book][copy][:N_OLD], 'old book rows')
        assert_same_bits(before[user][:, :-1], after[user][copy][:, :-1], 'frozen user columns')
        assert changed_bits(before[book][N_OLD:], after[book][copy][N_OLD:]) > 0
        assert changed_bits(before[user][:, -1], after[user][copy][:, -1]) > 0


@pytest.mark.parametrize('sparse_grad', [False, True], ids=['dense_grad', 'sparse_grad'])
def test_trainer_hybridized_on_device(sparse_grad):
    net, before, after = _train_gluon([device()], sparse_grad=sparse_grad)
    _check_frozen_and_moved(net, before, after)


def test_module_fit_on_device():
    ctx = device()
    member, book, label = ratings(N_USERS, N_ITEMS, 256, seed=1)
    rng = np.random.RandomState(1)
    arg_params = {'member_embedding_weight': mx.nd.array(rng.normal(0, .1, (N_USERS, DIM))),
                  'book_embedding_weight': mx.nd.array(rng.normal(0, .1, (N_ITEMS, DIM)))}
    before = {k: v.asnumpy() for k, v in arg_params.items()}
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'], context=ctx)
    mod.fit(mf_iter(member, book, label, 32), num_epoch=2, arg_params=arg_params,
            optimizer='masked', optimizer_params={
                'base': 'sgd', 'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3,
                'masks': {'book_embedding_weight': mo.train_rows_from(N_OLD),
                          'member_embedding_weight': mo.train_cols([DIM - 1])}})
    after = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
    assert_same_bits(before['book_embedding_weight'][:N_OLD],
                     after['book_embedding_weight'][:N_OLD], 'old book rows')
    assert_same_bits(before['member_embedding_weight'][:, :-1],
                     after['member_embedding_weight'][:, :-1], 'frozen member columns')
    assert changed_bits(before['book_embedding_weight'][N_OLD:],
                        after['book_embedding_weight'][N_OLD:]) > 0


@pytest.mark.parametrize('kvstore,update_on_kvstore', [
    ('device', True), ('device', False), ('local', True), ('local', False)])
def test_trainer_two_contexts(kvstore, update_on_kvstore):
    """Device and second context (gpu(0) + cpu(0)): frozen entries intact on every copy."""
    net, before, after = _train_gluon([device(), second_device()], kvstore=kvstore,
                                      update_on_kvstore=update_on_kvstore)
    _check_frozen_and_moved(net, before, after)
    for name, (first, second) in after.items():
        if update_on_kvstore:
            # One update on the kvstore, broadcast to both copies.
            assert_same_bits(first, second, '%s copies' % name)
        else:
            # Each context updates its own copy from the same summed gradient; a GPU and a
            # CPU may round the optimizer's arithmetic differently (e.g. fused multiply-add),
            # so trainable entries agree to float32 rounding, frozen ones exactly (above).
            np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-7)


def test_module_two_contexts():
    member, book, label = ratings(N_USERS, N_ITEMS, 256, seed=2)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'], context=[device(), second_device()])
    rng = np.random.RandomState(2)
    arg_params = {'member_embedding_weight': mx.nd.array(rng.normal(0, .1, (N_USERS, DIM))),
                  'book_embedding_weight': mx.nd.array(rng.normal(0, .1, (N_ITEMS, DIM)))}
    before = {k: v.asnumpy() for k, v in arg_params.items()}
    mod.fit(mf_iter(member, book, label, 32), num_epoch=2, arg_params=arg_params,
            kvstore='device', optimizer='masked', optimizer_params={
        'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-3,
        'masks': {'book_embedding_weight': mo.train_rows_from(N_OLD)}})
    for copy in mod._exec_group.param_arrays[mod._exec_group.param_names.index(
            'book_embedding_weight')]:
        assert_same_bits(before['book_embedding_weight'][:N_OLD], copy[:N_OLD],
                         'old book rows on %s' % copy.context)
        assert changed_bits(before['book_embedding_weight'][N_OLD:], copy[N_OLD:]) > 0
