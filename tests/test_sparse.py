"""C5: row_sparse gradients stay sparse -- lazy semantics, bit for bit, for every optimizer.

With a row_sparse gradient (``Embedding(sparse_grad=True)``), masked_opt updates only the rows
that are both in the batch and trainable: it hands the wrapped optimizer a dense mini-block of
those rows (trainable columns only) with their state rows, whatever the optimizer, and writes
them back. The tests check, on the bits:

- the reference loop: the same wrapped optimizer, run by hand on a numpy copy of the trainable
  block, each step on the rows of the block present in the batch (their weights and state rows
  as fresh NDArrays), gives the same weights and states (``test_lazy_rows_equal_reference_loop``,
  hypothesis over every registered optimizer, hyper-parameters, masks, shapes and batches);
- frozen entries keep their bits although the gradient holds NaN/+Inf/-Inf there; trainable
  rows absent from every batch keep their bits, weights and state rows; trainable rows of a
  batch move;
- MXNet's own lazy kernels are an oracle for SGD (momentum) and Adam: the trainable block as a
  parameter of its own, updated with a row_sparse gradient of the present trainable rows
  (``test_lazy_rows_equal_mxnet_lazy_kernels``);
- the three ways a user gets row_sparse gradients: Gluon ``nn.Embedding(sparse_grad=True)``,
  Module ``sym.Embedding(sparse_grad=True)`` and ``contrib.nn.SparseEmbedding`` (row_sparse
  weight, updated on the kvstore);
- the host reads of the sparse path are pinned (``test_host_reads_are_pinned``): the row ids
  once per masked parameter per step, nothing else for a dense weight, nothing at all on the
  dense-gradient path.
"""
import collections
import contextlib
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, map_state, rsp, state_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from models import GluonMF, forum_mf, mf_iter, ratings
from mxnet import autograd, gluon
from mxnet.base import _LIB
from optim_db import MULTI_PRECISION, NO_WD, NOT_WRAPPED, ONLY_2D, SPARSE_CONFIGS, case_ids

import masked_opt as mo

NAME = 'table_weight'   # ends in _weight: MXNet applies wd to it
POISON = (np.nan, np.inf, -np.inf)

# Every optimizer MXNet 1.9.1 registers, with the settings that change its update rule (the
# table in optim_db); test_every_registered_optimizer_is_covered keeps it complete.
CASES = SPARSE_CONFIGS
NOT_WRAPPED = set(NOT_WRAPPED)
CASE_IDS = case_ids(CASES)


