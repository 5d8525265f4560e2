"""Property tests (hypothesis): C1 on the bits, and the trainable block against an oracle.

Hypothesis draws the wrapped optimizer and its settings, the shape (1-D, 2-D, 3-D with a
trailing axis), the dtype (float32, float64, float16 with multi_precision), the mask (helpers
combined with ``&``, or plain data, with or without fractions), whether the state was warmed
up without a mask first, and how the optimizer is driven (MXNet's Updater or direct calls).
The expected scales are computed here from what was drawn, not by masked_opt.

For every example:

- frozen entries (scale 0) keep their bits, even with NaN/±Inf in their gradient, and so do
  the entries of a warmed-up full-size state that belong only to frozen weight entries;
- the trainable block equals, bit for bit, a replay by the wrapped optimizer itself on the
  block as a parameter of its own, with fractional scales blended in numpy as the contract
  says (``new - (1 - s) * (new - old)``, see test_fraction.py). For 0/1 masks the replay *is*
  the block trained as its own parameter; entries with scale 1 get exactly that;
- the optimizer state equals the replay's state, bit for bit.

CI runs the bounded ``ci`` profile (tests/conftest.py); ``HYPOTHESIS_PROFILE=dev`` runs more.
"""
import copy
import warnings

import mxnet as mx
import numpy as np
from bits import assert_same_bits, changed_bits, state_arrays
from exact import POISON, Layout, blend, update_alone
from hypothesis import given
from hypothesis import strategies as st
from optim_db import CONFIGS, NO_FLOAT64, NO_WD, ONLY_2D

import masked_opt as mo

# SGD, NAG and LARS keep (state, master) under multi_precision; MXNet's default wrapper
# (every other optimizer here) keeps (master, state).
MASTER_LAST = (mx.optimizer.SGD, mx.optimizer.NAG, mx.optimizer.LARS)

# Optimizers whose constructor takes ``momentum`` and works with any value in [0, 1).
# (DCASGD also takes it but breaks on momentum > 0 in MXNet itself: see
# test_exact_all_optimizers.test_dcasgd_momentum_is_broken_in_mxnet_and_masked_says_the_same.)
HAS_MOMENTUM = {'sgd', 'ccsgd', 'nag', 'signum', 'lars', 'lbsgd'}

# GroupAdaGrad's per-row state is not gathered when handed over full-size (a known masked_opt
# bug, xfailed in test_exact_all_optimizers), so warm-up examples do not draw it.
NO_WARM = {'groupadagrad'}

# Fractions from 1e-6: a row scale times a column scale must not underflow to 0 in float64
# (e.g. 0.5 * 5e-324 == 0). masked_opt then keeps the entry inside the trainable block as a
# fraction whose blend restores the old value only up to rounding, so such an "s == 0" entry
# is not bit-frozen. Reported as a known limitation; scales that small have no use.
FRACTIONS = st.floats(1e-6, 1 - 1e-6) | st.sampled_from([0.5, 0.25, 1e-3, 0.999])


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------
@st.composite
def axis_mask(draw, n, axis, fractions):
    """One axis of a mask: (helper Mask or plain-data list, expected scales)."""
    kinds = ['all', 'train', 'freeze', 'scale', 'data'] + (['from'] if axis == 'rows' else [])
    kind = draw(st.sampled_from(kinds))
    if kind == 'all':
        return None, np.ones(n)
    if kind == 'from':
        k = draw(st.integers(0, n))
        expected = np.zeros(n)
        expected[k:] = 1
        return mo.train_rows_from(k), expected
    if kind in ('train', 'freeze'):
        idx = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        inside = 1.0 if kind == 'train' else 0.0
        expected = np.full(n, 1.0 - inside)
        expected[idx] = inside
        helper = {('rows', 'train'): mo.train_rows, ('rows', 'freeze'): mo.freeze_rows,
                  ('cols', 'train'): mo.train_cols, ('cols', 'freeze'): mo.freeze_cols}
        as_array = draw(st.sampled_from(['list', 'numpy', 'ndarray']))
        return helper[axis, kind](_container(idx, as_array, 'int64')), expected
    values = st.sampled_from([0.0, 1.0]) | (FRACTIONS if fractions else st.nothing())
    scales = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    if kind == 'scale':
        helper = mo.scale_rows if axis == 'rows' else mo.scale_cols
        return helper(scales), scales
    container = draw(st.sampled_from(['list', 'numpy', 'ndarray']))
    if container == 'ndarray':
        scales = scales.astype(np.float32).astype(np.float64)  # what an NDArray can hold
    return ('data', _container(scales, container, 'float32' if container == 'ndarray' else
                               'float64')), scales


