"""C1 for every optimizer MXNet registers: frozen entries keep their bits, weight and state.

Each run trains four parameters together for 50 steps, as MXNet's ``Updater`` drives an
optimizer (or by direct calls): a row mask, a column mask, both on a 3-D parameter, and a 1-D
parameter. The gradient at frozen entries holds NaN, +Inf and -Inf. (Parameters without a
mask, next to masked ones, are test_unmasked.py's subject.)
After the run:

- every frozen weight entry has the bits it started with;
- the trainable block of each masked parameter equals, bit for bit, the wrapped optimizer run
  on that block as a parameter of its own (an oracle in the style of MXNet's
  ``test_utils.compare_optimizer``) with the clean gradient, and so do the optimizer states —
  so the poison reached nothing, and the block really trained (it is also checked to move);
- with a state warmed up by unmasked steps (full size, then handed to the masked optimizer),
  the state entries of frozen weight entries keep their bits too.

The optimizer list is discovered from ``mx.optimizer.Optimizer.opt_registry``; a registered
optimizer this file does not know fails :func:`test_every_registered_optimizer_is_covered`.
"""
import copy

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from exact import (
    HYPERS,
    PARAMS,
    PER_ROW_STATE,
    STEPS,
    Layout,
    block_inputs,
    cases,
    check_against_reference,
    make_grads,
    optimizer_kwargs,
    params_for,
    quiet,
    run_masked,
    run_reference,
    to_nd,
)
from optim_db import CONFIGS, NO_FLOAT64, NO_WD, NOT_WRAPPED

import masked_opt as mo


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------
def test_every_registered_optimizer_is_covered():
    registered = set(mx.optimizer.Optimizer.opt_registry)
    unknown = registered - set(CONFIGS) - set(NOT_WRAPPED)
    assert not unknown, ('optimizers registered in mxnet.optimizer but not covered by the C1 '
                         'tests: %s. Add them to CONFIGS (or to NOT_WRAPPED with a reason).'
                         % sorted(unknown))
    assert set(CONFIGS) <= registered, sorted(set(CONFIGS) - registered)


@pytest.mark.parametrize('name, config', list(cases()))
@pytest.mark.parametrize('dtype, hyper, driver', [
    ('float32', 'plain', 'direct'),
    ('float32', 'wd_clip_schedule', 'updater'),
    ('float16', 'wd_clip_schedule', 'updater'),   # multi_precision=True
    ('float64', 'wd_clip_schedule', 'updater'),
])
def test_frozen_bits_and_block_is_its_own_parameter(name, config, dtype, hyper, driver):
    """C1 and, at the optimizer level, C2: 50 steps, poisoned frozen gradients."""
    quiet()
    if dtype == 'float64' and name in NO_FLOAT64:
        pytest.skip('%s cannot train float64 weights even without masked_opt (float32 state); '
                    'see test_float64_fails_without_masked_opt_too' % name)
    hyper = dict(HYPERS[hyper])
    if name in NO_WD:
        hyper['wd'] = 0.0  # GroupAdaGrad asserts wd == 0 (limit of the optimizer itself)
    params = params_for(name)
    layouts = [Layout(*p) for p in params]
    idx2name = {i: p[0] for i, p in enumerate(params)}
    rng = np.random.RandomState(7)
    w_start = [rng.uniform(-1, 1, lay.shape).astype(dtype) for lay in layouts]
    clean, poisoned = make_grads(layouts, STEPS, dtype, seed=11)

    opt = mo.Masked(base=name, param_idx2name=idx2name,
                    masks={p[0]: p[2] for p in params if p[2] is not None},
                    **optimizer_kwargs(config, hyper, dtype))
    weights = [mx.nd.array(w, dtype=dtype) for w in w_start]
    mx.random.seed(3)  # SGLD draws noise: both runs draw the same sequence
    states = run_masked(opt, weights, to_nd(poisoned), driver)

    ref = mx.optimizer.create(name, param_idx2name=idx2name,
                              **optimizer_kwargs(config, hyper, dtype))
    w_ref = [mx.nd.array(w, dtype=dtype) for w in block_inputs(layouts, w_start)]
    mx.random.seed(3)
    s_ref = run_reference(ref, w_ref, to_nd(block_inputs(layouts, clean, steps=True)),
                          driver=driver)

    check_against_reference(layouts, w_start, weights, states,
                            [w.asnumpy() for w in w_ref], s_ref, full_state=False)


