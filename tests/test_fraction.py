"""C3: a fractional scale ``s`` moves an entry by ``s`` times the wrapped optimizer's step.

The oracle replays the contract step by step: the wrapped optimizer (unwrapped, MXNet's own
code) updates the trainable block as a parameter of its own, giving ``new``; numpy float32
then computes ``new - (1 - s) * (new - old)``, the same three float32 operations in the same
order as masked_opt, each correctly rounded on both sides, so the comparison is on the bits.
The optimizer state is the wrapped optimizer's own (only the weight step is scaled).

With ``multi_precision`` and float16 weights the float32 master copy is blended the same
way, and the float16 weight is the master copy rounded to float16, as after any
multi_precision step.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from exact import blend, update_alone

import masked_opt as mo

STEPS = 20

OPTIMIZERS = {
    'sgd_momentum': ('sgd', {'momentum': 0.9, 'wd': 1e-3}),
    'sgd': ('sgd', {'wd': 1e-3}),
    'adam': ('adam', {'wd': 1e-3}),
}

# (name, shape, mask): fractions on rows, on columns, on both (scales multiply), a 1-D
# parameter, and a fraction next to a plain 0/1 column mask. Every mask holds 0, 1 and
# fractions, so frozen, plain and fractional entries share each step.
PARAMS = (
    ('rows_weight', (7, 4), mo.scale_rows([0, 0.25, 0.5, 1, 0.1, 0.75, 0])),
    ('cols_weight', (5, 6), mo.scale_cols([1, 0.3, 0, 0.5, 0.9, 1])),
    ('both_weight', (6, 5, 2), mo.scale_rows([0.5, 1, 0, 0.2, 1, 0.7])
     & mo.scale_cols([0.5, 0, 1, 0.25, 0.8])),
    ('vec_weight', (9,), mo.as_mask({'rows': [0.5, 0, 1, 0.125, 0, 1, 0.6, 0.99, 0.01]})),
    ('mixed_weight', (5, 4), mo.train_cols([1, 2]) & mo.scale_rows([0.5, 1, 0, 0.3, 1])),
)


def scales(shape, mask, name):
    """Per-entry scale ``r[i] * c[j]`` (float64), broadcast over trailing axes."""
    rows, cols = mask.resolve(shape, name)
    s = np.ones(shape[:2] if len(shape) > 1 else shape)
    if rows is not None:
        s = s * rows.reshape((-1,) + (1,) * (s.ndim - 1))
    if cols is not None:
        s = s * cols[None, :]
    return s.reshape(s.shape + (1,) * (len(shape) - s.ndim))


def block_ids(s):
    """Row and column ids of the trainable block (scale > 0 somewhere in the row/column)."""
    flat = s.reshape(s.shape[0], -1) if s.ndim > 1 else s[:, None]
    rows = np.flatnonzero(flat.any(axis=1))
    if s.ndim == 1:
        return rows, None
    cols = np.flatnonzero(s.reshape(s.shape[0], s.shape[1], -1).any(axis=(0, 2)))
    return rows, cols


def take(a, rows, cols):
    return a[rows] if cols is None else a[np.ix_(rows, cols)]


def master_of(opt, state):
    """The float32 master copy inside a multi_precision state (layout differs by optimizer)."""
    return state[1] if isinstance(opt, (mx.optimizer.SGD, mx.optimizer.NAG)) else state[0]


def run_pair(opt_name, config, dtype, steps=STEPS, seed=0):
    """Run masked and oracle side by side; return what the checks need."""
    kwargs = dict(config, learning_rate=0.05, rescale_grad=0.5)
    mp = np.dtype(dtype) == np.float16
    if mp:
        kwargs['multi_precision'] = True
    idx2name = {i: p[0] for i, p in enumerate(PARAMS)}
    rng = np.random.RandomState(seed)
    w0 = [rng.uniform(-1, 1, p[1]).astype(dtype) for p in PARAMS]
    grads = [rng.normal(size=(steps,) + p[1]).astype(dtype) for p in PARAMS]
    ss = [scales(p[1], p[2], p[0]) for p in PARAMS]
    ids = [block_ids(s) for s in ss]

    masked = mo.Masked(base=opt_name, param_idx2name=idx2name,
                       masks={p[0]: p[2] for p in PARAMS}, **kwargs)
    updater = mx.optimizer.get_updater(masked)
    weights = [mx.nd.array(w, dtype=dtype) for w in w0]
    g_nd = [mx.nd.array(g, dtype=dtype) for g in grads]

    ref = mx.optimizer.create(opt_name, param_idx2name=idx2name, **kwargs)
    ref_w = [take(w, *b) for w, b in zip(w0, ids, strict=True)]
    ref_s = {i: ref.create_state_multi_precision(i, mx.nd.array(w, dtype=dtype))
             for i, w in enumerate(ref_w)}
    ref_master = [w.astype(np.float32) for w in ref_w] if mp else None
    g_ref = [mx.nd.array(np.stack([take(x, *b) for x in g]), dtype=dtype)
             for g, b in zip(grads, ids, strict=True)]

    for t in range(steps):
        updater(list(range(len(PARAMS))), [g[t] for g in g_nd], weights)
        for i, (rows, cols) in enumerate(ids):
            s_b = take(ss[i], rows, cols)
            w_nd = mx.nd.array(ref_w[i], dtype=dtype)
            update_alone(ref, i, w_nd, g_ref[i][t], ref_s[i])
            if mp:
                master = master_of(ref, ref_s[i])
                new32 = master.asnumpy()
                ref_master[i] = blend(new32, ref_master[i], s_b, np.float32)
                master[:] = ref_master[i]          # the next step starts from the blend
                ref_w[i] = ref_master[i].astype(np.float16)
            else:
                ref_w[i] = blend(w_nd.asnumpy(), ref_w[i], s_b, dtype)
    return dict(w0=w0, weights=weights, states=updater.states, ss=ss, ids=ids, ref_w=ref_w,
                ref_s=ref_s, ref_master=ref_master, masked=masked, ref=ref)


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
def test_fraction_scales_the_step_bit_exact(opt, dtype):
    out = run_pair(*OPTIMIZERS[opt], dtype)
    for i, (name, shape, _) in enumerate(PARAMS):
        w = out['weights'][i].asnumpy()
        s = np.broadcast_to(out['ss'][i], shape)
        assert_same_bits(w[s == 0], out['w0'][i][s == 0], '%s frozen entries' % name)
        block = take(w, *out['ids'][i])
        assert_same_bits(block, out['ref_w'][i], '%s block vs numpy blend oracle' % name)
        assert changed_bits(block, take(out['w0'][i], *out['ids'][i])) > 0
        for k, (a, b) in enumerate(zip(state_arrays(out['states'][i]),
                                       state_arrays(out['ref_s'][i]), strict=True)):
            assert_same_bits(a, b, '%s state[%d] vs the wrapped optimizer' % (name, k))


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
def test_fraction_with_multi_precision_blends_the_master_copy(opt):
    out = run_pair(*OPTIMIZERS[opt], 'float16')
    for i, (name, shape, _) in enumerate(PARAMS):
        w = out['weights'][i].asnumpy()
        s = np.broadcast_to(out['ss'][i], shape)
        assert_same_bits(w[s == 0], out['w0'][i][s == 0], '%s frozen entries' % name)
        master = master_of(out['ref'], out['states'][i]).asnumpy()
        assert master.dtype == np.float32
        assert_same_bits(master, out['ref_master'][i], '%s float32 master vs oracle' % name)
        assert_same_bits(take(w, *out['ids'][i]), out['ref_w'][i],
                         '%s float16 weight vs the blended master, rounded' % name)


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
def test_one_step_moves_each_entry_by_s_times_the_full_step(opt):
    """What C3 means, stated without the blend formula: from the same weight and state, one
    masked step moves entry (i, j) by s[i, j] x the step the unmasked optimizer takes.

    Tolerance: the masked step is computed as new - (1-s)(new-old), the check as s(new-old);
    the two differ by the rounding of three float32 operations, each at most half an ulp of
    numbers no larger than max(|new|, |old|): 4 float32 ulps of that bound covers it.
    """
    name, config = OPTIMIZERS[opt]
    shape = (6, 5)
    s_rows = np.array([0, 0.1, 0.25, 0.5, 0.9, 1.0])
    rng = np.random.RandomState(3)
    w0 = rng.uniform(-1, 1, shape).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)

    # Same names on both sides: MXNet zeroes wd for names not ending in '_weight'.
    full = mx.optimizer.create(name, learning_rate=0.05, param_idx2name={0: 'emb_weight'},
                               **config)
    w_full = mx.nd.array(w0)
    full.update(0, w_full, mx.nd.array(g), full.create_state(0, w_full))
    step_full = w_full.asnumpy().astype(np.float64) - w0

    masked = mo.Masked(base=name, learning_rate=0.05, param_idx2name={0: 'emb_weight'},
                       masks={'emb_weight': mo.scale_rows(s_rows)}, **config)
    w = mx.nd.array(w0)
    masked.update(0, w, mx.nd.array(g), masked.create_state(0, w))
    step = w.asnumpy().astype(np.float64) - w0

    bound = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(w0), np.abs(w_full.asnumpy()))
    np.testing.assert_array_less(np.abs(step - s_rows[:, None] * step_full), bound + 1e-30)
    assert (step[0] == 0).all()                       # s = 0: frozen
    assert_same_bits(w.asnumpy()[-1], w_full.asnumpy()[-1], 's = 1 row')
    assert (np.abs(step_full[1:]) > 0).all()          # the step is not trivially zero


def test_fraction_is_not_a_gradient_scale_under_adam():
    """Why C3 scales the step: scaling Adam's gradient by s would cancel out in m / sqrt(v).
    A row at s = 0.5 must move half as far as with s = 1, not as far."""
    w0 = np.random.RandomState(4).uniform(-1, 1, (2, 3)).astype(np.float32)
    g = np.random.RandomState(5).normal(size=(2, 3)).astype(np.float32)
    moves = []
    for s in (1.0, 0.5):
        opt = mo.Masked(base='adam', learning_rate=0.01, param_idx2name={0: 'w'},
                        masks={'w': mo.scale_rows([s, 0.0])})
        w = mx.nd.array(w0)
        opt.update(0, w, mx.nd.array(g), opt.create_state(0, w))
        moves.append(np.abs(w.asnumpy()[0] - w0[0]))
    np.testing.assert_allclose(moves[1], 0.5 * moves[0], rtol=1e-4)