def _container(values, kind, dtype):
    if kind == 'list':
        return [v.item() if hasattr(v, 'item') else v for v in np.asarray(values, dtype=dtype)]
    if kind == 'numpy':
        return np.asarray(values, dtype=dtype)
    if dtype == 'int64' and len(values) == 0:
        return mx.nd.array(np.zeros(0), dtype='int64')
    return mx.nd.array(np.asarray(values, dtype=dtype), dtype=dtype)


@st.composite
def masks(draw, shape, fractions):
    """A mask for ``shape`` and its expected (rows, cols) scales."""
    row_parts = [draw(axis_mask(shape[0], 'rows', fractions))
                 for _ in range(draw(st.integers(1, 2)))]
    col_parts = []
    if len(shape) > 1:
        col_parts = [draw(axis_mask(shape[1], 'cols', fractions))
                     for _ in range(draw(st.integers(0, 2)))]
    rows = np.prod([e for _, e in row_parts], axis=0)
    cols = np.prod([e for _, e in col_parts], axis=0) if col_parts else None
    # Plain-data parts go into one dict (one 'rows' and one 'cols' at most); helpers and
    # that dict combine with &.
    mask, data = mo.Mask(), {}
    for axis, parts in (('rows', row_parts), ('cols', col_parts)):
        for spec, _ in parts:
            if isinstance(spec, tuple) and axis not in data:
                data[axis] = spec[1]
            elif isinstance(spec, tuple):
                mask = mask & mo.as_mask({axis: spec[1]})
            elif spec is not None:
                mask = mask & spec
    if data:
        mask = mo.as_mask(data) & mask if draw(st.booleans()) else mask & mo.as_mask(data)
    return mask, rows, cols


@st.composite
def examples(draw):
    name = draw(st.sampled_from(sorted(CONFIGS)))
    config = dict(draw(st.sampled_from(CONFIGS[name])))
    if name in HAS_MOMENTUM:
        # Signum's wd_lh exists only in its momentum kernel.
        config['momentum'] = draw(st.sampled_from(
            [0.5, 0.9] if 'wd_lh' in config else [0.0, 0.5, 0.9]))
    ndims = [2] if name in ONLY_2D else [1, 2, 3]
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(ndim))
    if ndim == 3:
        shape = shape[:2] + (draw(st.integers(1, 3)),)
    dtypes = ['float32', 'float16'] + ([] if name in NO_FLOAT64 else ['float64'])
    dtype = draw(st.sampled_from(dtypes))
    fractions = draw(st.booleans())
    mask, rows, cols = draw(masks(shape, fractions))
    hyper = {
        'learning_rate': draw(st.sampled_from([0.01, 0.05, 0.2])),
        'rescale_grad': draw(st.sampled_from([1.0, 0.5, 1.0 / 3])),
        'wd': 0.0 if name in NO_WD else draw(st.sampled_from([0.0, 1e-4, 1e-2])),
    }
    clip = draw(st.sampled_from([None, 0.1, 1.0]))
    if clip is not None:
        hyper['clip_gradient'] = clip
    return dict(name=name, config=config, shape=shape, dtype=dtype, mask=mask, rows=rows,
                cols=cols, hyper=hyper, steps=draw(st.integers(1, 5)),
                warm=0 if name in NO_WARM else draw(st.sampled_from([0, 0, 2])),
                driver=draw(st.sampled_from(['updater', 'direct'])),
                seed=draw(st.integers(0, 2 ** 16)))


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------
def _kwargs(ex):
    kwargs = dict(ex['config'], **ex['hyper'])
    if ex['dtype'] == 'float16':
        kwargs['multi_precision'] = True
    return kwargs


def _master_index(opt):
    return 1 if isinstance(opt, MASTER_LAST) else 0


