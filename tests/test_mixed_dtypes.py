"""C4 on a model that mixes float16 and float32 parameters: the wrapped optimizer's own bits.

MXNet's ``Updater`` groups the parameters of one call by dtype when the optimizer aggregates
(``aggregate_num > 0``: SGD, LARS, LAMB) and calls it one parameter at a time, in index order,
otherwise (Adam, Nadam, SGLD, ...). The masked optimizer takes a whole step in one call (so it
checks every mask before writing anything), and must then make exactly the calls the wrapped
optimizer alone would get. Order matters to optimizers that keep something across parameters:
Nadam's momentum schedule moves at every call, SGLD draws its noise from one stream in call
order, LARS and LBSGD read the learning rate per call. Here float16 and float32 parameters
alternate, so a grouping by dtype in front of an optimizer that does not aggregate changes the
order (the regression: Nadam and SGLD gave other bits without any mask).

Every registered optimizer (the table in ``optim_db``) runs with no mask at
all, and with masks on some parameters (float16 and float32 ones) beside unmasked ones;
the unmasked parameters' weights and states must have the bits of the optimizer alone.
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from exact import params_for
from mxnet import gluon
from optim_db import CONFIGS, NO_FLOAT64, NO_WD

import masked_opt as mo

STEPS = 6

# (name, shape, mask or None, dtype): float16 and float32 alternate; masked ones of both.
PARAMS = (
    ('a_weight', (4, 3), None, 'float32'),
    ('b_weight', (6, 4), None, 'float16'),
    ('c_weight', (5, 3), mo.train_rows_from(2), 'float32'),
    ('d_weight', (3, 4, 2), None, 'float32'),
    ('e_bias', (4,), None, 'float16'),
    ('f_weight', (5, 6), mo.train_cols([2]), 'float16'),
    ('g_weight', (7, 2), None, 'float32'),
    ('h_weight', (7, 2), None, 'float16'),
)

# SGLD's noise comes from one stream: a masked parameter draws noise for its block only, so
# the next parameters get other noise (see test_unmasked.py). Without masks it must match.
RANDOM_STREAM = {'sgld'}


def _cases(with_masks):
    for name, configs in sorted(CONFIGS.items()):
        if with_masks and name in RANDOM_STREAM:
            continue
        for k, config in enumerate(configs):
            yield pytest.param(name, config, id='%s-%d' % (name, k))


def _inputs(params, seed=0):
    rng = np.random.RandomState(seed)
    w0 = [rng.uniform(-1, 1, p[1]).astype(p[3]) for p in params]
    grads = [[rng.normal(size=p[1]).astype(p[3]) for p in params] for _ in range(STEPS)]
    return w0, grads


def _nd(arrays):
    # Fresh arrays for each run: AdaDelta scales the gradient it is given in place.
    return [mx.nd.array(a, dtype=a.dtype) for a in arrays]


def _kwargs(name, config):
    kwargs = dict(config, learning_rate=0.05, rescale_grad=0.5, wd=1e-3, multi_precision=True,
                  lr_scheduler=mx.lr_scheduler.FactorScheduler(step=2, factor=0.5,
                                                                base_lr=0.05))
    if name in NO_WD:
        kwargs['wd'] = 0.0   # GroupAdaGrad asserts wd == 0 (see test_exact_all_optimizers)
    return kwargs


def _train(opt, params):
    """Through MXNet's Updater, one call per step with every parameter, as Trainer and Module
    (``update_on_kvstore=False``) make it. Same MXNet random state for every run (SGLD)."""
    w0, grads = _inputs(params)
    weights = _nd(w0)
    mx.nd.waitall()   # a previous run's pending noise must not draw from the new seed
    mx.random.seed(3)
    updater = mx.optimizer.get_updater(opt)
    for step in grads:
        updater(list(range(len(params))), _nd(step), weights)
    return w0, weights, updater.states


def _run_both(name, config, params):
    idx2name = {i: p[0] for i, p in enumerate(params)}
    masks = {p[0]: p[2] for p in params if p[2] is not None}
    masked = mo.Masked(base=name, masks=masks, param_idx2name=idx2name,
                       **_kwargs(name, config))
    alone = mx.optimizer.create(name, param_idx2name=idx2name, **_kwargs(name, config))
    return _train(masked, params), _train(alone, params)


def _check_unmasked(params, masked, alone):
    (w0, w_m, s_m), (_, w_a, s_a) = masked, alone
    for i, (pname, _, mask, dtype) in enumerate(params):
        if mask is not None:
            continue
        what = '%s (%s)' % (pname, dtype)
        assert_same_bits(w_m[i], w_a[i], what + ' weight vs the wrapped optimizer alone')
        assert (w_m[i].asnumpy() != w0[i]).any(), what + ' did not train'
        got, want = state_arrays(s_m[i]), state_arrays(s_a[i])
        assert len(got) == len(want)
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same_bits(a, b, '%s state[%d]' % (what, k))


@pytest.mark.parametrize('name, config', list(_cases(with_masks=False)))
def test_no_mask_at_all_mixed_dtypes_is_the_wrapped_optimizer(name, config):
    """No mask: every parameter, weight and state, has the bits of the optimizer alone."""
    warnings.simplefilter('ignore', UserWarning)
    params = tuple((n, s, None, d) for n, s, _, d in params_for(name, PARAMS))
    _check_unmasked(params, *_run_both(name, config, params))


@pytest.mark.parametrize('name, config', list(_cases(with_masks=False)))
def test_three_dtypes_no_mask_and_masked_neighbours(name, config):
    """float64 parameters among the float16 and float32 ones: three dtype groups in MXNet's
    Updater for an aggregating optimizer, one call order for any other."""
    warnings.simplefilter('ignore', UserWarning)
    if name in NO_FLOAT64:
        pytest.skip('%s cannot train float64 weights even without masked_opt '
                    '(test_exact_all_optimizers.test_float64_fails_without_masked_opt_too)' % name)
    params = params_for(name, tuple(
        (n, s, m, 'float64' if n[0] in 'dg' else d) for n, s, m, d in PARAMS))
    assert len({p[3] for p in params}) == 3
    if name not in RANDOM_STREAM:
        _check_unmasked(params, *_run_both(name, config, params))
    unmasked = tuple((n, s, None, d) for n, s, _, d in params)
    _check_unmasked(unmasked, *_run_both(name, config, unmasked))


@pytest.mark.parametrize('name, config', list(_cases(with_masks=True)))
def test_unmasked_neighbours_of_masked_params_mixed_dtypes(name, config):
    """Masks on a float32 and a float16 parameter: the unmasked ones are untouched (C4)."""
    warnings.simplefilter('ignore', UserWarning)
    params = params_for(name, PARAMS)
    assert any(p[2] is not None for p in params)
    _check_unmasked(params, *_run_both(name, config, params))


@pytest.mark.parametrize('base', ['nadam', 'sgld', 'sgd'])
def test_gluon_trainer_mixed_dtypes_no_mask(base):
    """End to end through gluon.Trainer: a float16 and a float32 layer, no mask at all."""
    warnings.simplefilter('ignore', UserWarning)

    def run(optimizer, extra):
        # Fixed names: the Trainer orders parameters by name, and 'dense10' < 'dense9'.
        net = gluon.nn.HybridSequential(prefix='net_')
        with net.name_scope():
            net.add(gluon.nn.Dense(3, in_units=4, prefix='a_'),
                    gluon.nn.Dense(2, in_units=3, prefix='b_'),
                    gluon.nn.Dense(2, in_units=2, prefix='c_'))
        net[1].cast('float16')
        net.initialize(mx.init.Constant(0.1))
        params = net.collect_params()
        trainer = gluon.Trainer(params, optimizer, dict(extra, learning_rate=0.1,
                                                        multi_precision=True), kvstore=None)
        mx.nd.waitall()   # a previous run's pending noise must not draw from the new seed
        mx.random.seed(5)
        rng = np.random.RandomState(1)
        for _ in range(4):
            for p in params.values():
                p.grad()[:] = rng.normal(size=p.shape)
                p.list_data()[0]._fresh_grad = True   # what backward() would set
            trainer.step(1)
        return [p.data() for p in params.values()]

    masked = run('masked', {'base': base})
    alone = run(base, {})
    assert sorted({str(w.dtype) for w in alone}) == ["<class 'numpy.float16'>",
                                                      "<class 'numpy.float32'>"]
    for k, (a, b) in enumerate(zip(masked, alone, strict=True)):
        assert_same_bits(a, b, 'parameter %d' % k)


def test_whole_step_is_checked_before_any_weight_of_any_dtype_is_written():
    """C8 across dtypes: a masked float16 parameter whose weight no longer fits its mask, after
    float32 ones in the same step, raises before the float32 weights are written."""
    opt = mo.Masked(base='sgd', learning_rate=0.1, masks={'h': mo.train_rows([0])},
                    param_idx2name={0: 'f', 1: 'h'})
    updater = mx.optimizer.get_updater(opt)
    f, h = mx.nd.ones((3, 2)), mx.nd.ones((3, 2), dtype='float16')
    updater([0, 1], [mx.nd.ones((3, 2)), mx.nd.ones((3, 2), dtype='float16')], [f, h])
    before = f.copy()
    grown = mx.nd.ones((5, 2), dtype='float16')   # another array, another shape: refused
    with pytest.raises(ValueError, match="'h'"):
        updater([0, 1], [mx.nd.ones((3, 2)), mx.nd.ones((5, 2), dtype='float16')], [f, grown])
    assert_same_bits(before, f, 'float32 weight of a refused step')