def _examples(divisor):
    """A share of the profile's examples (ci: bounded, dev: many) for one parametrized case."""
    return max(3, settings.default.max_examples // divisor)


def test_every_registered_optimizer_is_covered():
    registered = set(mx.optimizer.Optimizer.opt_registry)
    assert registered - NOT_WRAPPED == set(CASES), (
        'optimizers registered but not covered here: %s; covered but not registered: %s'
        % (sorted(registered - NOT_WRAPPED - set(CASES)), sorted(set(CASES) - registered)))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def call_like_updater(opt, weight, grad, state):
    """One update as MXNet's Updater makes it: lists when the optimizer aggregates."""
    if opt.aggregate_num > 0:
        opt.update_multi_precision([0], [weight], [grad], [state])
    else:
        opt.update_multi_precision(0, weight, grad, state)


class Setting:
    """One drawn case: shape, mask, batches (row ids and gradient rows), clean and poisoned."""

    def __init__(self, shape, rows, cols, batches, dtype, seed):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.rows = rows                                   # float64 scales (V,)
        self.cols = np.ones(shape[1]) if cols is None else cols
        self.mask = mo.as_mask({'rows': rows, 'cols': cols})
        self.R, self.C = np.flatnonzero(self.rows), np.flatnonzero(self.cols)
        rng = np.random.RandomState(seed)
        self.w0 = rng.uniform(-1, 1, shape).astype(dtype)
        self.batches = []
        for ids in batches:
            clean = rng.normal(size=(len(ids), shape[1])).astype(dtype)
            poisoned = clean.copy()
            frozen = (self.rows[ids][:, None] * self.cols[None, :]) == 0
            poisoned[frozen] = np.resize(np.array(POISON, dtype=dtype), int(frozen.sum()))
            self.batches.append((np.asarray(ids, dtype=np.int64), clean, poisoned))

    @property
    def frozen(self):
        return (self.rows[:, None] * self.cols[None, :]) == 0

    @property
    def keep(self):
        """1 - s on the block, in the weight's dtype (what the blend multiplies by)."""
        s = self.rows[self.R][:, None] * self.cols[self.C][None, :]
        return (1.0 - s).astype(self.dtype)

    @property
    def fractional(self):
        return bool(np.any(self.keep != 0))


def run_masked(name, kwargs, setting, driver):
    """Masked optimizer on the full table with the poisoned row_sparse gradients."""
    opt = mo.Masked(base=name, masks={NAME: setting.mask}, param_idx2name={0: NAME}, **kwargs)
    weight = mx.nd.array(setting.w0, dtype=setting.dtype)
    grads = [rsp(ids, poisoned, setting.shape, setting.dtype)
             for ids, _, poisoned in setting.batches]
    mx.random.seed(11)   # SGLD draws noise: the same stream as the reference loop
    if driver == 'updater':
        updater = mx.optimizer.get_updater(opt)
        for g in grads:
            updater([0], [g], [weight])
        state = updater.states.get(0)
    else:
        state = opt.create_state_multi_precision(0, weight)
        for g in grads:
            opt.update_multi_precision(0, weight, g, state)
    return weight.asnumpy(), [a.asnumpy() for a in state_arrays(state)]


def run_unmasked(name, kwargs, setting, driver):
    """The wrapped optimizer alone on the full table (no mask), same gradients."""
    opt = mx.optimizer.create(name, param_idx2name={0: NAME}, **kwargs)
    weight = mx.nd.array(setting.w0, dtype=setting.dtype)
    mx.random.seed(11)
    state = opt.create_state_multi_precision(0, weight)
    for ids, clean, _ in setting.batches:
        g = rsp(ids, clean, setting.shape, setting.dtype)
        if driver == 'updater':
            call_like_updater(opt, weight, g, state)
        else:
            opt.update_multi_precision(0, weight, g, state)
    return weight.asnumpy(), [a.asnumpy() for a in state_arrays(state)]


def run_reference(name, kwargs, setting):
    """The plain reference loop: the wrapped optimizer on the present trainable rows only.

    The trainable block lives in numpy. Each step takes the block rows present in the batch,
    hands their weights, clean gradient (trainable columns) and state rows to the optimizer as
    fresh NDArrays, blends fractional scales as ``new - (1 - s) * (new - old)`` and writes
    the rows back. Rows not in the batch are not touched: lazy semantics by construction.
    """
    opt = mx.optimizer.create(name, param_idx2name={0: NAME}, **kwargs)
    dt = setting.dtype
    block = setting.w0[np.ix_(setting.R, setting.C)].copy()
    if block.size == 0:
        return block, []   # a fully frozen parameter has no state (nothing to update)
    state = opt.create_state_multi_precision(0, mx.nd.array(block, dtype=dt))
    arrays = [a.asnumpy() for a in state_arrays(state)]
    keep = setting.keep
    # A batch without a trainable row: MXNet alone still calls the optimizer (an empty
    # row_sparse gradient), so it updates a one-row stand-in whose result is discarded: the
    # count, Nadam's schedule and SGLD's noise stream move as they do with the optimizer alone.
    stand_in = [mx.nd.zeros((1,) + setting.shape[1:], dtype=dt) for _ in range(2)]
    stand_in.append(opt.create_state_multi_precision(0, stand_in[0]))
    mx.random.seed(11)
    for ids, clean, _ in setting.batches:
        present = setting.rows[ids] > 0
        if not present.any():
            call_like_updater(opt, *stand_in)
            continue
        pos = np.searchsorted(setting.R, ids[present])
        old = block[pos]
        w = mx.nd.array(old, dtype=dt)
        g = mx.nd.array(clean[present][:, setting.C], dtype=dt)
        rows = iter([mx.nd.array(a[pos], dtype=a.dtype) for a in arrays])
        s = map_state(lambda _, rows=rows: next(rows), state)
        call_like_updater(opt, w, g, s)
        new = w.asnumpy()
        if setting.fractional:
            new = new - (new - old) * keep[pos]
        block[pos] = new
        for a, updated in zip(arrays, state_arrays(s), strict=True):
            a[pos] = updated.asnumpy()
    return block, arrays


def _quiet():
    warnings.simplefilter('ignore', UserWarning)   # float16 / LBSGD chatter


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------
@st.composite
def settings_for(draw, name, fractional=True):
    n_rows = draw(st.integers(3, 16))
    dim = draw(st.integers(1, 4)) if name not in ONLY_2D else draw(st.integers(1, 4))
    kind = draw(st.sampled_from(['from', 'train', 'freeze', 'scale'] if fractional
                                else ['from', 'train', 'freeze']))
    if kind == 'from':
        rows = np.zeros(n_rows)
        rows[draw(st.integers(0, n_rows - 1)):] = 1.0
    elif kind == 'scale':
        rows = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                                      min_size=n_rows, max_size=n_rows)))
    else:
        chosen = np.zeros(n_rows, dtype=bool)
        chosen[draw(st.lists(st.integers(0, n_rows - 1), unique=True, max_size=n_rows))] = True
        rows = (chosen if kind == 'train' else ~chosen).astype(np.float64)
    cols = None
    if dim > 1 and draw(st.booleans()):
        cols = np.zeros(dim)
        cols[draw(st.lists(st.integers(0, dim - 1), unique=True, min_size=1,
                           max_size=dim - 1))] = 1.0
    n_steps = draw(st.integers(2, 5))
    batches = [sorted(draw(st.lists(st.integers(0, n_rows - 1), unique=True,
                                    max_size=n_rows))) for _ in range(n_steps)]
    seed = draw(st.integers(0, 2 ** 16))
    return n_rows, dim, rows, cols, batches, seed


