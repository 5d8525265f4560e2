"""Core exactness on the device under test (``mx.gpu(0)``), checked on the bits.

For each optimizer and mask: frozen weight entries keep their bits through steps whose
gradients hold NaN and Inf at frozen entries; the trainable block, and its optimizer state, end
bit-identical to the wrapped optimizer run on a separate parameter holding only the block, on
the same device (contract C1 and C2). Also: a full-size state warmed up without a mask keeps
its frozen entries; float16 weights with ``multi_precision``; fractional scales.

Both optimizers are driven by MXNet's ``Updater`` (``mx.optimizer.get_updater``), the object
Module and Trainer use: it creates the states and calls the optimizer's single-tensor or
aggregated (list) update exactly as in training.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, changed_bits, state_arrays
from gpu_env import RUN, SKIP_REASON, device

import masked_opt as mo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not RUN, reason=SKIP_REASON)]

SHAPE = (12, 6)
OPTIMIZERS = [
    ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3, 'clip_gradient': 2.0}),
    ('nag', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}),
    ('adam', {'learning_rate': 0.01, 'wd': 1e-3}),
    ('rmsprop', {'learning_rate': 0.01, 'centered': True, 'wd': 1e-3}),
    ('adagrad', {'learning_rate': 0.1, 'wd': 1e-3}),
    ('adadelta', {'wd': 1e-3}),
    ('ftml', {'learning_rate': 0.01, 'wd': 1e-3}),
    ('signum', {'learning_rate': 0.01, 'momentum': 0.9, 'wd_lh': 1e-3}),
    ('lamb', {'learning_rate': 0.01, 'wd': 1e-3}),
]
MASKS = {
    'rows': mo.train_rows_from(8),
    'cols': mo.train_cols([1, 4]),
    'rows_and_cols': mo.train_rows([0, 3, 11]) & mo.train_cols([0, 5]),
}
NAME = {'param_idx2name': {0: 'emb_weight'}}   # both end in _weight: the same wd_mult


def _updater(opt):
    """MXNet's Updater for ``opt``; ``updater(0, grad, weight)`` is one step of parameter 0."""
    return mx.optimizer.get_updater(opt)


def _grads(rng, frozen, steps, dtype='float32'):
    """Random gradients with NaN and Inf written at some frozen entries."""
    out = []
    for t in range(steps):
        g = rng.normal(size=SHAPE).astype(dtype)
        poison = frozen & (rng.rand(*SHAPE) < 0.3)
        g[poison] = np.nan if t % 2 else np.inf
        out.append(g)
    return out


def _block_index(mask):
    rows, cols = mask.resolve(SHAPE, 'emb_weight')
    r = np.arange(SHAPE[0]) if rows is None else np.flatnonzero(rows)
    c = np.arange(SHAPE[1]) if cols is None else np.flatnonzero(cols)
    frozen = np.ones(SHAPE, bool)
    frozen[np.ix_(r, c)] = False
    return np.ix_(r, c), frozen


