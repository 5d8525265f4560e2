"""Row_sparse gradients whose row ids are unsorted, repeated or out of range, on both paths.

MXNet's row_sparse format keeps each row id once, sorted, in ``[0, V)``;
``mx.nd.sparse.row_sparse_array`` does not check and MXNet's optimizers accept what it builds.
A masked parameter refuses such a gradient on both row_sparse paths and writes nothing
(``masked_opt/row_ids.py``): the pure path raises ``ValueError`` at the update call, the native
path (which never reads the ids on the host) fails on MXNet's engine and MXNet raises the
operator's message at the next read. Before the fix the native operators binary-searched the
ids as if sorted: ``[6, 3, 5]`` with rows 4.. trainable skipped row 6, ``[3, 7, 5]`` gave other
bits than the pure path, a column mask wrote before its scratch buffer (heap corruption).
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from hypothesis import given
from hypothesis import strategies as st

import masked_opt as mo
from masked_opt import native
from masked_opt.row_ids import check_row_ids

NAME = 'table_weight'
V, D = 10, 4
NATIVE = native.available()
needs_native = pytest.mark.skipif(not NATIVE, reason='native library not available')

MASKS = {
    'rows': (lambda: mo.train_rows_from(4), (4, V, 0, D)),
    'cols': (lambda: mo.train_cols(range(1, 3)), (0, V, 1, 3)),
    'both': (lambda: mo.train_rows(range(2, 8)) & mo.train_cols(range(1, 3)), (2, 8, 1, 3)),
}
BASES = {'adam': {}, 'sgd-mom': {'momentum': 0.9}}


def _rsp(ids, values, dtype='float32', shape=(V, D)):
    return mx.nd.sparse.row_sparse_array((np.asarray(values, dtype), np.asarray(ids, np.int64)),
                                         shape=shape, dtype=dtype)


def _updater(base, mask, native_on):
    """An Updater for a masked optimizer forced onto one path (``step_path``): ``'native'``
    raises where the native strategy does not apply, so no case silently runs the pure one."""
    opt = mo.Masked(base=base.split('-')[0], masks={NAME: mask}, param_idx2name={0: NAME},
                    learning_rate=0.1, **BASES[base])
    opt.step_path = 'native' if native_on else 'pure'
    return opt, mx.optimizer.get_updater(opt)


def _snapshot(weight, state):
    return weight.asnumpy().copy(), [s.asnumpy().copy() for s in state_arrays(state)]


def _bad_step(updater, weight, grad):
    """Run one update with ``grad`` and read everything back: where did it refuse, and why?

    Returns ``(where, message)``: ``'call'`` when the update call raised, ``'read'`` when the
    first read of the weight afterwards raised, None when nothing refused.
    """
    try:
        updater(0, grad, weight)
    except ValueError as err:
        return 'call', str(err)
    try:
        weight.asnumpy()
        for s in state_arrays(updater.states.get(0)):
            s.asnumpy()
    except mx.MXNetError as err:
        mx.nd.waitall()   # the error was raised once and cleared: nothing pending
        return 'read', str(err)
    return None, None


def _well_formed(ids, n_rows):
    ids = np.asarray(ids)
    return bool(np.all((ids >= 0) & (ids < n_rows)) and np.all(np.diff(ids) > 0))


@pytest.mark.parametrize('ids', [[6, 3, 5], [3, 7, 5], [5, 5, 6], [-1, 5], [5, 10], [9, 4]])
@pytest.mark.parametrize('kind', sorted(MASKS))
@pytest.mark.parametrize('native_on', [False, pytest.param(True, marks=needs_native)])
def test_malformed_ids_are_refused_and_nothing_is_written(ids, kind, native_on):
    """Both paths refuse, name the parameter, say what was expected and received, and leave
    the weight and the state with the bits they had (the issue's examples, every mask kind)."""
    mask, _ = MASKS[kind]
    _, updater = _updater('adam', mask(), native_on)
    weight = mx.nd.array(np.random.RandomState(0).normal(size=(V, D)))
    updater(0, _rsp([4, 5, 6], np.ones((3, D))), weight)   # a good step first: a state exists
    before = _snapshot(weight, updater.states[0])
    where, message = _bad_step(updater, weight, _rsp(ids, np.ones((len(ids), D))))
    assert where == ('read' if native_on else 'call'), 'not refused: %s' % (where,)
    assert "parameter %r" % NAME in message and 'sorted, unique and in [0, 10)' in message
    assert 'received id' in message and 'Nothing was written' in message
    after = _snapshot(weight, updater.states[0])
    assert_same_bits(before[0], after[0], 'weight')
    for a, b in zip(before[1], after[1], strict=True):
        assert_same_bits(a, b, 'state')
    # The error was raised once; the next well-formed gradient trains as usual.
    updater(0, _rsp([5], np.ones((1, D))), weight)
    assert (weight.asnumpy()[5, MASKS[kind][1][2]] != after[0][5, MASKS[kind][1][2]])


@pytest.mark.parametrize('ids', [[6, 3, 5], [5, 5, 6], [5, 12]])
def test_standard_update_refuses_malformed_ids_too(ids):
    """lazy_update=False (pure path only): MXNet's sparse.retain, which it reads the gradient
    through, binary-searches the ids as if sorted, so [6, 3, 5] lost row 6's gradient."""
    opt = mo.Masked(base='adam', lazy_update=False, masks={NAME: mo.train_rows_from(4)},
                    param_idx2name={0: NAME}, learning_rate=0.1)
    updater = mx.optimizer.get_updater(opt)
    weight = mx.nd.array(np.random.RandomState(0).normal(size=(V, D)))
    updater(0, _rsp([4, 5, 6], np.ones((3, D))), weight)
    before = _snapshot(weight, updater.states[0])
    with pytest.raises(ValueError, match="parameter 'table_weight'.*sorted, unique"):
        updater(0, _rsp(ids, np.ones((len(ids), D))), weight)
    after = _snapshot(weight, updater.states[0])
    assert_same_bits(before[0], after[0], 'weight')
    for a, b in zip(before[1], after[1], strict=True):
        assert_same_bits(a, b, 'state')


def test_check_row_ids_names_the_first_bad_position():
    for ids, expect in [([6, 3, 5], 'received id 3 at position 1 after id 6'),
                        ([5, 5, 6], 'received id 5 at position 1 after id 5'),
                        ([1, 12], 'received id 12 at position 1.'),
                        ([-3], 'received id -3 at position 0.')]:
        with pytest.raises(ValueError, match=expect.replace('.', r'\.')):
            check_row_ids(np.array(ids), 10, 'w')
    check_row_ids(np.array([], np.int64), 10, 'w')
    check_row_ids(np.array([0, 9]), 10, 'w')


@st.composite
def malformed_cases(draw):
    kind = draw(st.sampled_from(sorted(MASKS)))
    base = draw(st.sampled_from(sorted(BASES)))
    dtype = draw(st.sampled_from(['float32', 'float64', 'float16']))
    if draw(st.integers(0, 3)) == 0:   # a well-formed one now and then: both must train it
        ids = sorted(draw(st.sets(st.integers(0, V - 1), max_size=V)))
    else:
        ids = draw(st.lists(st.integers(-3, V + 2), min_size=1, max_size=8))
    seed = draw(st.integers(0, 2 ** 16))
    return dict(kind=kind, base=base, dtype=dtype, ids=ids, seed=seed)


def _fuzz_run(case, native_on):
    mask, _ = MASKS[case['kind']]
    _, updater = _updater(case['base'], mask(), native_on)
    rng = np.random.RandomState(case['seed'])
    w0 = rng.normal(size=(V, D)).astype(case['dtype'])
    weight = mx.nd.array(w0, dtype=case['dtype'])
    updater(0, _rsp([2, 5, 8], rng.normal(size=(3, D)), case['dtype']), weight)
    before = _snapshot(weight, updater.states[0])
    ids = case['ids']
    where, message = _bad_step(updater, weight,
                               _rsp(ids, rng.normal(size=(len(ids), D)), case['dtype']))
    return where, message, before, _snapshot(weight, updater.states[0]), w0


@given(case=malformed_cases())
def test_fuzz_malformed_gradients_same_outcome_on_both_paths(case):
    """Hypothesis over row ids in any order, repeated, negative or past the end, every mask
    kind, optimizer and dtype: both paths refuse exactly the malformed ones, write nothing of
    the weight or state when they refuse, keep every frozen entry's bits, and give the same
    bits when the gradient is well-formed."""
    lo, hi, c0, c1 = MASKS[case['kind']][1]
    frozen = np.ones((V, D), bool)
    frozen[lo:hi, c0:c1] = False
    ok = _well_formed(case['ids'], V)
    runs = {native_on: _fuzz_run(case, native_on)
            for native_on in ([False, True] if NATIVE else [False])}
    for native_on, (where, message, before, after, w0) in runs.items():
        assert_same_bits(w0[frozen], after[0][frozen], 'frozen entries')
        if ok:
            assert where is None, message
            continue
        assert where == ('read' if native_on else 'call')
        assert "parameter %r" % NAME in message and 'sorted, unique' in message
        assert_same_bits(before[0], after[0], 'weight')
        for a, b in zip(before[1], after[1], strict=True):
            assert_same_bits(a, b, 'state')
    if NATIVE and ok:
        pure, fast = runs[False][3], runs[True][3]
        assert_same_bits(pure[0], fast[0], 'weight, native vs pure')
        for a, b in zip(pure[1], fast[1], strict=True):
            assert_same_bits(a, b, 'state, native vs pure')


@pytest.mark.parametrize('native_on', [False, pytest.param(True, marks=needs_native)])
def test_whole_step_with_one_malformed_gradient(native_on):
    """A whole step (every parameter in one Updater call, as Trainer and Module hand it over):
    the pure path chooses every parameter's strategy, and so reads and checks every gradient's
    ids, before it writes anything, so a well-formed neighbour is not updated either; the native
    path queues the neighbour's update, which runs, and refuses the malformed one on the engine."""
    opt = mo.Masked(base='adam', masks={'*_weight': mo.train_rows_from(4)}, learning_rate=0.1,
                    param_idx2name={0: 'a_weight', 1: 'b_weight'})
    opt.step_path = 'native' if native_on else 'pure'
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.RandomState(5)
    weights = [mx.nd.array(rng.normal(size=(V, D))) for _ in range(2)]
    updater([0, 1], [_rsp([4, 5], np.ones((2, D)))] * 2, weights)   # states exist
    before = [w.asnumpy().copy() for w in weights]
    grads = [_rsp([5, 6], np.ones((2, D))), _rsp([6, 3, 5], np.ones((3, D)))]
    if native_on:
        updater([0, 1], grads, weights)
        with pytest.raises(mx.MXNetError, match="parameter 'b_weight'.*sorted, unique"):
            weights[1].asnumpy()
        assert not np.array_equal(before[0], weights[0].asnumpy()), 'the neighbour trained'
    else:
        with pytest.raises(ValueError, match="parameter 'b_weight'.*sorted, unique"):
            updater([0, 1], grads, weights)
        assert_same_bits(before[0], weights[0], 'the well-formed neighbour')
    assert_same_bits(before[1], weights[1], 'the parameter with the malformed gradient')