@st.composite
def hypers_for(draw, name):
    hyper = {'learning_rate': draw(st.sampled_from([0.05, 0.2])),
             'rescale_grad': draw(st.sampled_from([1.0, 0.5])),
             'wd': 0.0 if name in NO_WD else draw(st.sampled_from([0.0, 1e-3]))}
    clip = draw(st.sampled_from([None, 0.5]))
    if clip is not None:
        hyper['clip_gradient'] = clip
    return hyper


# ---------------------------------------------------------------------------------------------
# Every optimizer: lazy semantics, bit for bit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name,config', CASE_IDS)
def test_lazy_rows_equal_reference_loop(name, config):
    """Weights and states equal the reference loop; frozen, absent and moved rows checked."""
    _quiet()

    @settings(max_examples=_examples(5))
    @given(drawn=settings_for(name), hyper=hypers_for(name),
           driver=st.sampled_from(['updater', 'direct']), half=st.booleans())
    def check(drawn, hyper, driver, half):
        n_rows, dim, rows, cols, batches, seed = drawn
        dtype = np.float16 if half and name in MULTI_PRECISION else np.float32
        kwargs = dict(config, **hyper)
        if dtype == np.float16:
            kwargs['multi_precision'] = True
            if np.any((rows > 0) & (rows < 1)):
                rows = np.ceil(rows)   # fractions with multi_precision: see test_fraction.py
        setting = Setting((n_rows, dim), rows, cols, batches, dtype, seed)
        if all(x is None for x in setting.mask.resolve(setting.shape, NAME)):
            # A mask that trains everything leaves the parameter to the wrapped optimizer
            # alone (C4): MXNet's own row_sparse semantics for it, bit for bit -- and its own
            # failures (AdaGrad has no row_sparse kernel with wd > 0).
            try:
                plain, plain_states = run_unmasked(name, kwargs, setting, driver)
            except mx.base.MXNetError as alone:
                with pytest.raises(mx.base.MXNetError, match='Operator not implemented'):
                    run_masked(name, kwargs, setting, driver)
                assert 'Operator not implemented' in str(alone)
                return
            weight, states = run_masked(name, kwargs, setting, driver)
            assert_same_bits(plain, weight, 'all-trainable mask vs the optimizer alone')
            for k, (a, b) in enumerate(zip(plain_states, states, strict=True)):
                assert_same_bits(a, b, 'state %d vs the optimizer alone' % k)
            return
        weight, states = run_masked(name, kwargs, setting, driver)
        block, ref_states = run_reference(name, kwargs, setting)

        assert_same_bits(setting.w0[setting.frozen], weight[setting.frozen], 'frozen entries')
        assert_same_bits(block, weight[np.ix_(setting.R, setting.C)], 'block vs reference')
        assert len(states) == len(ref_states)
        for k, (got, want) in enumerate(zip(states, ref_states, strict=True)):
            assert_same_bits(want, got, 'state array %d vs reference' % k)

        # Lazy semantics, stated directly: trainable rows never in a batch keep their bits,
        # and so do their state rows (states start at their created values, the reference's).
        seen = np.zeros(n_rows, dtype=bool)
        for ids, _, _ in setting.batches:
            seen[ids] = True
        absent = np.flatnonzero((rows > 0) & ~seen)
        assert_same_bits(setting.w0[absent], weight[absent], 'trainable rows never in a batch')
        # Trainable rows of a batch moved (the comparison means something). Not asked of
        # float16 weights: a small step moves the float32 master copy but may round away;
        # nor of every row under LARS, whose trust ratio (eta 0.001) can shrink a row's step
        # below half an ulp: there, some row must move.
        moved = np.flatnonzero((rows == 1) & seen)
        if moved.size and setting.C.size and dtype == np.float32:
            w_moved = weight[np.ix_(moved, setting.C)]
            w_start = setting.w0[np.ix_(moved, setting.C)]
            row_moved = (as_bits(w_moved) != as_bits(w_start)).any(axis=1)
            assert (row_moved.any() if name == 'lars' else row_moved.all()), \
                'a trainable row of a batch did not move'

    check()


