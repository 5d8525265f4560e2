"""C2 and C9 with ``gluon.Trainer``: the masked optimizer on an ``nn.Embedding`` model, bit for bit.

The reference is the same training done with the *unwrapped* optimizer on a network where the
frozen part of the table is a separate parameter with ``grad_req='null'`` and the trainable part
is a parameter of its own; the table is ``concat(frozen, trainable)`` along rows or columns and
looked up with ``Embedding``. Both networks compute the same Embedding gradient for the whole
table (``concat``'s backward only slices it), and the wrapped optimizer updates the trainable
block as its own parameter, so the result must agree to the bit: frozen part, trainable part and
the other (unmasked) table. Both runs vary the batch size on every ``step`` (Trainer changes
``rescale_grad`` each time) and change the learning rate mid-run.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from models import GluonMF
from mxnet import autograd, gluon

import masked_opt as mo

N_USERS, N_ITEMS, N_OLD, DIM = 20, 16, 12, 8
TRAIN_COLS = [6, 7]             # the last two columns: concat(frozen, trainable) keeps the order
BATCH_SIZES = [8, 5, 12, 3, 8, 7, 16, 4]

SETTINGS = [
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam-wd'),
]


def _initial_tables():
    rng = np.random.RandomState(11)
    return (rng.uniform(-.5, .5, (N_USERS, DIM)).astype(np.float32),
            rng.uniform(-.5, .5, (N_ITEMS, DIM)).astype(np.float32))


def _batches():
    rng = np.random.RandomState(12)
    return [(mx.nd.array(rng.randint(0, N_USERS, b)), mx.nd.array(rng.randint(0, N_ITEMS, b)),
             mx.nd.array(rng.rand(b))) for b in BATCH_SIZES]


def _masked_net(hybridize):
    user, book = _initial_tables()
    net = GluonMF(N_USERS, N_ITEMS, DIM)
    net.initialize()
    net.user.weight.set_data(mx.nd.array(user))
    net.book.weight.set_data(mx.nd.array(book))
    if hybridize:
        net.hybridize()
    return net


class _SplitUserMF(gluon.HybridBlock):
    """GluonMF whose user table is ``concat(frozen, trainable)`` of two parameters."""

    def __init__(self, axis, n_frozen):
        super().__init__(prefix='ref_')
        user, book = _initial_tables()
        cut = (slice(None, n_frozen), slice(n_frozen, None))
        parts = [user[c] if axis == 0 else user[:, c] for c in cut]
        self.axis = axis
        with self.name_scope():
            self.frozen = self.params.get('frozen', shape=parts[0].shape, grad_req='null')
            self.trained = self.params.get('trained', shape=parts[1].shape)
            self.book = self.params.get('book', shape=book.shape)
        self.initialize()
        values = parts + [book]
        for param, value in zip([self.frozen, self.trained, self.book], values, strict=True):
            param.set_data(mx.nd.array(value))

    def hybrid_forward(self, F, member, book_ids, frozen, trained, book):
        user_table = F.concat(frozen, trained, dim=self.axis)
        user = F.Embedding(member, user_table, input_dim=N_USERS, output_dim=DIM)
        return 1 - F.sum(user * F.Embedding(book_ids, book, input_dim=N_ITEMS, output_dim=DIM),
                         axis=1)


def _split_net(kind, hybridize):
    net = _SplitUserMF(0, N_OLD) if kind == 'rows' else _SplitUserMF(1, DIM - len(TRAIN_COLS))
    if hybridize:
        net.hybridize()
    return net


def _user_mask(kind):
    return mo.train_rows_from(N_OLD) if kind == 'rows' else mo.train_cols(TRAIN_COLS)


def _train(net, trainer, change_lr=True):
    loss_fn = gluon.loss.L2Loss()
    for step, (member, book, label) in enumerate(_batches()):
        if change_lr and step == 3:
            trainer.set_learning_rate(trainer.learning_rate * 0.5)
        with autograd.record():
            loss = loss_fn(net(member, book), label)
        loss.backward()
        trainer.step(member.shape[0])


def _compare(kind, net, ref):
    """Masked net vs split reference, bit for bit, plus: frozen = initial, trainable moved."""
    user0, _ = _initial_tables()
    user = net.user.weight.data().asnumpy()
    if kind == 'rows':
        frozen, trained = user[:N_OLD], user[N_OLD:]
        frozen0, trained0 = user0[:N_OLD], user0[N_OLD:]
    else:
        n = DIM - len(TRAIN_COLS)
        frozen, trained = user[:, :n], user[:, n:]
        frozen0, trained0 = user0[:, :n], user0[:, n:]
    assert_same_bits(frozen0, frozen, 'frozen part vs initial')
    assert_same_bits(ref.frozen.data(), frozen, 'frozen part vs reference')
    assert_same_bits(ref.trained.data(), trained, 'trainable part vs reference')
    assert_same_bits(ref.book.data(), net.book.weight.data(), 'unmasked book table')
    assert np.all(trained != trained0), 'some trainable entries did not move'


@pytest.mark.parametrize('base,params', SETTINGS)
@pytest.mark.parametrize('kind', ['rows', 'cols'])
@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybridized'])
def test_trainer_matches_split_parameter_reference(hybridize, kind, base, params):
    net = _masked_net(hybridize)
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            dict(params, base=base, masks={net.user.weight: _user_mask(kind)}))
    _train(net, trainer)
    ref = _split_net(kind, hybridize)
    _train(ref, gluon.Trainer(ref.collect_params(), base, dict(params)))
    _compare(kind, net, ref)
    assert trainer.learning_rate == params['learning_rate'] * 0.5


@pytest.mark.parametrize('key', ['parameter', 'name', 'glob'])
def test_mask_keys_parameter_name_glob(key):
    net = _masked_net(hybridize=False)
    keys = {'parameter': net.user.weight, 'name': 'mf_user_weight', 'glob': '*user*'}
    params = {'learning_rate': 0.01, 'wd': 1e-3}
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            dict(params, base='adam', masks={keys[key]: _user_mask('rows')}))
    _train(net, trainer)
    ref = _split_net('rows', hybridize=False)
    _train(ref, gluon.Trainer(ref.collect_params(), 'adam', params))
    _compare('rows', net, ref)


@pytest.mark.parametrize('base,params', SETTINGS)
def test_lr_scheduler(base, params):
    # A scheduler is stateful (FactorScheduler lowers its base_lr in place): one per run.
    def scheduler():
        return mx.lr_scheduler.FactorScheduler(step=2, factor=0.5,
                                               base_lr=params['learning_rate'])
    net = _masked_net(hybridize=True)
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            dict(params, base=base, lr_scheduler=scheduler(),
                                 masks={net.user.weight: _user_mask('cols')}))
    _train(net, trainer, change_lr=False)
    ref = _split_net('cols', hybridize=True)
    ref_trainer = gluon.Trainer(ref.collect_params(), base, dict(params, lr_scheduler=scheduler()))
    _train(ref, ref_trainer, change_lr=False)
    _compare('cols', net, ref)
    # The schedule did act: 8 steps, halving every 2.
    assert trainer.learning_rate == ref_trainer.learning_rate < params['learning_rate'] / 4


@pytest.mark.parametrize('form', ['instance', 'base-instance'])
def test_trainer_with_an_optimizer_instance(form):
    params = {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}
    net = _masked_net(hybridize=False)
    masks = {net.user.weight: _user_mask('rows')}
    if form == 'instance':
        opt = mo.Masked(base='sgd', masks=masks, **params)
    else:
        opt = mo.Masked(base=mx.optimizer.SGD(**params), masks=masks)
    trainer = gluon.Trainer(net.collect_params(), opt)
    _train(net, trainer)
    ref = _split_net('rows', hybridize=False)
    _train(ref, gluon.Trainer(ref.collect_params(), 'sgd', params))
    _compare('rows', net, ref)


def test_trainer_update_after_allreduce_grads():
    """``allreduce_grads`` + ``update`` (the split form of ``step``) gives the same bits."""
    params = {'learning_rate': 0.01, 'wd': 1e-3}
    net = _masked_net(hybridize=False)
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            dict(params, base='adam', masks={net.user.weight: _user_mask('rows')}))
    loss_fn = gluon.loss.L2Loss()
    for member, book, label in _batches():
        with autograd.record():
            loss = loss_fn(net(member, book), label)
        loss.backward()
        trainer.allreduce_grads()
        trainer.update(member.shape[0])
    ref = _split_net('rows', hybridize=False)
    _train(ref, gluon.Trainer(ref.collect_params(), 'adam', params), change_lr=False)
    _compare('rows', net, ref)
