"""Adding classes to a trained classifier: the output layer's weight rows and bias entries for
the new classes train, and the old classes' logits stay bit-identical (Module and Gluon)."""
import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits

import masked_opt as mo
from masked_opt.grow import grow_dense


def _data(n, n_classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, n_classes, n).astype(np.float32)
    return x, y


def _module_net(n_classes):
    hidden = mx.sym.Activation(mx.sym.FullyConnected(mx.sym.Variable('data'), num_hidden=8,
                                                     name='hidden'), act_type='relu')
    out = mx.sym.FullyConnected(hidden, num_hidden=n_classes, name='out')
    return mx.sym.SoftmaxOutput(out, mx.sym.Variable('softmax_label'), name='softmax')


def _logits(arg_params, x, n_classes):
    net = mx.sym.FullyConnected(mx.sym.Activation(mx.sym.FullyConnected(
        mx.sym.Variable('data'), num_hidden=8, name='hidden'), act_type='relu'),
        num_hidden=n_classes, name='out')
    ex = net.bind(mx.cpu(), dict(arg_params, data=mx.nd.array(x)))
    return ex.forward()[0].asnumpy()


def test_module_classifier_grows_classes_old_logits_bit_identical():
    x, y = _data(300, 3, 0)
    mod = mx.mod.Module(_module_net(3), context=mx.cpu())
    mod.fit(mx.io.NDArrayIter(x, y, batch_size=50), num_epoch=2, optimizer='adam',
            initializer=mx.init.Xavier())
    old, _ = mod.get_params()
    params, masks = mo.grow_params(old, {'out_weight': 2}, seed=0)
    assert params['out_weight'].shape == (5, 8) and params['out_bias'].shape == (5,)
    assert sorted(masks) == ['out_bias', 'out_weight']
    assert_same_bits(as_bits(old['out_bias']), params['out_bias'][:3])
    before = _logits(old, x, 3)

    x2, y2 = _data(300, 5, 1)
    # The rest of the network stays as it was: whole parameters freeze with fixed_param_names.
    grown = mx.mod.Module(_module_net(5), context=mx.cpu(),
                          fixed_param_names=['hidden_weight', 'hidden_bias'])
    grown.fit(mx.io.NDArrayIter(x2, y2, batch_size=50), num_epoch=2, arg_params=params,
              optimizer='masked', optimizer_params={'base': 'adam', 'learning_rate': 0.01,
                                                    'wd': 1e-3, 'masks': masks})
    after, _ = grown.get_params()
    for name in ('hidden_weight', 'hidden_bias'):
        assert_same_bits(as_bits(old[name]), after[name], name)
    assert_same_bits(as_bits(old['out_weight']), after['out_weight'][:3])
    assert_same_bits(as_bits(old['out_bias']), after['out_bias'][:3])
    assert (after['out_bias'][3:].asnumpy() != params['out_bias'][3:].asnumpy()).all()
    logits = _logits(after, x, 5)
    assert (logits[:, :3].view(np.uint32) == before.view(np.uint32)).all()


@pytest.mark.parametrize('hybridize', [False, True])
def test_gluon_dense_grows_in_place_old_logits_bit_identical(hybridize):
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(8, activation='relu', in_units=6),
            mx.gluon.nn.Dense(3, in_units=8, prefix='head_'))
    net.initialize(mx.init.Xavier())
    if hybridize:
        net.hybridize()
    x, y = _data(200, 3, 0)
    X, Y = mx.nd.array(x), mx.nd.array(y)
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    trainer = mx.gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.01})
    for _ in range(3):
        with mx.autograd.record():
            loss = loss_fn(net(X), Y)
        loss.backward()
        trainer.step(200)
    head = net[1]
    names = (head.weight.name, head.bias.name)
    before = net(X).asnumpy()
    old = {p.name: as_bits(p.data()) for p in net.collect_params().values()}

    masks = grow_dense(head, 2, seed=0, parent=net)
    assert (head.weight.name, head.bias.name) == names
    assert head.weight.shape == (5, 8) and head.bias.shape == (5,)
    assert head.weight.data().context == mx.cpu() and head.weight.data().dtype == np.float32
    assert set(masks) == {head.weight, head.bias}
    assert (net(X).asnumpy()[:, :3].view(np.uint32) == before.view(np.uint32)).all()

    x2, y2 = _data(200, 5, 1)
    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-3,
                                'masks': {**masks, net[0].weight: mo.freeze_rows(
                                    range(8)), net[0].bias: mo.freeze_rows(range(8))}})
    for _ in range(3):
        with mx.autograd.record():
            loss = loss_fn(net(mx.nd.array(x2)), mx.nd.array(y2))
        loss.backward()
        trainer.step(200)
    for p in net.collect_params().values():
        n = old[p.name].shape[0]
        assert_same_bits(old[p.name], p.data()[:n], p.name)
    assert (head.bias.data()[3:].asnumpy() != 0).all()
    assert (net(X).asnumpy()[:, :3].view(np.uint32) == before.view(np.uint32)).all()


def test_grow_dense_bad_input_changes_nothing():
    with pytest.raises(TypeError, match='expected an nn.Dense layer.*grow_embedding'):
        grow_dense(mx.gluon.nn.Embedding(3, 2), 1)
    head = mx.gluon.nn.Dense(3, in_units=4)
    with pytest.raises(ValueError, match='not initialized'):
        grow_dense(head, 1)
    head.initialize()
    with pytest.raises(ValueError, match='positive integer number of rows'):
        grow_dense(head, 0)
    with pytest.raises(ValueError, match='does not contain'):
        grow_dense(head, 1, parent=mx.gluon.nn.Dense(2))
    with pytest.raises(ValueError, match="unknown init 'bogus'"):
        grow_dense(head, 1, bias_init='bogus')       # the weight is not grown either
    assert head.weight.shape == (3, 4) and head.bias.shape == (3,)
    with pytest.raises(TypeError, match='nn.Dense output layer use grow_dense'):
        mo.grow_embedding(head, 1)