class Replay:
    """The wrapped optimizer on the block as its own parameter, blending fractions in numpy.

    Index 0 is an unmasked companion parameter (so aggregated calls and shared optimizer
    state such as Nadam's momentum schedule see the same sequence), index 1 the block.
    """

    def __init__(self, opt, lay, w_block, q, states, dtype, direct):
        self.opt, self.lay, self.dtype = opt, lay, np.dtype(dtype)
        # Calls as the masked optimizer makes them: an unmasked parameter (or one whose mask
        # is all ones) exactly as the caller passed it, scalar or list; a block (fractions
        # included) as MXNet's Updater would pass a parameter of its own (update_alone).
        self.plain_call = _scalar_call if direct else update_alone
        self.block_call = self.plain_call if (lay.scale == 1).all() else update_alone
        self.w = w_block.astype(dtype)
        self.q = q
        self.states = states
        s = lay.block(lay.scale)
        self.s = s
        self.fractional = bool(((s > 0) & (s < 1)).any())
        self.mp = self.dtype == np.float16

    def step(self, g_q, g_block):
        self.plain_call(self.opt, 0, self.q, g_q, self.states[0])
        w_nd = mx.nd.array(self.w, dtype=self.dtype)
        if not self.fractional:
            self.block_call(self.opt, 1, w_nd, g_block, self.states[1])
            self.w = w_nd.asnumpy()
            return
        if self.mp:
            master = self.states[1][_master_index(self.opt)]
            old = master.asnumpy()
            self.block_call(self.opt, 1, w_nd, g_block, self.states[1])
            blended = blend(master.asnumpy(), old, self.s, np.float32)
            master[:] = blended
            self.w = blended.astype(np.float16)
        else:
            old = self.w
            self.block_call(self.opt, 1, w_nd, g_block, self.states[1])
            self.w = blend(w_nd.asnumpy(), old, self.s, self.dtype)


def _scalar_call(opt, index, weight, grad, state):
    opt.update_multi_precision(index, weight, grad, state)


def _poison(g, frozen):
    p = g.copy()
    idx = np.flatnonzero(frozen)
    p.flat[idx] = np.resize(np.array(POISON, dtype=g.dtype), idx.size)
    return p


# ---------------------------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------------------------
@given(examples())
def test_frozen_bits_and_block_matches_the_wrapped_optimizer(ex):
    warnings.simplefilter('ignore', UserWarning)
    name, dtype, shape = ex['name'], ex['dtype'], ex['shape']
    cols = ex['cols'] if len(shape) > 1 else None
    lay = Layout('p_weight', shape, ex['mask'], scales=(ex['rows'], cols))
    idx2name = {0: 'q_weight', 1: 'p_weight'}
    rng = np.random.RandomState(ex['seed'])
    q_shape = (3, 2)
    w0 = rng.uniform(-1, 1, shape).astype(dtype)
    q0 = rng.uniform(-1, 1, q_shape).astype(dtype)
    weight, q = mx.nd.array(w0, dtype=dtype), mx.nd.array(q0, dtype=dtype)

    base = mx.optimizer.create(name, param_idx2name=idx2name, **_kwargs(ex))
    states = None
    if ex['warm']:
        # Unmasked steps first: the wrapped optimizer's own full-size states.
        states = {0: base.create_state_multi_precision(0, q),
                  1: base.create_state_multi_precision(1, weight)}
        for _ in range(ex['warm']):
            for i, w in ((0, q), (1, weight)):
                g = mx.nd.array(rng.normal(size=w.shape), dtype=dtype)
                update_alone(base, i, w, g, states[i])
    w_start, q_start = weight.asnumpy(), q.asnumpy()
    s_start = [a.asnumpy() for a in state_arrays(states[1])] if states else None

    # The oracle starts from the same point: a copy of the optimizer, the block of the state.
    empty = lay.row_ids.size == 0 or (lay.col_ids is not None and lay.col_ids.size == 0)
    ref = copy.deepcopy(base)
    if not empty:
        ref_q = mx.nd.array(q_start, dtype=dtype)
        ref_states = {}
        if states:
            ref_states[0] = _copy_state(states[0], lambda a: a)
            ref_states[1] = _copy_state(states[1], lay.block)
        else:
            ref_states[0] = ref.create_state_multi_precision(0, ref_q)
            ref_states[1] = ref.create_state_multi_precision(
                1, mx.nd.array(lay.block(w_start), dtype=dtype))
        replay = Replay(ref, lay, lay.block(w_start), ref_q, ref_states, dtype,
                        direct=ex['driver'] == 'direct')

    opt = mo.Masked(base=base, param_idx2name=idx2name, masks={'p_weight': ex['mask']})
    if ex['driver'] == 'updater':
        updater = mx.optimizer.get_updater(opt)
        if states:
            updater.states, updater.states_synced = states, {0: True, 1: True}
    elif not states:
        states = {0: opt.create_state_multi_precision(0, q),
                  1: opt.create_state_multi_precision(1, weight)}

    mx.random.seed(ex['seed'])   # SGLD: the replay draws the same noise in the same order
    clean = []
    for _ in range(ex['steps']):
        g_w = rng.normal(size=shape).astype(dtype)
        g_q = rng.normal(size=q_shape).astype(dtype)
        grads = [mx.nd.array(g_q, dtype=dtype),
                 mx.nd.array(_poison(g_w, lay.frozen), dtype=dtype)]
        if ex['driver'] == 'updater':
            updater([0, 1], grads, [q, weight])
        else:
            for i, w, g in zip((0, 1), (q, weight), grads, strict=True):
                opt.update_multi_precision(i, w, g, states[i])
        clean.append((g_q, g_w))
    states = updater.states if ex['driver'] == 'updater' else states

    w_end = weight.asnumpy()
    assert_same_bits(w_end[lay.frozen], w_start[lay.frozen], 'frozen weight entries')
    if empty:
        assert_same_bits(w_end, w_start, 'a fully frozen parameter')
        for k, a in enumerate(state_arrays(states[1]) if s_start is not None else []):
            assert_same_bits(a, s_start[k], 'state[%d] of a fully frozen parameter' % k)
        return
    mx.random.seed(ex['seed'])
    for g_q, g_w in clean:
        replay.step(mx.nd.array(g_q, dtype=dtype),
                    mx.nd.array(lay.block(g_w), dtype=dtype))
    assert_same_bits(lay.block(w_end), replay.w, 'trainable block vs the wrapped optimizer')
    assert_same_bits(q, replay.q, 'the unmasked companion parameter')
    got, want = state_arrays(states[1]), state_arrays(replay.states[1])
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        a = a.asnumpy()
        if s_start is not None and a.shape != b.shape:
            frozen = lay.frozen_in(a.shape)
            assert_same_bits(a[frozen], s_start[k][frozen], 'state[%d] frozen entries' % k)
            a = lay.block(a)
        assert_same_bits(a, b, 'state[%d] vs the wrapped optimizer' % k)