def test_nan_gradient_at_frozen_rows_changes_nothing():
    """A batch of frozen rows only, all NaN: nothing moves, not even a state (Adam, wd)."""
    shape = (8, 3)
    opt = mo.Masked(base='adam', learning_rate=0.1, wd=1e-3,
                    masks={NAME: mo.train_rows_from(5)}, param_idx2name={0: NAME})
    weight = mx.nd.array(np.random.RandomState(0).normal(size=shape))
    state = opt.create_state(0, weight)
    start = weight.asnumpy()
    for _ in range(3):
        opt.update(0, weight, rsp([0, 2, 4], np.full((3, 3), np.nan), shape, np.float32),
                   state)
    assert_same_bits(start, weight, 'weight')
    for a in state_arrays(state):
        assert_same_bits(np.zeros(a.shape, np.float32), a, 'state')


# ---------------------------------------------------------------------------------------------
# Oracle: MXNet's own lazy kernels on the block as a separate parameter
# ---------------------------------------------------------------------------------------------
# (optimizer, settings, exact?). MXNet computes the lazy update with its row_sparse kernels
# (SGDMomDnsRspDnsKernel, AdamDnsRspDnsKernel); masked_opt hands the wrapped optimizer a dense
# mini-block, so the dense kernels run. Where the two kernels evaluate the same formula in the
# same order, the bits agree; where they do not, they differ in the last bit:
# - SGD without momentum: the dense path is SGD's aggregated multi_sgd_update, which rounds
#   (1 - lr*wd)*w - lr*rescale*g differently from sgd_update's row_sparse kernel;
# - Adam with clip_gradient: the dense kernel (an mshadow expression) and the row_sparse kernel
#   round the clipped squared gradient of the variance differently.
# Those cases are compared to within ULPS float32 ulp per step of the weight's scale; a wrong
# row, a missed or doubled step or wd on an absent row is orders of magnitude larger.
ORACLE = [
    pytest.param('sgd', {'momentum': 0.9, 'wd': 1e-3}, True, id='sgd-mom-wd'),
    pytest.param('sgd', {'momentum': 0.9, 'wd': 1e-3, 'clip_gradient': 0.5}, True,
                 id='sgd-mom-wd-clip'),
    pytest.param('adam', {'wd': 1e-3}, True, id='adam-wd'),
    pytest.param('adam', {}, True, id='adam'),
    pytest.param('sgd', {'wd': 1e-3}, False, id='sgd-wd'),
    pytest.param('adam', {'wd': 1e-3, 'clip_gradient': 0.5}, False, id='adam-wd-clip'),
]
ULPS = 4


def _lazy_oracle(name, kwargs, setting):
    """The block as a parameter of its own, updated by MXNet with a row_sparse gradient."""
    opt = mx.optimizer.create(name, param_idx2name={0: NAME}, lazy_update=True, **kwargs)
    block = mx.nd.array(setting.w0[np.ix_(setting.R, setting.C)])
    state = opt.create_state(0, block)
    for ids, clean, _ in setting.batches:
        present = setting.rows[ids] > 0
        if not present.any():
            opt._update_count(0)
            continue
        pos = np.searchsorted(setting.R, ids[present])
        opt.update(0, block, rsp(pos, clean[present][:, setting.C], block.shape, np.float32),
                   state)
    return block.asnumpy(), [a.asnumpy() for a in state_arrays(state)]


