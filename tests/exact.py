"""The machinery of the exactness tests: parameters, poisoned gradients, the masked run and its
oracle (the wrapped optimizer alone on each block), and the checks between them.

Used by ``test_exact_all_optimizers`` (every registered optimizer), ``test_properties``,
``test_unmasked`` and ``test_mixed_dtypes``; the optimizers and their settings come from
``optim_db``.
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, changed_bits, state_arrays
from optim_db import CONFIGS, ONLY_2D

import masked_opt as mo

STEPS = 50

# Global settings: plain, and the rest of the contract (wd, clip_gradient, rescale_grad, a
# learning-rate schedule). lr_scheduler is a flag because schedulers are stateful: each run
# builds its own.
HYPERS = {
    'plain': {'wd': 0.0},
    'wd_clip_schedule': {'wd': 1e-3, 'clip_gradient': 0.5, 'lr_scheduler': True},
}

# The parameters trained together in every run: (name, shape, mask). Names end in '_weight'
# so that MXNet applies wd to them (it zeroes wd for other names when it knows them).
PARAMS = (
    ('rows_weight', (7, 4), mo.train_rows_from(4)),
    ('cols_weight', (5, 6), mo.train_cols([1, 4])),
    ('both_weight', (6, 5, 2), mo.freeze_rows([1, 2]) & mo.freeze_cols([0, 3])),
    ('vec_weight', (9,), mo.as_mask({'rows': [0, 0, 1, 0, 0, 1, 0, 0, 1]})),
)

POISON = (np.nan, np.inf, -np.inf)


# ---------------------------------------------------------------------------------------------
# Building blocks shared with test_properties.py
# ---------------------------------------------------------------------------------------------
def params_for(name, params=PARAMS):
    """The parameters an optimizer can take at all (GroupAdaGrad: 2-D only)."""
    if name in ONLY_2D:
        return tuple(p for p in params if len(p[1]) == 2)
    return tuple(params)


def optimizer_kwargs(config, hyper, dtype, lr=0.05):
    """Constructor keyword arguments for one run, with a fresh scheduler if asked for."""
    kwargs = dict(config, learning_rate=lr, rescale_grad=0.5)
    hyper = dict(hyper)
    if hyper.pop('lr_scheduler', False):
        kwargs['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=10, factor=0.8,
                                                                 base_lr=lr)
    kwargs.update(hyper)
    if np.dtype(dtype) == np.float16:
        kwargs['multi_precision'] = True
    return kwargs


class Layout:
    """Where one parameter's mask puts its trainable block, in numpy terms."""

    def __init__(self, name, shape, mask, scales=None):
        """``scales=(rows, cols)`` gives the expected scales directly (None: all ones);
        otherwise they come from ``mask.resolve``."""
        self.name, self.shape = name, tuple(shape)
        if scales is not None:
            rows, cols = scales
        else:
            rows, cols = (None, None) if mask is None else mask.resolve(self.shape, name)
        self.rows = np.ones(self.shape[0]) if rows is None else rows
        self.cols = None
        if len(self.shape) > 1:
            self.cols = np.ones(self.shape[1]) if cols is None else cols
        scale = self.rows.reshape((-1,) + (1,) * (len(self.shape) - 1))
        if self.cols is not None:
            scale = scale * self.cols.reshape((1, -1) + (1,) * (len(self.shape) - 2))
        self.scale = np.broadcast_to(scale, self.shape)   # s = r[i] * c[j] per entry
        self.row_ids = np.flatnonzero(self.rows)
        self.col_ids = None if self.cols is None else np.flatnonzero(self.cols)
        self.masked = mask is not None

    @property
    def frozen(self):
        return self.scale == 0

    def block(self, a):
        """The trainable block of an array shaped like the weight (or like a per-row state)."""
        a = np.asarray(a)
        if a.shape == self.shape and self.col_ids is not None:
            return a[np.ix_(self.row_ids, self.col_ids)]
        if a.shape[:1] == self.shape[:1]:
            # The weight of a 1-D parameter, or a state with one entry per row (GroupAdaGrad).
            return a[self.row_ids]
        raise AssertionError('%s: no rule for a state of shape %s beside a weight of shape %s'
                             % (self.name, a.shape, self.shape))

    def frozen_in(self, a_shape):
        """Entries of an array (weight- or row-shaped) that only frozen weight entries use."""
        if tuple(a_shape) == self.shape:
            return self.frozen
        if tuple(a_shape[:1]) == self.shape[:1]:
            per_row = self.frozen.reshape(self.shape[0], -1).all(axis=1)
            return np.broadcast_to(per_row.reshape((-1,) + (1,) * (len(a_shape) - 1)), a_shape)
        raise AssertionError('%s: no rule for a state of shape %s' % (self.name, a_shape))


def make_grads(layouts, steps, dtype, seed):
    """Clean gradients, and poisoned copies (NaN/±Inf at frozen entries), for every step.

    Returns two lists with one numpy array of shape ``(steps,) + shape`` per parameter.
    """
    rng = np.random.RandomState(seed)
    clean, poisoned = [], []
    for lay in layouts:
        g = rng.normal(size=(steps,) + lay.shape).astype(dtype)
        p = g.copy()
        frozen = np.broadcast_to(lay.frozen, p.shape)
        p[frozen] = np.resize(np.array(POISON, dtype=dtype), int(frozen.sum()))
        clean.append(g)
        poisoned.append(p)
    return clean, poisoned