def _copy_state(state, fn):
    if isinstance(state, mx.nd.NDArray):
        a = state.asnumpy()
        return mx.nd.array(fn(a), dtype=a.dtype)
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(s, fn) for s in state)
    return state


@given(st.data())
def test_helpers_and_plain_data_give_the_same_scales(data):
    """Every drawn mask resolves to the scales computed here from what was drawn."""
    ndim = data.draw(st.sampled_from([1, 2, 3]))
    shape = tuple(data.draw(st.integers(1, 7)) for _ in range(ndim))
    mask, rows, cols = data.draw(masks(shape, fractions=True))
    got_rows, got_cols = mask.resolve(shape, 'w')
    np.testing.assert_array_equal(np.ones(shape[0]) if got_rows is None else got_rows, rows)
    if len(shape) > 1:
        want = np.ones(shape[1]) if cols is None else cols
        np.testing.assert_array_equal(np.ones(shape[1]) if got_cols is None else got_cols, want)
    else:
        assert got_cols is None


@given(st.data())
def test_a_trained_entry_really_moves(data):
    """Guard against a vacuous oracle: with SGD and a non-zero gradient every entry with a
    positive scale moves (SGD's step is lr * g, far above float32 rounding here)."""
    shape = (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5)))
    mask, rows, cols = data.draw(masks(shape, fractions=True))
    cols = np.ones(shape[1]) if cols is None else cols
    lay = Layout('p_weight', shape, mask, scales=(rows, cols))
    opt = mo.Masked(base='sgd', learning_rate=0.5, param_idx2name={0: 'p_weight'},
                    masks={'p_weight': mask})
    w0 = np.full(shape, 0.25, dtype=np.float32)
    w = mx.nd.array(w0)
    opt.update(0, w, mx.nd.ones(shape), opt.create_state(0, w))
    moved = w.asnumpy() != w0
    # 1 - s rounds to 1 in float32 for s below ~6e-8: such an entry cannot visibly move.
    assert moved[lay.scale >= 1e-6].all()
    assert not moved[lay.frozen].any()
    assert changed_bits(w, w0) == moved.sum()