@pytest.mark.parametrize('name, config', list(cases()))
@pytest.mark.parametrize('dtype, driver', [('float32', 'direct'), ('float16', 'updater')])
def test_warm_full_size_state_keeps_frozen_state_entries(name, config, dtype, driver):
    """A state warmed up by unmasked steps, handed to the masked optimizer: C1 on the state."""
    quiet()
    hyper = dict(HYPERS['wd_clip_schedule'])
    if name in NO_WD:
        hyper['wd'] = 0.0
    params = params_for(name)
    layouts = [Layout(*p) for p in params]
    idx2name = {i: p[0] for i, p in enumerate(params)}
    rng = np.random.RandomState(5)
    weights = [mx.nd.array(rng.uniform(-1, 1, lay.shape), dtype=dtype) for lay in layouts]
    # Warm-up: the unwrapped optimizer, full-size states, an even number of steps (LBSGD
    # with batch_scale=2 keeps a half-accumulated gradient inside the optimizer otherwise).
    base = mx.optimizer.create(name, param_idx2name=idx2name,
                               **optimizer_kwargs(config, hyper, dtype))
    warm, _ = make_grads(layouts, 4, dtype, seed=13)
    mx.random.seed(2)
    states = run_reference(base, weights, to_nd(warm))

    w_start = [w.asnumpy() for w in weights]
    s_start = {i: [a.asnumpy() for a in state_arrays(s)] for i, s in states.items()}
    ref = copy.deepcopy(base)   # continues exactly where the warm-up stopped
    w_ref = [mx.nd.array(w, dtype=dtype) for w in block_inputs(layouts, w_start)]
    s_ref = {}
    for i, lay in enumerate(layouts):
        blocks = iter(mx.nd.array(lay.block(a) if lay.masked else a, dtype=a.dtype)
                      for a in s_start[i])
        s_ref[i] = _rebuild(states[i], blocks)

    clean, poisoned = make_grads(layouts, STEPS, dtype, seed=17)
    opt = mo.Masked(base=base, param_idx2name=idx2name,
                    masks={p[0]: p[2] for p in params if p[2] is not None})
    mx.random.seed(3)
    if name in PER_ROW_STATE and dtype == 'float16':
        before = [w.asnumpy() for w in weights]
        with pytest.raises(TypeError, match='column mask cannot split'):
            run_masked(opt, weights, to_nd(poisoned), driver, states=states)
        for b, w in zip(before, weights, strict=True):
            assert_same_bits(b, w, 'weights after the refused step')
        return
    states = run_masked(opt, weights, to_nd(poisoned), driver, states=states)
    mx.random.seed(3)
    run_reference(ref, w_ref, to_nd(block_inputs(layouts, clean, steps=True)), states=s_ref,
                  driver=driver)

    check_against_reference(layouts, w_start, weights, states,
                            [w.asnumpy() for w in w_ref], s_ref, full_state=True,
                            s_start=s_start)
    for i, lay in enumerate(layouts):
        if lay.masked:
            moved = [changed_bits(lay.block(a.asnumpy()), lay.block(b))
                     for a, b in zip(state_arrays(states[i]), s_start[i], strict=True)]
            assert not moved or any(moved), '%s: no state entry moved' % lay.name


def _rebuild(template, blocks):
    """A state shaped like ``template`` whose arrays come from the iterator ``blocks``."""
    if isinstance(template, mx.nd.NDArray):
        return next(blocks)
    if isinstance(template, (list, tuple)):
        return type(template)(_rebuild(t, blocks) for t in template)
    return template


@pytest.mark.parametrize('name', sorted(NO_FLOAT64))
def test_float64_fails_without_masked_opt_too(name):
    """Why NO_FLOAT64 skips: the unwrapped optimizer itself cannot do a float64 step."""
    weight = mx.nd.ones((4, 3), dtype='float64')
    opt = mx.optimizer.create(name)
    state = opt.create_state_multi_precision(0, weight)
    with pytest.raises(mx.base.MXNetError):
        opt.update_multi_precision(0, weight, mx.nd.ones((4, 3), dtype='float64'), state)
        weight.wait_to_read()


def test_dcasgd_momentum_is_broken_in_mxnet_and_masked_says_the_same():
    """DCASGD(momentum > 0) evaluates ``if mom:`` on an NDArray in MXNet 1.9.1, which raises
    for any weight with more than one entry — with or without masked_opt. So its momentum
    variant cannot be covered; the masked wrapper must neither hide nor change the error."""
    weight = mx.nd.ones((4, 3))
    plain = mx.optimizer.create('dcasgd', momentum=0.9)
    with pytest.raises(ValueError, match='truth value'):
        plain.update(0, weight, mx.nd.ones((4, 3)), plain.create_state(0, weight))
    masked = mo.Masked(base='dcasgd', momentum=0.9, param_idx2name={0: 'w'},
                       masks={'w': mo.train_rows([1, 2])})
    before = weight.asnumpy()
    with pytest.raises(ValueError, match='truth value'):
        masked.update(0, weight, mx.nd.ones((4, 3)), masked.create_state(0, weight))
    assert_same_bits(weight, before, 'weight after a failed DCASGD step')


