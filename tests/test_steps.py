"""The one chooser of step strategies (masked_opt.steps.choose) and its ``path`` option.

Which strategy each path picks on the same case, that a forced path which cannot run raises
before anything is written, and (modelled on torch.optim's ``test_foreach_matches_forloop``)
that every path gives the same bits on the same case through the whole optimizer.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays

import masked_opt as mo
from masked_opt import native
from masked_opt.steps import PATHS, choose
from masked_opt.steps.stand_in import StandIns
from masked_opt.update import BlockPlan

NAME = 'table_weight'
SHAPE = (10, 4)
NATIVE = native.available()


def _rsp(ids, shape=SHAPE):
    ids = np.asarray(ids, dtype=np.int64)
    return mx.nd.sparse.row_sparse_array((np.ones((ids.size, shape[1]), 'float32'), ids),
                                         shape=shape)


def _plan(rows):
    return BlockPlan(SHAPE, rows, None, mx.cpu(), np.float32)


def _choose(plan, grad, path, base=None):
    return choose(plan, 0, mx.nd.zeros(SHAPE), grad, base or mx.optimizer.Adam(),
                  full_state=False, multi_precision=False, stand_ins=StandIns(), path=path)


CONTIGUOUS = np.r_[np.zeros(6), np.ones(4)]   # rows 6..9: one range, native-eligible
SCATTERED = np.r_[np.ones(2), np.zeros(6), np.ones(2)]


@pytest.mark.parametrize('path', PATHS)
def test_each_path_picks_its_strategy(path):
    dense = mx.nd.ones(SHAPE)
    assert _choose(None, dense, path).name == 'unmasked'
    assert _choose(_plan(np.zeros(10)), dense, path).name == 'stand_in'   # nothing trains
    # A dense gradient: the in-place strategy where the block is one range of rows and
    # columns (and the library loaded), the pure dense block otherwise.
    if path == 'native' and not NATIVE:
        with pytest.raises(ValueError, match='native library is not loaded'):
            _choose(_plan(CONTIGUOUS), dense, path)
    else:
        assert _choose(_plan(CONTIGUOUS), dense, path).name == {
            'auto': 'dense_inplace' if NATIVE else 'dense', 'pure': 'dense',
            'native': 'dense_inplace'}[path]
    if path == 'native':
        with pytest.raises(ValueError, match='one range of rows'):
            _choose(_plan(SCATTERED), dense, path)
    else:
        assert _choose(_plan(SCATTERED), dense, path).name == 'dense'
    sparse = _rsp([1, 7])
    if path == 'native' and not NATIVE:
        with pytest.raises(ValueError, match='native library is not loaded'):
            _choose(_plan(CONTIGUOUS), sparse, path)
        return
    want = {'auto': 'native' if NATIVE else 'sparse', 'pure': 'sparse', 'native': 'native'}
    assert _choose(_plan(CONTIGUOUS), sparse, path).name == want[path]
    # A batch without a trainable row: the pure path reads the ids and hands the wrapped
    # optimizer the stand-in; the native path never reads them (its kernel changes nothing).
    no_rows = _rsp([1, 2])
    assert _choose(_plan(CONTIGUOUS), no_rows, path).name == {
        'auto': want['auto'] if NATIVE else 'stand_in', 'pure': 'stand_in',
        'native': 'native'}[path]
    if path == 'native':
        with pytest.raises(ValueError, match='one range of rows'):
            _choose(_plan(SCATTERED), sparse, path)
    else:
        assert _choose(_plan(SCATTERED), sparse, path).name == 'sparse'


def test_unknown_path_is_refused():
    opt = mo.Masked(base='adam', masks={NAME: mo.train_rows_from(6)})
    with pytest.raises(ValueError, match=r"path must be one of \['auto', 'pure', 'native'\]; "
                                         r"received 'fast'"):
        opt.step_path = 'fast'
    assert opt.step_path == 'auto'


def test_a_forced_path_that_cannot_run_writes_nothing():
    """A whole step: every strategy is chosen before any parameter is written."""
    opt = mo.Masked(base='adam', learning_rate=0.1, param_idx2name={0: 'a_weight', 1: NAME},
                    masks={NAME: mo.train_rows([0, 9])})
    opt.step_path = 'native'
    updater = mx.optimizer.get_updater(opt)
    weights = [mx.nd.zeros(SHAPE), mx.nd.zeros(SHAPE)]
    with pytest.raises(ValueError, match="path='native' cannot update parameter 1"):
        updater([0, 1], [mx.nd.ones(SHAPE), _rsp([0, 3])], weights)
    for w in weights:
        assert (w.asnumpy() == 0).all()


CASES = {
    'sgd-mom rows': ('sgd', {'momentum': 0.9, 'wd': 1e-3}, mo.train_rows_from(6)),
    'adam cols': ('adam', {'wd': 1e-3}, mo.train_cols(range(1, 3))),
    'adam rows+cols': ('adam', {}, mo.train_rows(range(2, 8)) & mo.train_cols([3])),
}


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('grad_stype', ['default', 'row_sparse'])
def test_every_path_matches_the_pure_one(case, grad_stype):
    """The same steps on every path that can run them: the same weights, states and counts."""
    base, hyper, mask = CASES[case]
    rng = np.random.RandomState(3)
    w0 = rng.normal(size=SHAPE).astype('float32')
    grads = []
    for _ in range(4):
        ids = np.unique(rng.randint(0, SHAPE[0], 5))
        g = np.zeros(SHAPE, 'float32')
        g[ids] = rng.normal(size=(ids.size, SHAPE[1]))
        grads.append(g)

    def run(path):
        opt = mo.Masked(base=base, learning_rate=0.1, masks={NAME: mask},
                        param_idx2name={0: NAME}, **hyper)
        opt.step_path = path
        updater = mx.optimizer.get_updater(opt)
        weight = mx.nd.array(w0)
        for g in grads:
            grad = mx.nd.array(g)
            updater(0, grad.tostype('row_sparse') if grad_stype == 'row_sparse' else grad,
                    weight)
        return weight.asnumpy(), state_arrays(updater.states[0]), opt.num_update

    paths = ['auto']
    if NATIVE:
        paths.append('native')
    pure = run('pure')
    for path in paths:
        got = run(path)
        assert_same_bits(pure[0], got[0], '%s weight' % path)
        for a, b in zip(pure[1], got[1], strict=True):
            assert_same_bits(a, b, '%s state' % path)
        assert pure[2] == got[2]
