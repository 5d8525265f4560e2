"""The in-place dense strategy (masked_opt.steps.dense_cols) against the pure dense block path,
on the bits, through the whole masked optimizer.

Hypothesis draws the wrapped optimizer (SGD with and without momentum, Adam), its
hyper-parameters (wd, rescale_grad, clip_gradient, a learning-rate schedule, lr/wd
multipliers, multi_precision), the dtype, the table's shape, the trainable rows and columns,
non-finite values in weights and gradients, neighbours in the same call (unmasked, row_sparse)
and several steps; every weight, every state array and the update counts must match, and the
in-place operator must really have run. Then the cases it hands back to MXNet's own kernel
(non-finite hyper-parameters), Module and Gluon end to end, and what it refuses.
"""
import math

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from hypothesis import assume, given
from hypothesis import strategies as st
from models import forum_mf, mf_iter, ratings

import masked_opt as mo
from masked_opt import inplace_check, native
from masked_opt.steps import dense_cols

pytestmark = pytest.mark.usefixtures('lib', 'checked')


@pytest.fixture(scope='module')
def checked():
    """The self-check has run (it calls the operator itself) and passed."""
    assert inplace_check.check(), inplace_check.status().reason

NAME = 'table_weight'

SCHEDULES = {
    'none': lambda: None,
    'factor': lambda: mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.05),
    'multifactor': lambda: mx.lr_scheduler.MultiFactorScheduler(step=[1, 2], factor=0.3,
                                                                base_lr=0.1),
    'poly': lambda: mx.lr_scheduler.PolyScheduler(max_update=5, base_lr=0.1, warmup_steps=1),
    'cosine': lambda: mx.lr_scheduler.CosineScheduler(max_update=4, base_lr=0.02),
}


@st.composite
def case(draw):
    opt = draw(st.sampled_from(['sgd', 'sgd_mom', 'adam']))
    dtype = draw(st.sampled_from(['float16', 'float32', 'float64']))
    hyper = dict(learning_rate=draw(st.floats(1e-3, 0.5)),
                 wd=draw(st.sampled_from([0.0, 1e-3, 0.1])),
                 rescale_grad=draw(st.sampled_from([1.0, 1 / 32, 3.0])),
                 clip_gradient=draw(st.sampled_from([None, 0.0, 0.3, -1.0])),
                 multi_precision=dtype == 'float16' and draw(st.booleans()))
    if opt == 'sgd_mom':
        hyper['momentum'] = draw(st.sampled_from([0.5, 0.9]))
    if opt == 'adam':
        hyper.update(beta1=draw(st.sampled_from([0.9, 0.5])),
                     beta2=draw(st.sampled_from([0.999, 0.9])))
    V, D = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    c0 = draw(st.integers(0, D - 1))
    c1 = draw(st.integers(c0 + 1, D))
    lo = draw(st.integers(0, V - 1))
    hi = draw(st.integers(lo + 1, V))
    assume((lo, hi, c0, c1) != (0, V, 0, D))   # a mask that trains everything is no mask
    mask = mo.train_rows(range(lo, hi)) & mo.train_cols(range(c0, c1))
    return dict(opt=opt, dtype=dtype, hyper=hyper, shape=(V, D), mask=mask,
                schedule=draw(st.sampled_from(sorted(SCHEDULES))),
                neighbour=draw(st.sampled_from(['none', 'dense', 'row_sparse'])),
                steps=draw(st.integers(1, 4)), seed=draw(st.integers(0, 2 ** 31)))


def _values(rng, shape, dtype, special):
    a = rng.standard_normal(shape).astype(dtype)
    if special and a.size:
        flat = a.reshape(-1)
        where = rng.choice(flat.size, size=min(3, flat.size), replace=False)
        flat[where] = np.array([np.nan, np.inf, -0.0], dtype)[:where.size]
    return a


def run(c, path):
    """Steps of the masked optimizer on path ``path``: weights, state arrays, update counts."""
    rng = np.random.default_rng(c['seed'])
    base = 'adam' if c['opt'] == 'adam' else 'sgd'
    names = {0: 'other_weight', 1: NAME}
    hyper = dict(c['hyper'])
    schedule = SCHEDULES[c['schedule']]()
    if schedule is not None:   # the schedule's base_lr is the learning rate
        hyper.pop('learning_rate', None)
    opt = mo.Masked(base=base, masks={NAME: c['mask']}, param_idx2name=names,
                    lr_scheduler=schedule, **hyper)
    opt.set_lr_mult({NAME: 0.5})
    opt.set_wd_mult({NAME: 2.0})
    opt.step_path = path
    updater = mx.optimizer.get_updater(opt)
    shape, dtype = c['shape'], c['dtype']
    weights = [mx.nd.array(_values(rng, (3, shape[1]), dtype, False), dtype=dtype),
               mx.nd.array(_values(rng, shape, dtype, True), dtype=dtype)]
    for _ in range(c['steps']):
        grads = [mx.nd.array(_values(rng, (3, shape[1]), dtype, True), dtype=dtype),
                 mx.nd.array(_values(rng, shape, dtype, True), dtype=dtype)]
        if c['neighbour'] == 'row_sparse':
            grads[0] = grads[0].tostype('row_sparse')
        if c['neighbour'] == 'none':
            updater(1, grads[1], weights[1])
        else:
            updater([0, 1], grads, weights)
    return ([w.asnumpy() for w in weights],
            [a.asnumpy() for i in sorted(updater.states) for a in state_arrays(
                updater.states[i])],
            dict(opt.base._index_update_count), opt.num_update)


@pytest.fixture
def count_inplace(monkeypatch):
    """How often the in-place operator ran (the strategy really was taken)."""
    calls = []
    real = native.dense_cols

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)
    monkeypatch.setattr(native, 'dense_cols', counting)
    return calls