@pytest.mark.parametrize('name,params,exact', ORACLE)
@pytest.mark.parametrize('mask', ['rows', 'cols', 'both'])
def test_lazy_rows_equal_mxnet_lazy_kernels(name, params, exact, mask):
    rng = np.random.RandomState(5)
    n_rows, dim, steps = 40, 6, 30
    rows = np.ones(n_rows)
    cols = None
    if mask in ('rows', 'both'):
        rows[:25] = 0.0
    if mask in ('cols', 'both'):
        cols = np.array([0., 1., 0., 0., 1., 1.])
    batches = [np.unique(rng.randint(0, n_rows, 12)) for _ in range(steps)]
    setting = Setting((n_rows, dim), rows, cols, batches, np.float32, seed=6)
    kwargs = dict(params, learning_rate=0.1, rescale_grad=0.5)
    weight, states = run_masked(name, kwargs, setting, 'direct')
    block, oracle_states = _lazy_oracle(name, kwargs, setting)
    got = weight[np.ix_(setting.R, setting.C)]
    assert_same_bits(setting.w0[setting.frozen], weight[setting.frozen], 'frozen entries')
    if exact:
        assert_same_bits(block, got, 'block vs MXNet lazy update')
        for k, (a, b) in enumerate(zip(oracle_states, states, strict=True)):
            assert_same_bits(a, b, 'state %d vs MXNet lazy update' % k)
    else:
        tol = ULPS * steps * np.finfo(np.float32).eps * np.abs(block).max()
        assert np.abs(got.astype(np.float64) - block).max() <= tol
    assert np.abs(got - setting.w0[np.ix_(setting.R, setting.C)]).max() > 1e-3   # it trained


def test_oracle_tolerance_catches_a_real_difference():
    """Control: one missed step (the last batch dropped) is far outside the tolerance."""
    rng = np.random.RandomState(5)
    rows = np.r_[np.zeros(25), np.ones(15)]
    batches = [np.unique(rng.randint(0, 40, 12)) for _ in range(30)]
    kwargs = {'wd': 1e-3, 'learning_rate': 0.1, 'rescale_grad': 0.5}
    full = Setting((40, 6), rows, None, batches, np.float32, seed=6)
    short = Setting((40, 6), rows, None, batches[:-1], np.float32, seed=6)
    block, _ = _lazy_oracle('sgd', kwargs, full)
    weight, _ = run_masked('sgd', kwargs, short, 'direct')
    tol = ULPS * 30 * np.finfo(np.float32).eps * np.abs(block).max()
    assert np.abs(weight[25:].astype(np.float64) - block).max() > 10 * tol


# ---------------------------------------------------------------------------------------------
# The three ways to get row_sparse gradients
# ---------------------------------------------------------------------------------------------
FRAMEWORK_OPTIMIZERS = [
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.05, 'wd': 1e-3}, id='adam-wd'),
    pytest.param('rmsprop', {'learning_rate': 0.01, 'wd': 1e-3}, id='rmsprop-wd'),
    pytest.param('lamb', {'learning_rate': 0.05, 'wd': 1e-3}, id='lamb-wd'),
]
N_USERS, N_ITEMS, N_OLD, DIM, BATCH, STEPS = 30, 40, 28, 4, 6, 5


def _batches(seed=1):
    """Few, small batches: many rows of each table are never seen (their bits must stay)."""
    rng = np.random.RandomState(seed)
    return [(mx.nd.array(rng.randint(0, N_USERS, BATCH)),
             mx.nd.array(rng.randint(0, N_ITEMS, BATCH))) for _ in range(STEPS)]


def _check_rows(start, end, trainable, seen, what):
    """Frozen rows and trainable rows never seen keep their bits; seen trainable rows move."""
    frozen = ~trainable
    assert_same_bits(start[frozen], end[frozen], '%s: frozen rows' % what)
    assert_same_bits(start[trainable & ~seen], end[trainable & ~seen],
                     '%s: trainable rows never in a batch' % what)
    moved = (as_bits(start) != as_bits(end)).any(axis=1)
    assert moved[trainable & seen].all(), '%s: a trainable row of a batch did not move' % what


def _seen(batches, k, n):
    out = np.zeros(n, dtype=bool)
    for b in batches:
        out[b[k].asnumpy().astype(int)] = True
    return out


def _replay(name, params, setting_rows, setting_cols, w0, grads):
    """The reference loop fed the row_sparse gradients a run recorded."""
    setting = Setting(w0.shape, setting_rows, setting_cols, [], w0.dtype, 0)
    setting.w0 = w0
    setting.batches = [(ids, vals, vals) for ids, vals in grads]
    return run_reference(name, dict(params, rescale_grad=1.0 / BATCH), setting)


