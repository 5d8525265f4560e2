"""Several devices on one machine (``mx.cpu(0)``, ``mx.cpu(1)``): Module and Gluon, every kvstore.

MXNet treats ``cpu(0)`` and ``cpu(1)`` as distinct contexts, with one copy of each parameter per
context, exactly as with several GPUs. The masked optimizer materialises one plan per context.
Checked on the bits: frozen entries are unchanged on every copy, the copies agree with each
other (when a kvstore sums the gradients), and the trainable entries moved. The Module runs
are also compared with workaround (A) (split embedding + ``fixed_param_names``) on the same two
devices: the trainable columns end bit-identical to the oracle's trainable embedding.
"""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, changed_bits
from models import forum_mf, mf_iter, ratings, split_embedding_mf

import masked_opt as mo
from masked_opt import server

CTXS = [mx.cpu(0), mx.cpu(1)]
N_USERS, N_ITEMS, N_OLD, DIM = 12, 10, 7, 8
TRAIN_COL = 7


def _fit_module(sym, masks, kvstore, monkeypatch, update_on_kvstore, fixed=(), arg_params=None,
                base='adam'):
    monkeypatch.setenv('MXNET_UPDATE_ON_KVSTORE', '1' if update_on_kvstore else '0')
    member, book, label = ratings(N_USERS, N_ITEMS, 64, seed=1)
    it = mf_iter(member, book, label, batch_size=16)
    mod = mx.mod.Module(sym, data_names=['member', 'book'], label_names=['label'],
                        context=CTXS, fixed_param_names=list(fixed))
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(initializer=mx.init.Uniform(0.5), arg_params=arg_params,
                    allow_missing=arg_params is None or True)
    init = {k: v.copy() for k, v in mod.get_params()[0].items()}
    params = {'learning_rate': 0.05, 'wd': 0.01}
    if masks is not None:
        optimizer, params = 'masked', dict(params, base=base, masks=masks)
    else:
        optimizer = base
    mod.init_optimizer(kvstore=kvstore, optimizer=optimizer, optimizer_params=params)
    for _ in range(2):
        it.reset()
        for batch in it:
            mod.forward_backward(batch)
            mod.update()
    copies = {name: [a.copy() for a in arrays] for name, arrays in
              zip(mod._exec_group.param_names, mod._exec_group.param_arrays, strict=True)}
    return mod, init, copies


@pytest.mark.parametrize('kvstore,update_on_kvstore', [
    (None, False), ('local', True), ('local', False), ('device', True), ('device', False)])
def test_module_two_devices_rows_and_cols(kvstore, update_on_kvstore, monkeypatch):
    masks = {'book_embedding_weight': mo.train_rows_from(N_OLD),
             'member_embedding_weight': mo.train_cols([TRAIN_COL])}
    mod, init, copies = _fit_module(forum_mf(N_USERS, N_ITEMS, DIM), masks, kvstore,
                                    monkeypatch, update_on_kvstore)
    assert mod._update_on_kvstore == update_on_kvstore
    book, member = copies['book_embedding_weight'], copies['member_embedding_weight']
    for dev, (b, m) in enumerate(zip(book, member, strict=True)):
        assert_same_bits(init['book_embedding_weight'][:N_OLD], b[:N_OLD], 'old rows, dev %d' % dev)
        assert_same_bits(init['member_embedding_weight'][:, :TRAIN_COL], m[:, :TRAIN_COL],
                         'frozen cols, dev %d' % dev)
        assert changed_bits(init['book_embedding_weight'][N_OLD:], b[N_OLD:]) > 0
        assert changed_bits(init['member_embedding_weight'][:, TRAIN_COL],
                            m[:, TRAIN_COL]) > 0
    if kvstore is None:
        # Without a kvstore each device updates its copy with its own half of the batch: the
        # trainable entries differ between copies (MXNet's behaviour, not ours).
        assert changed_bits(book[0], book[1]) > 0
    else:
        assert_same_bits(book[0], book[1], 'book copies')
        assert_same_bits(member[0], member[1], 'member copies')


@pytest.mark.parametrize('kvstore,update_on_kvstore', [
    ('local', True), ('local', False), ('device', True), ('device', False)])
def test_module_two_devices_matches_split_embedding(kvstore, update_on_kvstore, monkeypatch):
    """C2 on two devices: the trainable column equals workaround (A)'s trainable embedding."""
    rng = np.random.RandomState(3)
    member = rng.uniform(-0.5, 0.5, (N_USERS, DIM)).astype(np.float32)
    book = rng.uniform(-0.5, 0.5, (N_ITEMS, DIM)).astype(np.float32)
    k = DIM - TRAIN_COL
    masked_args = {'member_embedding_weight': mx.nd.array(member),
                   'book_embedding_weight': mx.nd.array(book)}
    split_args = {'member_embedding1_weight': mx.nd.array(member[:, :TRAIN_COL]),
                  'member_embedding2_weight': mx.nd.array(member[:, TRAIN_COL:]),
                  'book_embedding_weight': mx.nd.array(book)}
    _, _, got = _fit_module(forum_mf(N_USERS, N_ITEMS, DIM),
                            {'member_embedding_weight': mo.train_cols([TRAIN_COL])}, kvstore,
                            monkeypatch, update_on_kvstore, arg_params=masked_args)
    _, _, want = _fit_module(split_embedding_mf(N_USERS, N_ITEMS, DIM, n_train_cols=k), None,
                             kvstore, monkeypatch, update_on_kvstore,
                             fixed=['member_embedding1_weight'], arg_params=split_args)
    for dev in range(len(CTXS)):
        assert_same_bits(want['member_embedding2_weight'][dev],
                         got['member_embedding_weight'][dev][:, TRAIN_COL:],
                         'trainable column vs oracle, dev %d' % dev)
        assert_same_bits(want['book_embedding_weight'][dev], got['book_embedding_weight'][dev],
                         'unmasked book embedding vs oracle, dev %d' % dev)