@given(case())
def test_in_place_gives_the_pure_paths_bits(c):
    calls = []
    real = native.dense_cols
    native.dense_cols = lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1]
    try:
        got = run(c, 'auto')
    finally:
        native.dense_cols = real
    assert len(calls) == c['steps'], 'the in-place strategy did not run every step'
    want = run(c, 'pure')
    for k, (a, b) in enumerate(zip(want[0], got[0], strict=True)):
        assert_same_bits(a, b, 'weight %d (%s)' % (k, calls[0]))
    assert len(want[1]) == len(got[1])
    for k, (a, b) in enumerate(zip(want[1], got[1], strict=True)):
        assert_same_bits(a, b, 'state array %d (%s)' % (k, calls[0]))
    assert want[2:] == got[2:]


@pytest.mark.parametrize('opt', ['sgd', 'sgd_mom', 'adam'])
@pytest.mark.parametrize('bad', ['lr nan', 'lr inf', 'rescale inf', 'wd nan'])
def test_non_finite_hyper_parameters_run_mxnets_kernel_on_a_copy(opt, bad, count_inplace):
    """The self-check draws finite hyper-parameters only: other ones take MXNet's kernel on a
    gathered block (the bits of the pure path, or the error it raises)."""
    hyper = {'lr nan': dict(learning_rate=math.nan), 'lr inf': dict(learning_rate=math.inf),
             'rescale inf': dict(rescale_grad=math.inf), 'wd nan': dict(wd=math.nan)}[bad]
    if opt == 'sgd_mom':
        hyper['momentum'] = 0.9
    c = dict(opt=opt, dtype='float32', hyper=hyper, shape=(9, 8),
             mask=mo.train_cols(range(6, 8)), schedule='none', neighbour='dense', steps=2,
             seed=5)
    results = []
    for path in ('pure', 'auto'):
        try:
            results.append(run(c, path))
        except mx.MXNetError as e:
            results.append(type(e))
    assert count_inplace == []
    if not isinstance(results[0], tuple):
        assert results[1] is results[0]   # the same refusal, from the same kernel
        return
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1], strict=True):
        assert_same_bits(a, b, bad)


def test_module_latent_split_matches_the_pure_path(count_inplace):
    """The forum's model as Module trains it: the member table's last D/8 columns train."""
    member, book, label = ratings(200, 150, 192, seed=1)

    def train(path, opt, params):
        mx.random.seed(0)
        mod = mx.mod.Module(forum_mf(200, 150, 16), data_names=('member', 'book'),
                            label_names=('label',))
        data = mf_iter(member, book, label, 64)
        mod.bind(data.provide_data, data.provide_label)
        mod.init_params(mx.init.Uniform(0.1))
        mod.init_optimizer(kvstore='local', optimizer='masked', optimizer_params=dict(
            params, base=opt, masks={'member_embedding_weight': mo.train_cols(range(14, 16))}))
        mod._optimizer.step_path = path
        for batch in data:
            mod.forward_backward(batch)
            mod.update()
        args, _ = mod.get_params()
        return args, [a for i in sorted(mod._updater.states)
                      for a in state_arrays(mod._updater.states[i])]

    for opt, params in (('adam', {'learning_rate': 1e-2, 'wd': 1e-3}),
                        ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-4})):
        want, got = train('pure', opt, params), train('auto', opt, params)
        for name in want[0]:
            assert_same_bits(want[0][name], got[0][name], '%s %s' % (opt, name))
        for a, b in zip(want[1], got[1], strict=True):
            assert_same_bits(a, b, '%s state' % opt)
    assert len(count_inplace) == 6, 'the in-place strategy did not run every step'


def test_gluon_trainer_latent_split_matches_the_pure_path(count_inplace):
    def train(path):
        mx.random.seed(2)
        net = mx.gluon.nn.Embedding(50, 8)
        net.initialize(mx.init.Uniform(0.2))
        trainer = mx.gluon.Trainer(net.collect_params(), 'masked', {
            'base': 'adam', 'learning_rate': 0.05,
            'masks': {net.weight: mo.train_cols(range(5, 8))}})
        trainer._optimizer.step_path = path
        for k in range(3):
            with mx.autograd.record():
                loss = (net(mx.nd.array([1, 7, 7, 30 + k])) ** 2).sum()
            loss.backward()
            trainer.step(4)
        return net.weight.data(), state_arrays(trainer._updaters[0].states[0])

    want, got = train('pure'), train('auto')
    assert_same_bits(want[0], got[0], 'weight')
    for a, b in zip(want[1], got[1], strict=True):
        assert_same_bits(a, b, 'state')
    assert len(count_inplace) == 3


@pytest.mark.parametrize('make, why', [
    (lambda: mx.optimizer.RMSProp(), 'not SGD or Adam'),
    (lambda: mx.optimizer.Adam(lr_scheduler=type('Mine', (mx.lr_scheduler.LRScheduler,), {
        '__call__': lambda self, n: 0.1})()), "one of MXNet's own"),
])
def test_what_it_does_not_serve_takes_the_pure_path_and_native_says_why(make, why):
    w = mx.nd.zeros((6, 4))
    assert why in dense_cols.inplace_reason(((0, 6), (1, 3)), w, w, make(), None,
                                            multi_precision=False)
    opt = mo.Masked(base=make(), masks={NAME: mo.train_cols(range(1, 3))},
                    param_idx2name={0: NAME})
    opt.step_path = 'native'
    with pytest.raises(ValueError, match="path='native' cannot update parameter 0"):
        mx.optimizer.get_updater(opt)(0, mx.nd.ones((6, 4)), w)
    assert (w.asnumpy() == 0).all()