@pytest.mark.parametrize('base,params', FRAMEWORK_OPTIMIZERS)
def test_gluon_embedding_sparse_grad(base, params):
    """Gluon ``nn.Embedding(sparse_grad=True)``: new book rows and a user latent split.

    The gradients of each step are recorded and replayed into the reference loop: the
    trainable blocks after Trainer.step equal it bit for bit, states included.
    """
    _quiet()
    net = GluonMF(N_USERS, N_ITEMS, DIM, sparse_grad=True)
    net.initialize(mx.init.Uniform(0.5))
    start = {k: p.data().asnumpy() for k, p in net.collect_params().items()}
    masks = {net.book.weight: mo.train_rows_from(N_OLD), net.user.weight: mo.train_cols([3])}
    trainer = gluon.Trainer(net.collect_params(), 'masked', dict(params, base=base, masks=masks))
    batches = _batches()
    recorded = {'mf_user_weight': [], 'mf_book_weight': []}
    for member, book in batches:
        with autograd.record():
            loss = (net(member, book) ** 2).sum()
        loss.backward()
        for key in recorded:
            g = net.collect_params()[key].grad()
            assert g.stype == 'row_sparse'
            recorded[key].append((g.indices.asnumpy(), g.data.asnumpy()))
        trainer.step(BATCH)
    user = net.user.weight.data().asnumpy()
    book = net.book.weight.data().asnumpy()

    book_rows = np.arange(N_ITEMS) >= N_OLD
    _check_rows(start['mf_book_weight'], book, book_rows, _seen(batches, 1, N_ITEMS), 'book')
    assert_same_bits(start['mf_user_weight'][:, :3], user[:, :3], 'frozen user columns')
    seen_users = _seen(batches, 0, N_USERS)
    assert_same_bits(start['mf_user_weight'][~seen_users], user[~seen_users],
                     'user rows never in a batch')

    # Replay: parameter index -> state in the trainer's updater (indices in name order).
    states = trainer._updaters[0].states
    index = {p.name: i for i, p in enumerate(trainer._params)}
    for key, rows, cols, got in [
            ('mf_book_weight', book_rows.astype(float), None, book),
            ('mf_user_weight', np.ones(N_USERS), np.array([0., 0., 0., 1.]), user)]:
        block, ref_states = _replay(base, params, rows, cols, start[key], recorded[key])
        r, c = np.flatnonzero(rows), np.flatnonzero(np.ones(DIM) if cols is None else cols)
        assert_same_bits(block, got[np.ix_(r, c)], '%s block vs reference' % key)
        got_states = [a.asnumpy() for a in state_arrays(states[index[key]])]
        for k, (a, b) in enumerate(zip(ref_states, got_states, strict=True)):
            assert_same_bits(a, b, '%s state %d vs reference' % (key, k))


@pytest.mark.parametrize('base,params', FRAMEWORK_OPTIMIZERS[:2])
def test_module_symbol_embedding_sparse_grad(base, params):
    """Module + ``sym.Embedding(sparse_grad=True)``, fit with the masked optimizer by name."""
    _quiet()
    member, book, label = ratings(N_USERS, N_ITEMS, BATCH * STEPS, seed=4)
    it = mf_iter(member, book, label, BATCH)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM, sparse_grad=True),
                        data_names=['member', 'book'], label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(mx.init.Uniform(0.5))
    start = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
    mod.init_optimizer(optimizer='masked', optimizer_params=dict(params, base=base, masks={
        'book_embedding_weight': mo.train_rows_from(N_OLD)}))
    for batch in it:
        mod.forward_backward(batch)
        grad = mod._exec_group.grad_arrays[mod._exec_group.param_names.index(
            'book_embedding_weight')][0]
        assert grad.stype == 'row_sparse'
        mod.update()
    end = mod.get_params()[0]['book_embedding_weight'].asnumpy()
    seen = np.zeros(N_ITEMS, dtype=bool)
    seen[book.astype(int)] = True
    trainable = np.arange(N_ITEMS) >= N_OLD
    _check_rows(start['book_embedding_weight'], end, trainable, seen, 'book')
    # The state exists only for the new rows, and its rows never seen are still zero.
    index = mod._exec_group.param_names.index('book_embedding_weight')
    for a in state_arrays(mod._updater.states[index]):
        assert a.shape == (N_ITEMS - N_OLD, DIM)
        assert_same_bits(np.zeros_like(a.asnumpy()[~seen[N_OLD:]]),
                         a.asnumpy()[~seen[N_OLD:]], 'state rows never in a batch')