def to_nd(per_param):
    """One NDArray per parameter (one host copy each); ``a[step]`` is a view of one step."""
    return [mx.nd.array(a, dtype=a.dtype) for a in per_param]


def run_masked(opt, weights, grads, driver, states=None):
    """Train ``weights`` (NDArrays, in place) with a masked optimizer; return the states.

    ``grads`` holds one NDArray of shape ``(steps,) + shape`` per parameter.
    """
    indices = list(range(len(weights)))
    steps = grads[0].shape[0]
    if driver == 'updater':
        updater = mx.optimizer.get_updater(opt)
        if states is not None:
            # As after Trainer.load_states / Module.load_optimizer_states.
            updater.states = states
            updater.states_synced = dict.fromkeys(states, True)
        for t in range(steps):
            updater(indices, [g[t] for g in grads], weights)
        return updater.states
    assert driver == 'direct'
    if states is None:
        states = {i: opt.create_state_multi_precision(i, w) for i, w in enumerate(weights)}
    for t in range(steps):
        for i, w, g in zip(indices, weights, grads, strict=True):
            opt.update_multi_precision(i, w, g[t], states[i])
    return states


def update_alone(opt, index, weight, grad, state):
    """One parameter's step as MXNet's Updater makes it: one-element lists when the
    optimizer aggregates (SGD, LARS, LAMB), plain arguments otherwise."""
    if opt.aggregate_num > 0:
        opt.update_multi_precision([index], [weight], [grad], [state])
    else:
        opt.update_multi_precision(index, weight, grad, state)


def run_reference(opt, weights, grads, states=None, driver='direct'):
    """The oracle: the unwrapped optimizer on the blocks, called as the masked one was.

    ``driver='updater'``: through MXNet's Updater, i.e. the same calls (order, multi-tensor
    groups) as the unwrapped optimizer alone would get -- LARS corrects momentum per call.
    ``'direct'``: each parameter updated alone, in index order.
    """
    if driver == 'updater':
        return run_masked(opt, weights, grads, 'updater', states=states)
    if states is None:
        states = {i: opt.create_state_multi_precision(i, w) for i, w in enumerate(weights)}
    for t in range(grads[0].shape[0]):
        for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
            update_alone(opt, i, w, g[t], states[i])
    return states


def block_inputs(layouts, arrays_, steps=False):
    """Trainable blocks of full-size numpy arrays (masked params); unmasked ones whole.

    With ``steps=True`` each array has a leading axis of steps, kept as it is.
    """
    def block(lay, a):
        if not lay.masked:
            return np.asarray(a)
        return np.stack([lay.block(x) for x in a]) if steps else lay.block(a)
    return [block(lay, a) for lay, a in zip(layouts, arrays_, strict=True)]


def check_against_reference(layouts, w_start, w_masked, s_masked, w_ref, s_ref, full_state,
                            s_start=None):
    """The whole C1 + "its own parameter" check for one run (see the module docstring)."""
    for i, lay in enumerate(layouts):
        if not lay.masked:
            continue
        w = w_masked[i].asnumpy()
        assert_same_bits(w[lay.frozen], w_start[i][lay.frozen], '%s frozen weight' % lay.name)
        assert_same_bits(lay.block(w), w_ref[i], '%s trainable block vs oracle' % lay.name)
        assert changed_bits(lay.block(w), lay.block(w_start[i])) > 0, (
            '%s: the trainable block did not move in %d steps' % (lay.name, STEPS))
        got, want = state_arrays(s_masked[i]), state_arrays(s_ref[i])
        assert len(got) == len(want), '%s: state has %d arrays, oracle %d' % (
            lay.name, len(got), len(want))
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            a = a.asnumpy()
            what = '%s state[%d]' % (lay.name, k)
            if full_state and a.shape != b.shape:
                frozen = lay.frozen_in(a.shape)
                assert_same_bits(a[frozen], s_start[i][k][frozen], what + ' frozen entries')
                a = lay.block(a)
            assert_same_bits(a, b, what + ' vs oracle')
        if not full_state:
            # The state exists only for the block (C6): nothing of the full size.
            assert all(a.shape != lay.shape or lay.scale.all() for a in got), (
                '%s: a state array has the full shape %s' % (lay.name, lay.shape))


def cases(known_bugs=None):
    for name, configs in sorted(CONFIGS.items()):
        for k, config in enumerate(configs):
            marks = ()
            if known_bugs and name in known_bugs:
                marks = known_bugs[name]
            yield pytest.param(name, config, id='%s-%d' % (name, k), marks=marks)


# GroupAdaGrad's state has one entry per row, shape (V, 1). Handed over full-size, it is cut by
# rows like the weight under a row mask, and used whole under a column mask (every row trains).
# With multi_precision the float32 master copy has the weight's shape, and a column mask then
# cannot split the (V, 1) array beside it: refused with a TypeError before anything is written
# (it used to cut the array along columns and scatter it out of bounds: heap corruption).
PER_ROW_STATE = {'groupadagrad'}


def quiet():
    # float16 without multi_precision and LBSGD's logging are not what these tests look at.
    warnings.simplefilter('ignore', UserWarning)


def blend(new, old, s, dtype):
    """The contract in numpy: ``new - (1 - s) * (new - old)``, in ``dtype`` arithmetic."""
    keep = (1.0 - s).astype(dtype)   # 1 - s in float64, rounded once, as masked_opt stores it
    return new - keep * (new - old)
