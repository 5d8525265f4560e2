"""SGD's stand-ins get a call of their own where no bit can change (``calls_apart``).

MXNet's multi-tensor SGD kernels visit every element index up to the largest weight of a call,
and at each index every weight of the call, so a one-row stand-in in a (100000, 8) table's
call made that table's update 1.4x as slow (contract C6: a stand-in costs one row). The
masked optimizer now calls SGD's stand-ins apart from their dense neighbours. Other
optimizers, calls with a row_sparse array, and a schedule with unequal update counts keep
MXNet's one call. The neighbours keep the wrapped optimizer's bits either way (C4).
"""
import os

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from exact import run_masked
from hypothesis import given, settings
from hypothesis import strategies as st

import masked_opt as mo

STEPS = 4


def _spy(opt):
    """Record the indices of every call the wrapped optimizer gets."""
    calls, base = [], opt.base
    for name in ('update', 'update_multi_precision'):
        real = getattr(base, name)

        def spy(index, *args, _real=real):
            calls.append(list(index) if isinstance(index, (list, tuple)) else [index])
            return _real(index, *args)
        setattr(base, name, spy)
    return calls


def _setting(dtype='float32', sparse_neighbour=False):
    rng = np.random.RandomState(0)
    shapes = [(100, 4), (50, 4), (30, 4)]
    w0 = [rng.uniform(-1, 1, s).astype(dtype) for s in shapes]
    # One array per parameter, (STEPS,) + shape, as exact.run_masked takes them ...
    grads = [mx.nd.array(rng.normal(size=(STEPS,) + s), dtype=dtype) for s in shapes]
    if sparse_neighbour:   # ... or a list of steps: b_weight's, row_sparse (SGD then runs
        grads[2] = [g.tostype('row_sparse') for g in grads[2]]   # its one-tensor kernels)
    names = {0: 'a_weight', 1: 'frozen_weight', 2: 'b_weight'}
    return w0, grads, names


@pytest.mark.parametrize('mask', [mo.freeze_rows(range(50)), mo.train_cols(range(1, 3))],
                         ids=['fully frozen', 'latent split in place'])
def test_sgd_stand_ins_are_called_apart_from_their_neighbours(mask, monkeypatch):
    monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', '4')
    w0, grads, names = _setting()
    opt = mo.Masked(base='sgd', momentum=0.9, learning_rate=0.1, param_idx2name=names,
                    masks={'frozen_weight': mask})
    calls = _spy(opt)
    run_masked(opt, [mx.nd.array(w) for w in w0], [g[:1] for g in grads], 'updater')
    assert calls == [[0, 2], [1]]


@pytest.mark.parametrize('case', ['lars', 'row_sparse neighbour', 'schedule, counts differ'])
def test_one_call_where_apart_could_change_bits(case, monkeypatch):
    monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', '4')
    w0, grads, names = _setting(sparse_neighbour=case == 'row_sparse neighbour')
    kwargs = dict(momentum=0.9, learning_rate=0.1, param_idx2name=names)
    if case == 'schedule, counts differ':
        kwargs['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=1, factor=0.5,
                                                                 base_lr=0.1)
    opt = mo.Masked(base='lars' if case == 'lars' else 'sgd',
                    masks={'frozen_weight': mo.freeze_rows(range(50))}, **kwargs)
    if case == 'schedule, counts differ':
        opt.base._index_update_count.update({0: 3, 1: 5, 2: 3})   # e.g. after a resume
    calls = _spy(opt)
    run_masked(opt, [mx.nd.array(w) for w in w0], [g[:1] for g in grads], 'updater')
    assert calls == [[0, 1, 2]]


@settings(max_examples=25, deadline=None)
@given(momentum=st.sampled_from([0.0, 0.9]), dtype=st.sampled_from(['float32', 'float16']),
       schedule=st.booleans(), skew=st.booleans(), group=st.integers(1, 4),
       mask=st.sampled_from(['frozen', 'cols']))
def test_neighbours_keep_the_wrapped_sgds_bits(momentum, dtype, schedule, skew, group, mask):
    """SGD alone against masked SGD, whichever calls the stand-ins got: the neighbours'
    weights and states on the bits (float16 with a float32 master copy included)."""
    saved = os.environ.get('MXNET_OPTIMIZER_AGGREGATION_SIZE')
    os.environ['MXNET_OPTIMIZER_AGGREGATION_SIZE'] = str(group)
    try:
        w0, grads, names = _setting(dtype)
        kwargs = dict(momentum=momentum, learning_rate=0.1, wd=1e-3, rescale_grad=0.5,
                      multi_precision=dtype == 'float16', param_idx2name=names)
        runs = []
        for masked in (True, False):
            if schedule:
                kwargs['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=2, factor=0.5,
                                                                         base_lr=0.1)
            if masked:
                opt = mo.Masked(base='sgd', masks={'frozen_weight': mo.freeze_rows(range(50))
                                                   if mask == 'frozen'
                                                   else mo.train_cols(range(1, 3))}, **kwargs)
                base = opt.base
            else:
                opt = base = mx.optimizer.create('sgd', **kwargs)
            if skew:   # counts that differ (a parameter added later, a resume)
                base._index_update_count.update({0: 2, 1: 4, 2: 2})
                base.num_update = 4
            weights = [mx.nd.array(w, dtype=dtype) for w in w0]
            runs.append((weights, run_masked(opt, weights, grads, 'updater'), base))
        (w_m, s_m, b_m), (w_a, s_a, b_a) = runs
        for i in (0, 2):
            assert_same_bits(w_m[i], w_a[i], 'neighbour %d' % i)
            for a, b in zip(state_arrays(s_m[i]), state_arrays(s_a[i]), strict=True):
                assert_same_bits(a, b, 'neighbour %d state' % i)
        assert b_m._index_update_count == b_a._index_update_count
        assert b_m.num_update == b_a.num_update
    finally:
        if saved is None:
            del os.environ['MXNET_OPTIMIZER_AGGREGATION_SIZE']
        else:
            os.environ['MXNET_OPTIMIZER_AGGREGATION_SIZE'] = saved