@pytest.mark.parametrize('base,params', FRAMEWORK_OPTIMIZERS[:2])
@pytest.mark.parametrize('mask', ['rows', 'rows+cols'])
def test_sparse_embedding_row_sparse_weight_on_kvstore(base, params, mask):
    """``contrib.nn.SparseEmbedding``: row_sparse weight, updated on the local kvstore."""
    _quiet()
    n, dim = 24, 4
    net = gluon.contrib.nn.SparseEmbedding(n, dim)
    net.initialize(mx.init.Uniform(0.5))
    spec = mo.train_rows_from(16) & (mo.train_cols([1, 2]) if mask == 'rows+cols' else mo.Mask())
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            dict(params, base=base, masks={net.weight: spec}), kvstore='local')
    all_rows = mx.nd.arange(n, dtype='int64')
    start = net.weight.row_sparse_data(all_rows).asnumpy()
    rng = np.random.RandomState(2)
    batches = [mx.nd.array(rng.choice(n, 5, replace=False)) for _ in range(STEPS)]
    for x in batches:
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(1)
    assert trainer._update_on_kvstore
    end = net.weight.row_sparse_data(all_rows).asnumpy()
    seen = np.zeros(n, dtype=bool)
    for x in batches:
        seen[x.asnumpy().astype(int)] = True
    trainable = np.arange(n) >= 16
    cols = [1, 2] if mask == 'rows+cols' else list(range(dim))
    frozen_cols = [j for j in range(dim) if j not in cols]
    _check_rows(start[:, cols], end[:, cols], trainable, seen, 'SparseEmbedding')
    assert_same_bits(start[:, frozen_cols], end[:, frozen_cols], 'frozen columns')


def test_gluon_nan_at_frozen_rows_changes_nothing():
    """NaN/Inf reach the gradient rows of frozen ids through the loss; nothing frozen moves."""
    net = gluon.nn.Embedding(10, 3, sparse_grad=True)
    net.initialize(mx.init.Uniform(0.5))
    trainer = gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 0.1, 'wd': 1e-3,
        'masks': {net.weight: mo.train_rows_from(6)}})
    start = net.weight.data().asnumpy()
    x = mx.nd.array([1, 3, 5, 7, 8])
    poison = mx.nd.array([[np.nan] * 3, [np.inf] * 3, [-np.inf] * 3, [1.0] * 3, [2.0] * 3])
    for _ in range(3):
        with autograd.record():
            loss = (net(x) * poison).sum()
        loss.backward()
        trainer.step(1)
    end = net.weight.data().asnumpy()
    assert_same_bits(start[:6], end[:6], 'frozen rows')
    assert_same_bits(start[9], end[9], 'trainable row never in a batch')
    assert np.isfinite(end).all() and (end[7:9] != start[7:9]).all()


# ---------------------------------------------------------------------------------------------
# Host reads of the sparse path, pinned
# ---------------------------------------------------------------------------------------------
# The C functions through which MXNet's frontend blocks on the device (the list of
# tests/gpu/sync_guard.py); counting them at the C boundary catches every Python route.
SYNC_CALLS = ('MXNDArraySyncCopyToCPU', 'MXNDArraySyncCopyFromCPU', 'MXNDArrayWaitToRead',
              'MXNDArrayWaitToWrite', 'MXNDArrayWaitAll', 'MXNDArraySyncCopyFromNDArray',
              'MXNDArrayGetDataNDArray', 'MXNDArrayGetAuxNDArray', 'MXNDArraySyncCheckFormat',
              'MXNDArraySave', 'MXNDArraySaveRawBytes')

# One step of one masked parameter with a row_sparse gradient and a dense weight: the row ids
# copied by MXNDArrayGetAuxNDArray (one engine round trip, queued behind the gradient's
# producer) and read on the host (grad.indices would wait_to_read first: a second wait).
PER_STEP_DENSE_WEIGHT = {'MXNDArrayGetAuxNDArray': 1, 'MXNDArraySyncCopyToCPU': 1}
# With a row_sparse weight (SparseEmbedding) MXNet offers no exact write into it, so its rows
# are read and written through a dense view of its storage, between to_dlpack_for_write's wait
# for pending reads and writes and a wait for the view's writes (update.storage_view).
_RSP = dict(PER_STEP_DENSE_WEIGHT, MXNDArrayWaitToWrite=1, MXNDArrayWaitToRead=1)
PER_STEP_RSP_WEIGHT = {'rows': _RSP, 'cols': _RSP}


@contextlib.contextmanager
def count_host_syncs(monkeypatch):
    """Count calls of each blocking C function inside the block."""
    counts = collections.Counter()
    with monkeypatch.context() as patch:
        for call in SYNC_CALLS:
            original = getattr(_LIB, call)

            def counting(*args, _call=call, _original=original):
                counts[_call] += 1
                return _original(*args)
            patch.setattr(_LIB, call, counting)
        yield counts


