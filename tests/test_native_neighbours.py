"""Cases right next to the native path: each must give the bits of the pure path and of MXNet.

A native-eligible mask (one contiguous block, SGD with momentum or Adam, lazy updates) meets
something the native strategy does not serve, or serves with a cache: a full-size optimizer
state from a warm start, a float16 weight with ``multi_precision``, a second weight array
for the same parameter index. Each test runs the path the optimizer chooses itself
(``step_path='auto'``) and the pure one, compares them on the bits with each other and with
MXNet's own optimizer on the trainable rows, and checks that ``step_path='native'`` refuses
what the native strategy does not serve: a chooser that sends a case to the wrong strategy, or
a cache that outlives its array, fails here.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays

import masked_opt as mo
from masked_opt import native

NAME = 'table_weight'
V, D = 10, 4

if not native.available():   # CI sets MASKED_OPT_REQUIRE_NATIVE=1: conftest fails the run
    pytest.skip('native library not available: %s' % native.status().reason,
                allow_module_level=True)


def _rsp(ids, values, dtype='float32'):
    return mx.nd.sparse.row_sparse_array((np.asarray(values, dtype), np.asarray(ids, np.int64)),
                                         shape=(V, D), dtype=dtype)


def _grads(dtype='float32', steps=3):
    rng = np.random.RandomState(4)
    out = []
    for _ in range(steps):
        ids = np.unique(rng.randint(0, V, 5))
        out.append((ids, rng.normal(size=(ids.size, D))))
    return [_rsp(ids, g, dtype) for ids, g in out], out


def _copy_state(state):
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(s) for s in state)
    return None if state is None else state.copy()


@pytest.mark.parametrize('base,hyper', [('adam', {}), ('sgd', {'momentum': 0.9})])
def test_warm_started_full_size_state_with_lazy_rsp_gradient(base, hyper):
    """A state made for the whole weight (a run without the mask, resumed with one) on a
    native-eligible mask: the pure path gathers and scatters it; frozen state rows keep their
    bits and trainable rows get exactly MXNet's own lazy update with the frozen rows dropped."""
    rng = np.random.RandomState(0)
    w0 = rng.normal(size=(V, D)).astype('float32')
    plain = mx.optimizer.create(base, learning_rate=0.1, **hyper)
    warm = plain.create_state(0, mx.nd.array(w0))
    for s in state_arrays(warm):   # a trained state: non-zero everywhere
        s[:] = mx.nd.array(np.abs(rng.normal(size=s.shape)))
    grads, raw = _grads()
    results = {}
    for path in ('pure', 'auto', 'native'):
        opt = mo.Masked(base=base, masks={NAME: mo.train_rows_from(4)},
                        param_idx2name={0: NAME}, learning_rate=0.1, **hyper)
        opt.step_path = path
        updater = mx.optimizer.get_updater(opt)
        updater.states[0], updater.states_synced[0] = _copy_state(warm), True
        weight = mx.nd.array(w0)
        if path == 'native':   # not served: the native strategy updates a block-sized state
            with pytest.raises(ValueError, match='made for the whole weight'):
                updater(0, grads[0], weight)
            assert_same_bits(w0, weight, 'weight after the refusal')
            continue
        for g in grads:
            updater(0, g, weight)
        results[path] = weight.asnumpy(), [s.asnumpy() for s in state_arrays(updater.states[0])]
    # MXNet alone, on a gradient without the frozen rows.
    ref_updater = mx.optimizer.get_updater(mx.optimizer.create(base, learning_rate=0.1, **hyper))
    ref_updater.states[0], ref_updater.states_synced[0] = _copy_state(warm), True
    ref = mx.nd.array(w0)
    for ids, g in raw:
        keep = ids >= 4
        ref_updater(0, _rsp(ids[keep], g[keep]), ref)
    ref_states = [s.asnumpy() for s in state_arrays(ref_updater.states[0])]
    for path, (w, states) in results.items():
        assert_same_bits(ref.asnumpy(), w, 'weight (step_path=%s)' % path)
        assert_same_bits(w0[:4], w[:4], 'frozen rows')
        for a, b, s0 in zip(ref_states, states, state_arrays(warm), strict=True):
            assert_same_bits(a, b, 'state (step_path=%s)' % path)
            assert_same_bits(s0.asnumpy()[:4], b[:4], 'frozen state rows')


