"""The native lazy-kernel path against the pure path: the same bits, weights and states.

The pure row_sparse path (``SparseRows``: host read of the row ids, gather, the wrapped
optimizer on a dense mini-block, scatter) is the reference, as torch.optim's plain loop is for
its fused kernels. The native path (``NativeRows``: masked_opt's operators re-key the
gradient on the engine and the wrapped optimizer's own lazy kernel updates a view of the
weight) must give the same bits for every optimizer it serves, on every drawn case: SGD with
and without momentum and Adam; wd, clip_gradient, rescale_grad, an lr schedule; rows, columns
and both; float16/32/64; NaN and +-Inf in the gradient at frozen entries and in frozen weights;
batches without a trainable row; several steps (Adam's bias correction and the schedule read
the update counts, which are compared too).

Each side runs on a path forced with ``step_path`` (``'pure'``, ``'native'``; see
:mod:`masked_opt.steps`), as torch.optim's tests force ``foreach``: ``'native'`` raises where
the native strategy does not apply, so a test that silently compared the pure path with itself
cannot pass.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from hypothesis import assume, given
from hypothesis import strategies as st
from models import GluonMF
from mxnet import autograd, gluon

import masked_opt as mo
from masked_opt import native

NAME = 'table_weight'   # ends in _weight: MXNet applies wd to it

if not native.available():   # never in CI: MASKED_OPT_REQUIRE_NATIVE=1 fails the run (conftest)
    pytest.skip('native library not available: %s' % native.status().reason,
                allow_module_level=True)


def _rsp(ids, values, shape, dtype):
    return mx.nd.sparse.row_sparse_array((values.astype(dtype), ids.astype(np.int64)),
                                         shape=shape, dtype=dtype)


BASES = {
    'sgd': {},
    'sgd-mom': {'momentum': 0.9},
    'adam': {},
}


@st.composite
def cases(draw):
    v = draw(st.integers(4, 24))
    d = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(['float32', 'float64', 'float16']))
    kind = draw(st.sampled_from(['rows', 'cols', 'both']))
    lo = draw(st.integers(0, v - 1))
    hi = draw(st.integers(lo + 1, v))
    c0 = draw(st.integers(0, d - 1))
    c1 = draw(st.integers(c0 + 1, d))
    if kind == 'rows':
        mask = mo.train_rows(range(lo, hi))
    elif kind == 'cols':
        mask = mo.train_cols(range(c0, c1))
        lo, hi = 0, v
    else:
        mask = mo.train_rows(range(lo, hi)) & mo.train_cols(range(c0, c1))
    if kind == 'rows':
        c0, c1 = 0, d
    # A block that is the whole table is no mask at all: the wrapped optimizer runs alone.
    assume((lo, hi, c0, c1) != (0, v, 0, d))
    base = draw(st.sampled_from(sorted(BASES)))
    hyper = dict(BASES[base])
    hyper['learning_rate'] = draw(st.sampled_from([0.1, 0.01]))
    hyper['wd'] = draw(st.sampled_from([0.0, 1e-2]))
    hyper['rescale_grad'] = draw(st.sampled_from([1.0, 0.25]))
    if draw(st.booleans()) and base != 'adam':   # clipped Adam: pure path only
        hyper['clip_gradient'] = 0.5
    if base == 'sgd':   # plain SGD with wd: pure path only
        hyper['wd'] = 0.0
    if draw(st.booleans()):
        hyper['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=2, factor=0.5)
    n_steps = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.RandomState(seed)
    weight = rng.normal(size=(v, d))
    # Poison frozen entries of the weight: their bits must survive whatever they hold.
    frozen = np.ones((v, d), bool)
    frozen[lo:hi, c0:c1] = False
    poison = rng.rand(v, d) < 0.3
    weight[frozen & poison] = rng.choice([np.nan, np.inf, -np.inf, -0.0], (frozen & poison).sum())
    grads = []
    for _ in range(n_steps):
        if draw(st.booleans()):
            # Only frozen rows in the batch (or none at all): nothing trains this step.
            outside = [i for i in range(v) if not lo <= i < hi]
            ids = np.array(sorted(set(rng.choice(outside, min(3, len(outside))).tolist()))
                           if outside else [], dtype=np.int64)
        else:
            ids = np.unique(rng.randint(0, v, rng.randint(1, v + 1)))
        g = rng.normal(size=(ids.size, d))
        rows_frozen = (ids < lo) | (ids >= hi)
        g[rows_frozen] = np.nan
        g[:, :c0] = np.inf
        g[:, c1:] = -np.inf
        grads.append((ids, g))
    return dict(shape=(v, d), dtype=dtype, mask=mask, base=base.split('-')[0], hyper=hyper,
                weight=weight, grads=grads, lo=lo, hi=hi, c0=c0, c1=c1)


def _run(case, path):
    hyper = dict(case['hyper'])
    if 'lr_scheduler' in hyper:   # a fresh schedule per run: it counts updates itself
        sched = hyper['lr_scheduler']
        hyper['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=sched.step,
                                                                factor=sched.factor)
    opt = mo.Masked(base=case['base'], masks={NAME: case['mask']}, param_idx2name={0: NAME},
                    **hyper)
    opt.step_path = path
    updater = mx.optimizer.get_updater(opt)
    dtype = case['dtype']
    weight = mx.nd.array(case['weight'], dtype=dtype)
    for ids, g in case['grads']:
        updater(0, _rsp(ids, g, case['shape'], dtype), weight)
    mx.nd.waitall()
    return weight, updater.states[0], dict(opt._index_update_count), opt.num_update


@given(case=cases())
def test_native_equals_pure_on_the_bits(case):
    pure = _run(case, 'pure')
    fast = _run(case, 'native')   # raises at a step the native path does not serve
    assert_same_bits(pure[0], fast[0], 'weight')
    for a, b in zip(state_arrays(pure[1]), state_arrays(fast[1]), strict=True):
        assert_same_bits(a, b, 'state')
    assert pure[2] == fast[2], 'update counts differ: %s vs %s' % (pure[2], fast[2])
    assert pure[3] == fast[3]
    # Frozen entries kept their bits (both paths): the weight outside the block.
    w0 = mx.nd.array(case['weight'], dtype=case['dtype']).asnumpy()
    frozen = np.ones(case['shape'], bool)
    frozen[case['lo']:case['hi'], case['c0']:case['c1']] = False
    assert_same_bits(w0[frozen], fast[0].asnumpy()[frozen], 'frozen entries')


def test_native_path_moves_trainable_rows():
    """Control: the native path trains (a no-op kernel would pass the equality test only if
    the pure path did nothing too)."""
    opt = mo.Masked(base='adam', learning_rate=0.1, masks={NAME: mo.train_rows_from(6)},
                    param_idx2name={0: NAME})
    opt.step_path = 'native'
    updater = mx.optimizer.get_updater(opt)
    weight = mx.nd.zeros((10, 3))
    updater(0, _rsp(np.array([1, 7]), np.ones((2, 3)), (10, 3), 'float32'), weight)
    w = weight.asnumpy()
    assert (w[7] != 0).all() and (w[:6] == 0).all() and (w[8:] == 0).all()


@pytest.mark.parametrize('base,params', [('sgd', {'momentum': 0.9}), ('adam', {})])
def test_gluon_trainer_native_equals_pure(base, params):
    """The whole Gluon path (hybridized sparse_grad Embeddings, two masked tables, Trainer)."""
    def run(path):
        mx.random.seed(5)
        net = GluonMF(30, 20, 8, sparse_grad=True)
        net.initialize(mx.init.Uniform(0.5))
        net.hybridize()
        trainer = gluon.Trainer(net.collect_params(), 'masked', dict(
            params, base=base, learning_rate=0.05, wd=1e-3,
            masks={net.book.weight: mo.train_rows_from(15),
                   net.user.weight: mo.train_cols(range(6, 8))}))
        trainer.optimizer.step_path = path   # 'native': every masked update, or it raises
        rng = np.random.RandomState(1)
        for _ in range(5):
            member = mx.nd.array(rng.randint(0, 30, 16))
            book = mx.nd.array(rng.randint(0, 20, 16))
            with autograd.record():
                loss = (net(member, book) ** 2).sum()
            loss.backward()
            trainer.step(16)
        return [p.data().asnumpy() for p in net.collect_params().values()]

    pure = run('pure')
    fast = run('native')
    for a, b in zip(pure, fast, strict=True):
        assert_same_bits(a, b, 'parameter')


def test_not_served_cases_take_the_pure_path():
    """Non-contiguous rows, fractional scales, other optimizers, lazy_update=False: pure.
    Forcing the native path on them raises, saying why; 'auto' runs them on the pure path."""
    grad = _rsp(np.array([1, 7]), np.ones((2, 3)), (10, 3), 'float32')
    for base, kw, mask, why in [
            ('adam', {}, mo.train_rows([6, 8]), 'one range of rows'),
            ('adam', {}, mo.scale_rows(np.linspace(0, 1, 10)), '0/1 scales'),
            ('rmsprop', {}, mo.train_rows_from(6), 'RMSProp'),
            ('adam', {'lazy_update': False}, mo.train_rows_from(6), 'Adam'),
            ('sgd', {'momentum': 0.9, 'lazy_update': False}, mo.train_cols([0, 1]), 'SGD'),
            # Their lazy kernels round differently from the pure path's:
            ('adam', {'clip_gradient': 0.5}, mo.train_rows_from(6), 'Adam'),
            ('sgd', {'wd': 1e-3}, mo.train_rows_from(6), 'SGD')]:
        for path in ('native', 'auto'):
            opt = mo.Masked(base=base, learning_rate=0.1, masks={NAME: mask},
                            param_idx2name={0: NAME}, **kw)
            opt.step_path = path
            updater = mx.optimizer.get_updater(opt)
            weight = mx.nd.zeros((10, 3))
            if path == 'native':
                with pytest.raises(ValueError, match="path='native' cannot update") as err:
                    updater(0, grad, weight)
                assert why in str(err.value)
                assert (weight.asnumpy() == 0).all(), 'written before the error'
            else:
                updater(0, grad, weight)
