"""masked_opt.kernel_calls says which kernel SGD/Adam ran on a dense parameter, with which
attributes: replaying that call through MXNet's operator on copies of the arrays gives the
optimizer's own bits, weights and every state array, over several steps (bias correction,
schedules), lr/wd multipliers, clipping (0 means off in the Python front end), multi-precision
and multi-tensor calls of mixed parameters."""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from hypothesis import given
from hypothesis import strategies as st

from masked_opt.kernel_calls import (
    dense_kernel_call,
    run_mxnet_kernel,
    served,
)
from masked_opt.kernel_calls import state_arrays as kernel_states

SCHEDULERS = {
    None: lambda: None,
    'factor': lambda: mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.3),
    'multifactor': lambda: mx.lr_scheduler.MultiFactorScheduler(step=[1, 3], factor=0.7,
                                                                base_lr=0.2),
    'poly': lambda: mx.lr_scheduler.PolyScheduler(max_update=6, base_lr=0.1, pwr=2,
                                                  warmup_steps=2),
    'cosine': lambda: mx.lr_scheduler.CosineScheduler(max_update=5, base_lr=0.05),
}


@st.composite
def optimizer_case(draw):
    kind = draw(st.sampled_from(['sgd', 'adam']))
    kw = dict(learning_rate=draw(st.floats(1e-4, 1.0)),
              wd=draw(st.sampled_from([0.0, 1e-4, 0.03])),
              rescale_grad=draw(st.sampled_from([1.0, 1 / 64, 0.3])),
              clip_gradient=draw(st.sampled_from([None, 0.0, 0.5, -1.0])),
              multi_precision=draw(st.booleans()),
              lr_scheduler=SCHEDULERS[draw(st.sampled_from(sorted(SCHEDULERS, key=str)))]())
    if kind == 'sgd':
        kw['momentum'] = draw(st.sampled_from([0.0, 0.9]))
    else:
        kw.update(beta1=draw(st.floats(0.5, 0.99)), beta2=draw(st.floats(0.9, 0.9999)),
                  epsilon=draw(st.sampled_from([1e-8, 1e-3])))
    dtypes = draw(st.lists(st.sampled_from(['float16', 'float32', 'float64']), min_size=1,
                           max_size=3))
    sparse = kind == 'sgd' and draw(st.booleans())   # a row_sparse neighbour: no multi_*
    if kind == 'sgd':
        # One dtype per SGD call, as MXNet's Updater makes them (multi_sgd_update refuses
        # mixed dtypes, and SGD decides multi-precision once per call on its first weight)
        dtypes = [dtypes[0]] * len(dtypes)
    return kind, kw, dtypes, sparse, draw(st.integers(0, 2 ** 31))


@given(optimizer_case())
def test_replayed_kernel_call_gives_the_optimizers_bits(case):
    kind, kw, dtypes, sparse, seed = case
    rng = np.random.default_rng(seed)
    opt = mx.optimizer.create(kind, **kw)
    opt.set_lr_mult({1: 0.5})
    opt.set_wd_mult({0: 2.0})
    n = len(dtypes)
    weights = [mx.nd.array(rng.standard_normal((4, 3)), dtype=t) for t in dtypes]
    states = [opt.create_state_multi_precision(i, w) for i, w in enumerate(weights)]
    for step in range(3):
        grads = [mx.nd.array(rng.standard_normal((4, 3)) * 3, dtype=t) for t in dtypes]
        if sparse:
            grads[-1] = grads[-1].tostype('row_sparse')
        assert all(served(opt, s, t, True) is None for s, t in zip(states, dtypes, strict=True))
        copies = [w.copy() for w in weights]
        state_copies = [_copy(s) for s in states]
        if kind == 'sgd':
            opt.update_multi_precision(list(range(n)), weights, grads, states)
        else:
            for i in range(n):
                opt.update_multi_precision(i, weights[i], grads[i], states[i])
        aggregate = all(w.stype == 'default' and g.stype == 'default'
                        for w, g in zip(weights, grads, strict=True))
        for i in range(n):
            if grads[i].stype != 'default':
                continue
            call = dense_kernel_call(opt, i, dtypes[i], multi_precision=True,
                                     aggregate=aggregate)
            run_mxnet_kernel(call.kernel, call.attrs, copies[i], grads[i],
                             kernel_states(call.kernel, state_copies[i]))
            where = 'step %d, parameter %d (%s, %s)' % (step, i, call.kernel, dtypes[i])
            assert_same_bits(weights[i], copies[i], 'weight, ' + where)
            for a, b in zip(state_arrays(states[i]), state_arrays(state_copies[i]),
                            strict=True):
                assert_same_bits(a, b, 'state, ' + where)


def _copy(state):
    if state is None:
        return None
    if isinstance(state, (list, tuple)):
        return type(state)(_copy(s) for s in state)
    return state.copy()


@pytest.mark.parametrize('make, why', [
    (lambda: mx.optimizer.RMSProp(), 'not SGD or Adam'),
    (lambda: type('MySGD', (mx.optimizer.SGD,), {})(), 'not SGD or Adam'),
    (lambda: mx.optimizer.SGD(lr_scheduler=type('S', (mx.lr_scheduler.LRScheduler,), {
        '__call__': lambda self, n: 0.1})()), 'lr_scheduler'),
    (lambda: mx.optimizer.SGD(momentum=-0.5), 'negative'),
])
def test_served_says_why_not(make, why):
    opt = make()
    w = mx.nd.ones((2, 2))
    assert why in served(opt, opt.create_state(0, w), np.float32, False)


def test_served_sees_a_momentum_changed_after_the_state_was_made():
    opt = mx.optimizer.SGD(momentum=0.0)
    state = opt.create_state(0, mx.nd.ones((2, 2)))
    opt.momentum = 0.9
    assert 'momentum state' in served(opt, state, np.float32, False)