@pytest.mark.parametrize('base,hyper', [('adam', {}), ('sgd', {'momentum': 0.9})])
@pytest.mark.parametrize('mask', ['rows', 'cols'])
def test_float16_multi_precision_next_to_the_native_path(base, hyper, mask):
    """float16 weights with multi_precision (the float32 master copy lives in the state):
    both paths give the same bits, frozen entries keep theirs, and with Adam (whose
    multi_precision row_sparse update is lazy in MXNet) the trainable entries and the master
    copy get MXNet's own update of the block as a parameter of its own."""
    masks = {'rows': (mo.train_rows_from(4), (slice(4, V), slice(0, D))),
             'cols': (mo.train_cols(range(1, 3)), (slice(0, V), slice(1, 3)))}
    m, (rows, cols) = masks[mask]
    rng = np.random.RandomState(1)
    w0 = rng.normal(size=(V, D)).astype('float16')
    grads, raw = _grads('float16')
    results = {}
    for path in ('pure', 'auto', 'native'):
        opt = mo.Masked(base=base, masks={NAME: m}, param_idx2name={0: NAME},
                        learning_rate=0.1, multi_precision=True, **hyper)
        opt.step_path = path
        updater = mx.optimizer.get_updater(opt)
        weight = mx.nd.array(w0, dtype='float16')
        if path == 'native':   # not served: the lazy kernel and the float32 master copy
            with pytest.raises(ValueError, match='multi_precision'):
                updater(0, grads[0], weight)
            assert_same_bits(w0, weight, 'weight after the refusal')
            continue
        for g in grads:
            updater(0, g, weight)
        results[path] = weight.asnumpy(), [s.asnumpy() for s in state_arrays(updater.states[0])]
    (w_pure, s_pure), (w_fast, s_fast) = results['pure'], results['auto']
    assert_same_bits(w_pure, w_fast, 'weight, auto vs pure')
    for a, b in zip(s_pure, s_fast, strict=True):
        assert_same_bits(a, b, 'state, auto vs pure')
    frozen = np.ones((V, D), bool)
    frozen[rows, cols] = False
    assert_same_bits(w0[frozen], w_fast[frozen], 'frozen entries')
    if base != 'adam':   # mp_sgd_mom_update has no lazy row_sparse kernel (dense fallback)
        return
    # MXNet alone on the block as a parameter of its own: the trainable entries' bits.
    ref_opt = mx.optimizer.create(base, learning_rate=0.1, multi_precision=True, **hyper)
    ref_updater = mx.optimizer.get_updater(ref_opt)
    block = mx.nd.array(w0[rows, cols], dtype='float16')
    first = rows.start
    for ids, g in raw:
        keep = (ids >= first)
        sub = mx.nd.sparse.row_sparse_array(
            (g[keep][:, cols].astype('float16'), ids[keep] - first),
            shape=block.shape, dtype='float16')
        ref_updater(0, sub, block)
    assert_same_bits(block.asnumpy(), w_fast[rows, cols], 'trainable entries vs MXNet alone')
    master = [s for s in state_arrays(ref_updater.states[0]) if s.dtype == np.float32]
    assert master and any(np.array_equal(s.asnumpy(), a) for s in master for a in s_fast), \
        'the float32 master copy did not follow MXNet alone'


@pytest.mark.parametrize('mask', ['rows', 'cols'])
def test_one_index_updated_with_a_second_weight_array(mask):
    """The native path keeps a view of the weight it was given; an index later updated with
    another array (a copy, a reloaded parameter) must update that array, not the first."""
    m = mo.train_rows_from(4) if mask == 'rows' else mo.train_cols(range(1, 3))
    rng = np.random.RandomState(2)
    w0 = rng.normal(size=(V, D)).astype('float32')
    grads, _ = _grads(steps=4)
    results = {}
    for path in ('pure', 'native'):
        opt = mo.Masked(base='adam', masks={NAME: m}, param_idx2name={0: NAME},
                        learning_rate=0.1)
        opt.step_path = path
        updater = mx.optimizer.get_updater(opt)
        first = mx.nd.array(w0)
        for g in grads[:2]:
            updater(0, g, first)
        after_first = first.asnumpy()
        second = first.copy()
        for g in grads[2:]:
            updater(0, g, second)
        assert_same_bits(after_first, first, 'the first array after the switch')
        results[path] = second.asnumpy()
    assert_same_bits(results['pure'], results['native'], 'the second array, native vs pure')
    assert not np.array_equal(results['native'], after_first), 'the second array did not train'