def test_lamb_multi_precision_block_keeps_training():
    """MXNet 1.9.1's single-tensor LAMB multi_precision path never writes its float32 master
    copy back, so a parameter updated through it makes the same first step forever; MXNet's
    Updater always takes the list path, which does. The masked block must take it too."""
    opt = mo.Masked(base='lamb', learning_rate=0.1, multi_precision=True,
                    param_idx2name={0: 'w_weight'}, masks={'w_weight': mo.train_rows([1, 2])})
    w = mx.nd.array(np.full((3, 2), 0.5), dtype='float16')
    state = opt.create_state_multi_precision(0, w)
    seen = []
    for _ in range(3):
        opt.update_multi_precision(0, w, mx.nd.ones((3, 2), dtype='float16'), state)
        seen.append(w.asnumpy()[1:])
    assert (seen[0] != seen[1]).all() and (seen[1] != seen[2]).all(), seen
    assert (w.asnumpy()[0] == 0.5).all()


@pytest.mark.parametrize('name', sorted(NO_WD))
def test_groupadagrad_rejects_wd_without_masked_opt_too(name):
    """Why NO_WD runs GroupAdaGrad with wd = 0 only."""
    opt = mx.optimizer.create(name, wd=1e-3)
    weight = mx.nd.ones((4, 3))
    with pytest.raises(AssertionError, match='Weight decay'):
        opt.update(0, weight, mx.nd.ones((4, 3)), opt.create_state(0, weight))


@pytest.mark.parametrize('rows', [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1],    # contiguous: slice path
                                  [0, 1, 0, 1, 0, 0, 1, 0, 1, 1]],   # take / scatter path
                         ids=['from-6', 'scattered'])
def test_groupadagrad_warm_per_row_state_with_a_row_mask(rows):
    """GroupAdaGrad's (V, 1) accumulator warmed up unmasked, then a row mask: frozen rows of
    weight and accumulator keep their bits; the trainable rows equal GroupAdaGrad on those
    rows as a parameter of their own (bits). (A column mask cannot split it: see the xfail.)"""
    rng = np.random.RandomState(4)
    n, d = 10, 4
    trainable = np.flatnonzero(rows)

    def grad(ids):
        data = mx.nd.array(rng.normal(size=(ids.size, d)))
        return mx.nd.sparse.row_sparse_array((data, mx.nd.array(ids, dtype='int64')),
                                             shape=(n, d))
    base = mx.optimizer.create('groupadagrad', learning_rate=0.1)
    weight = mx.nd.array(rng.uniform(-1, 1, (n, d)))
    state = base.create_state(0, weight)
    for _ in range(3):
        base.update(0, weight, grad(np.arange(n)), state)
    w_start, s_start = weight.asnumpy(), state.asnumpy()
    ref = copy.deepcopy(base)
    ref_w = mx.nd.array(w_start[trainable])
    ref_s = mx.nd.array(s_start[trainable])

    opt = mo.Masked(base=base, masks={'w': mo.scale_rows(rows)}, param_idx2name={0: 'w'})
    for _ in range(5):
        g = grad(np.arange(n))
        opt.update(0, weight, g, state)
        block_g = mx.nd.sparse.row_sparse_array(
            (mx.nd.array(g.asnumpy()[trainable]), mx.nd.arange(trainable.size, dtype='int64')),
            shape=(trainable.size, d))
        ref.update(0, ref_w, block_g, ref_s)
    frozen = np.array(rows) == 0
    assert_same_bits(w_start[frozen], weight.asnumpy()[frozen], 'frozen weight rows')
    assert_same_bits(s_start[frozen], state.asnumpy()[frozen], 'frozen accumulator rows')
    assert_same_bits(ref_w, weight.asnumpy()[trainable], 'trainable rows vs GroupAdaGrad alone')
    assert_same_bits(ref_s, state.asnumpy()[trainable], 'trainable accumulator vs alone')
    assert changed_bits(w_start[trainable], weight.asnumpy()[trainable]) > 0


def test_a_noop_optimizer_would_fail_these_tests():
    """The oracle check is not vacuous: a mask that trains nothing fails 'block moved'."""
    lay = Layout('rows_weight', (7, 4), mo.train_rows_from(4))
    w = np.random.RandomState(0).uniform(-1, 1, (7, 4)).astype('float32')
    with pytest.raises(AssertionError, match='did not move'):
        check_against_reference([lay], [w], [mx.nd.array(w)], {0: None}, [lay.block(w)],
                                {0: None}, full_state=False)


def test_poison_covers_every_frozen_entry_with_nan_and_both_infinities():
    """The gradients really are poisoned where frozen, and only there."""
    lays = [Layout(*p) for p in PARAMS]
    clean, poisoned = make_grads(lays, 1, 'float32', seed=0)
    for lay, g, p in zip(lays, clean, poisoned, strict=True):
        g, p = g[0], p[0]
        assert np.isfinite(p[~lay.frozen]).all() and (p[~lay.frozen] == g[~lay.frozen]).all()
        if lay.frozen.sum() >= 3:
            vals = p[lay.frozen]
            assert np.isnan(vals).any() and (vals == np.inf).any() and (vals == -np.inf).any()
    assert sum(int(lay.frozen.sum()) for lay in lays) > 0