@pytest.mark.parametrize('mask', list(MASKS), ids=list(MASKS))
@pytest.mark.parametrize('base,settings', OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_frozen_bits_and_block_equals_separate_parameter(base, settings, mask):
    ctx, rng = device(), np.random.RandomState(0)
    block, frozen = _block_index(MASKS[mask])
    w0 = rng.normal(0, 0.1, SHAPE).astype(np.float32)
    grads = _grads(rng, frozen, steps=30)

    masked = _updater(mo.Masked(base=base, masks={'emb_weight': MASKS[mask]}, **settings,
                                **NAME))
    alone = _updater(mx.optimizer.create(base, **settings, param_idx2name={0: 'block_weight'}))
    w = mx.nd.array(w0, ctx=ctx)
    w_alone = mx.nd.array(w0[block], ctx=ctx)
    for g in grads:
        masked(0, mx.nd.array(g, ctx=ctx), w)
        alone(0, mx.nd.array(g[block], ctx=ctx), w_alone)

    after = w.asnumpy()
    assert_same_bits(w0[frozen], after[frozen], 'frozen entries of %s' % base)
    assert_same_bits(w_alone, after[block], 'trainable block vs separate parameter')
    assert changed_bits(w0[block], after[block]) > 0
    for mine, theirs in zip(state_arrays(masked.states[0]), state_arrays(alone.states[0]),
                            strict=True):
        assert mine.shape == theirs.shape == w_alone.shape   # state for the block only
        assert_same_bits(theirs, mine, 'optimizer state')


@pytest.mark.parametrize('base,settings', [OPTIMIZERS[0], OPTIMIZERS[2]], ids=['sgd', 'adam'])
def test_warm_full_size_state_keeps_frozen_entries(base, settings):
    """A state warmed up by unmasked training, then handed to the wrapper: frozen parts stay."""
    ctx, rng = device(), np.random.RandomState(1)
    mask = MASKS['rows_and_cols']
    block, frozen = _block_index(mask)
    w = mx.nd.array(rng.normal(0, 0.1, SHAPE), ctx=ctx)
    plain = _updater(mx.optimizer.create(base, **settings, **NAME))
    for _ in range(5):
        plain(0, mx.nd.array(rng.normal(size=SHAPE), ctx=ctx), w)
    state = plain.states[0]
    w_before = w.asnumpy()
    state_before = [a.asnumpy() for a in state_arrays(state)]

    # As after Trainer.load_states: the masked optimizer's Updater receives the warm state.
    masked = _updater(mo.Masked(base=base, masks={'emb_weight': mask}, **settings, **NAME))
    masked.states[0], masked.states_synced[0] = state, True
    for g in _grads(rng, frozen, steps=10):
        masked(0, mx.nd.array(g, ctx=ctx), w)

    assert_same_bits(w_before[frozen], w.asnumpy()[frozen], 'frozen weight')
    for before, after in zip(state_before, state_arrays(state), strict=True):
        assert_same_bits(before[frozen], after.asnumpy()[frozen], 'frozen state entries')
        assert changed_bits(before[block], after.asnumpy()[block]) > 0


@pytest.mark.parametrize('base,settings', [
    ('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}),
    ('adam', {'learning_rate': 0.01, 'wd': 1e-3})], ids=['sgd', 'adam'])
def test_float16_multi_precision(base, settings):
    ctx, rng = device(), np.random.RandomState(2)
    mask = MASKS['rows']
    block, frozen = _block_index(mask)
    w0 = rng.normal(0, 0.1, SHAPE).astype(np.float16)
    masked = _updater(mo.Masked(base=base, masks={'emb_weight': mask}, multi_precision=True,
                                **settings, **NAME))
    alone = _updater(mx.optimizer.create(base, multi_precision=True, **settings,
                                         param_idx2name={0: 'block_weight'}))
    w = mx.nd.array(w0, ctx=ctx, dtype='float16')
    w_alone = mx.nd.array(w0[block], ctx=ctx, dtype='float16')
    for g in _grads(rng, frozen, steps=20, dtype='float16'):
        masked(0, mx.nd.array(g, ctx=ctx, dtype='float16'), w)
        alone(0, mx.nd.array(g[block], ctx=ctx, dtype='float16'), w_alone)
    after = w.asnumpy()
    assert after.dtype == np.float16
    assert_same_bits(w0[frozen], after[frozen], 'frozen float16 entries')
    assert_same_bits(w_alone, after[block], 'float16 block vs separate parameter')


@pytest.mark.parametrize('base,settings', [OPTIMIZERS[0], OPTIMIZERS[2]], ids=['sgd', 'adam'])
def test_fraction_scales_the_step(base, settings):
    ctx, rng = device(), np.random.RandomState(3)
    scales = np.array([0, 1, 0.5, 0.25, 1, 0, 0.5, 1, 1, 0, 0.75, 1])
    w0 = rng.normal(0, 0.1, SHAPE).astype(np.float32)
    g = rng.normal(size=SHAPE).astype(np.float32)
    g[scales == 0] = np.nan                                  # frozen rows: poisoned

    masked = _updater(mo.Masked(base=base, masks={'emb_weight': mo.scale_rows(scales)},
                                **settings, **NAME))
    w = mx.nd.array(w0, ctx=ctx)
    masked(0, mx.nd.array(g, ctx=ctx), w)

    rows = scales > 0
    alone = _updater(mx.optimizer.create(base, **settings, param_idx2name={0: 'block_weight'}))
    w_alone = mx.nd.array(w0[rows], ctx=ctx)
    alone(0, mx.nd.array(g[rows], ctx=ctx), w_alone)

    after = w.asnumpy()
    assert_same_bits(w0[~rows], after[~rows], 'scale-0 rows')
    full = scales[rows] == 1
    # Scale 1 keeps the wrapped optimizer's result exactly; the others move s x its step
    # (the blend rounds in float32, hence the tolerance on those rows only).
    assert (as_bits(after[rows][full]) == as_bits(w_alone.asnumpy()[full])).all()
    step = w_alone.asnumpy() - w0[rows]
    np.testing.assert_allclose(after[rows] - w0[rows], step * scales[rows][:, None],
                               rtol=1e-3, atol=1e-7)