class _MF(mx.gluon.HybridBlock):
    def __init__(self):
        super().__init__()
        with self.name_scope():
            self.user = mx.gluon.nn.Embedding(N_USERS, DIM)
            self.item = mx.gluon.nn.Embedding(N_ITEMS, DIM)

    def hybrid_forward(self, F, u, i):
        return F.sum(self.user(u) * self.item(i), axis=1)


@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('kvstore,update_on_kvstore', [
    (None, None), ('local', True), ('local', False), ('device', True), ('device', False)])
def test_gluon_two_devices(kvstore, update_on_kvstore, hybridize):
    net = _MF()
    net.initialize(mx.init.Uniform(0.5), ctx=CTXS)
    if hybridize:
        net.hybridize()
    trainer = mx.gluon.Trainer(
        net.collect_params(), 'masked',
        {'base': 'sgd', 'momentum': 0.9, 'wd': 0.01, 'learning_rate': 0.1,
         'masks': {net.item.weight: mo.train_rows_from(N_OLD),
                   net.user.weight: mo.train_cols([TRAIN_COL])}},
        kvstore=kvstore, update_on_kvstore=update_on_kvstore)
    init = {p: p.data(CTXS[0]).copy() for p in (net.user.weight, net.item.weight)}
    member, book, label = ratings(N_USERS, N_ITEMS, 64, seed=2)
    for step in range(4):
        sl = slice(step * 16, step * 16 + 16)
        parts = [[mx.nd.array(a[sl][h::2], ctx=c) for a in (member, book, label)]
                 for h, c in enumerate(CTXS)]
        with mx.autograd.record():
            losses = [((net(u, i) - y) ** 2).sum() for u, i, y in parts]
        mx.autograd.backward(losses)
        trainer.step(16)
    users = [net.user.weight.data(c) for c in CTXS]
    items = [net.item.weight.data(c) for c in CTXS]
    for dev in range(len(CTXS)):
        assert_same_bits(init[net.item.weight][:N_OLD], items[dev][:N_OLD], 'old rows %d' % dev)
        assert_same_bits(init[net.user.weight][:, :TRAIN_COL], users[dev][:, :TRAIN_COL],
                         'frozen cols %d' % dev)
        assert changed_bits(init[net.item.weight][N_OLD:], items[dev][N_OLD:]) > 0
        assert changed_bits(init[net.user.weight][:, TRAIN_COL], users[dev][:, TRAIN_COL]) > 0
    if kvstore is None:
        assert changed_bits(items[0], items[1]) > 0  # each copy saw only its own gradients
    else:
        assert_same_bits(items[0], items[1], 'item copies')
        assert_same_bits(users[0], users[1], 'user copies')
    # One plan per context for each masked parameter (none on the server side here).
    opt = trainer._optimizer
    planned = {ctx for (_, ctx), plan in opt.plans.items() if plan is not None}
    if kvstore is not None and update_on_kvstore:
        assert len(planned) == 1  # the kvstore updates once, on its merge buffer's context
    else:
        assert planned == set(CTXS)


def test_as_bits_sanity():
    """The helpers used above see a one-ulp change (so the tests above can fail)."""
    a = mx.nd.array([1.0])
    b = mx.nd.array(np.nextafter(np.float32(1.0), np.float32(2.0), dtype=np.float32)[None])
    assert changed_bits(a, b) == 1
    assert as_bits(a)[0] + 1 == as_bits(b)[0]


_BAD_MASK_SCRIPT = '''
import os, sys
os.environ['MXNET_UPDATE_ON_KVSTORE'] = '1'
sys.path.insert(0, %r)
import mxnet as mx, masked_opt as mo
from models import forum_mf, mf_iter, ratings
it = mf_iter(*ratings(10, 10, 32), batch_size=8)
mod = mx.mod.Module(forum_mf(10, 10, 4), data_names=['member', 'book'], label_names=['label'],
                    context=[mx.cpu(0), mx.cpu(1)])
mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
mod.init_params()
mod.init_optimizer(kvstore='local', optimizer='masked',
                   optimizer_params={'masks': {'book_embedding_weight': mo.train_rows([1])}})
# A bad mask is a ValueError in init_optimizer (tests/test_early_errors.py); an error that
# shows only inside the updater (here: a mask swapped in afterwards) must still stop.
mod._optimizer.masks['book_embedding_weight'] = mo.train_rows([100])
mod.fit(it, num_epoch=1)
print('trained on')
'''


def test_error_inside_the_local_kvstore_updater_stops_the_process():
    """MXNet prints and ignores an exception raised in its kvstore updater (a ctypes callback)
    and trains on; the masked optimizer ends the process with the message instead. (Masks are
    checked before, when the kvstore gets the optimizer; this error slips past that check.)"""
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, '-c', _BAD_MASK_SCRIPT % tests], capture_output=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == server.EXIT_CODE, out
    assert 'trained on' not in out
    assert 'train_rows index 100 is out of range' in out
