"""Edges of real workflows that once let frozen entries move or settings get lost silently.

- hyper-parameters written on the wrapper (``trainer.optimizer.momentum = 0.5``) reach the
  wrapped optimizer, for masked and unmasked parameters alike;
- a parameter resized under a live optimizer (a table grown in place) is refused with a
  ``ValueError`` that says to create the Trainer after growing, instead of training the old
  block only.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from mxnet import autograd, gluon

import masked_opt as mo


def _net(seed=0):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    with net.name_scope():
        net.add(gluon.nn.Embedding(10, 4), gluon.nn.Dense(3, in_units=4))
    net.initialize(mx.init.Uniform(0.5))
    return net


def _steps(net, trainer, n=3, change=None):
    rng = np.random.RandomState(0)
    for k in range(n):
        if k == 1 and change is not None:
            change(trainer)
        x = mx.nd.array(rng.randint(0, 10, 8))
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(8)
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize('base,params,attr,value', [
    ('sgd', {'momentum': 0.9}, 'momentum', 0.5),
    ('adam', {}, 'beta1', 0.5),
    ('adam', {}, 'epsilon', 1e-3),
    ('rmsprop', {'centered': True}, 'gamma1', 0.5),
])
def test_hyper_parameter_set_on_the_wrapper_reaches_the_wrapped_optimizer(base, params, attr,
                                                                           value):
    def run(change):
        net = _net()
        trainer = gluon.Trainer(net.collect_params(), 'masked', dict(
            params, base=base, learning_rate=0.01,
            masks={net[0].weight: mo.train_rows_from(5)}))
        return _steps(net, trainer, change=change)

    def on_wrapper(trainer):
        setattr(trainer._optimizer, attr, value)
        assert getattr(trainer._optimizer, attr) == value

    def on_wrapped(trainer):
        setattr(trainer._optimizer.base, attr, value)

    through_wrapper, direct, unchanged = run(on_wrapper), run(on_wrapped), run(None)
    # Masked (the Embedding) and unmasked (the Dense layer) parameters alike.
    for a, b in zip(through_wrapper, direct, strict=True):
        assert_same_bits(a, b, 'parameter')
    # Control: the change does change the results.
    assert all((a != b).any() for a, b in zip(unchanged, direct))


def test_wrapper_fields_stay_on_the_wrapper():
    opt = mo.Masked(base='sgd', momentum=0.9, masks={'w': mo.train_rows_from(1)})
    opt.lazy_update = False
    assert opt.base.lazy_update is False
    opt.some_new_setting = 3          # unknown to both: kept on the wrapper
    assert opt.some_new_setting == 3 and not hasattr(opt.base, 'some_new_setting')
    assert 'w' in opt.masks and not hasattr(opt.base, 'masks')


def test_table_grown_under_a_live_trainer_is_refused():
    net = gluon.nn.Embedding(10, 4)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 0.1, 'masks': {net.weight: mo.train_rows_from(8)}})

    def step():
        with autograd.record():
            loss = net(mx.nd.array([1, 9, 11 % net.weight.shape[0]])).sum()
        loss.backward()
        trainer.step(1)
    step()
    mo.grow_embedding(net, 4)   # in place: now 14 rows, under the same Trainer
    before = net.weight.data().asnumpy()
    with pytest.raises(ValueError, match=r'shape \(14, 4\).*\(10, 4\).*after growing'):
        step()
    assert_same_bits(before, net.weight.data(), 'weight after the refused step')