def _stepper(stype, grad_stype, mask, base, path):
    """Direct optimizer steps on one (30, 4) table; returns a function doing one step."""
    shape = (30, 4)
    rng = np.random.RandomState(0)
    weight = mx.nd.array(rng.normal(size=shape)).tostype(stype)
    spec = {'rows': mo.train_rows_from(20), 'cols': mo.train_cols([1, 2]),
            'both': mo.freeze_rows([3, 25]) & mo.train_cols([0, 3])}[mask]
    extra = {'momentum': 0.9} if base == 'sgd' else {}
    opt = mo.Masked(base=base, learning_rate=0.1, masks={NAME: spec}, param_idx2name={0: NAME},
                    **extra)
    opt.step_path = path
    state = opt.create_state_multi_precision(0, weight)

    def grad():
        if grad_stype == 'default':
            return mx.nd.array(rng.normal(size=shape))
        ids = np.unique(rng.randint(0, shape[0], 10))
        return rsp(ids, rng.normal(size=(ids.size, shape[1])), shape, np.float32)

    grads = [grad() for _ in range(4)]
    opt.update_multi_precision(0, weight, grads[0], state)   # builds the plan (uploads once)
    mx.nd.waitall()
    return lambda: [opt.update_multi_precision(0, weight, g, state) for g in grads[1:]]


@pytest.mark.parametrize('path', ['pure', 'native'])
@pytest.mark.parametrize('base', ['sgd', 'adam'])
@pytest.mark.parametrize('mask', ['rows', 'cols', 'both'])
def test_host_reads_are_pinned(monkeypatch, base, mask, path):
    """Dense gradient: no host sync at all. Row_sparse gradient: exactly the row-id read on
    the pure path; nothing on the native path (contiguous 'rows' and 'cols' blocks of a dense
    weight; 'both' is not contiguous and row_sparse weights are not served: pure)."""
    if path == 'native' and not mo.native.available():
        pytest.skip('native library not available: %s' % mo.native.status().reason)
    path = {'native': 'auto', 'pure': 'pure'}[path]   # 'auto': native where it serves
    steps = 3
    run = _stepper('default', 'default', mask, base, path)
    with count_host_syncs(monkeypatch) as counts:
        run()
    assert dict(counts) == {}, 'dense path synced: %s' % dict(counts)

    run = _stepper('default', 'row_sparse', mask, base, path)
    with count_host_syncs(monkeypatch) as counts:
        run()
    if path == 'auto' and mask != 'both':
        assert dict(counts) == {}, 'native path synced: %s' % dict(counts)
    else:
        assert dict(counts) == {k: steps * v for k, v in PER_STEP_DENSE_WEIGHT.items()}

    run = _stepper('row_sparse', 'row_sparse', mask, base, path)
    with count_host_syncs(monkeypatch) as counts:
        run()
    expected = PER_STEP_RSP_WEIGHT['rows' if mask == 'rows' else 'cols']
    assert dict(counts) == {k: steps * v for k, v in expected.items()}


def test_host_sync_counter_counts(monkeypatch):
    """Control: the counter sees an asnumpy and a sparse .indices read."""
    g = rsp([1], np.ones((1, 2)), (3, 2), np.float32)
    with count_host_syncs(monkeypatch) as counts:
        mx.nd.ones((2, 2)).asnumpy()
        assert g.indices.shape == (1,)
    assert counts['MXNDArraySyncCopyToCPU'] >= 1 and counts['MXNDArrayGetAuxNDArray'] == 1


def test_host_reads_per_trainer_step_are_one_per_masked_parameter(monkeypatch):
    """Gluon Trainer.step with two masked row_sparse parameters on the pure path: the row-id
    read twice, and nothing else blocks (Trainer's own work included)."""
    net = GluonMF(N_USERS, N_ITEMS, DIM, sparse_grad=True)
    net.initialize(mx.init.Uniform(0.5))
    trainer = gluon.Trainer(net.collect_params(), 'masked', {
        'base': 'adam', 'learning_rate': 0.01,
        'masks': {net.book.weight: mo.train_rows_from(N_OLD), net.user.weight: mo.train_cols([3])}})
    trainer.optimizer.step_path = 'pure'
    for k, (member, book) in enumerate(_batches(seed=3)):
        with autograd.record():
            loss = (net(member, book) ** 2).sum()
        loss.backward()
        if k == 0:
            trainer.step(BATCH)   # builds the plans
            continue
        with count_host_syncs(monkeypatch) as counts:
            trainer.step(BATCH)
        assert dict(counts) == {k: 2 * v for k, v in PER_STEP_DENSE_WEIGHT.items()}
