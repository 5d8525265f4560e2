"""C4 next to a fully frozen parameter: its unmasked neighbours get the wrapped optimizer's bits.

A parameter whose mask freezes every entry trains nothing, but MXNet alone would still call the
optimizer for it, and some optimizers keep state across parameters that moves on every call
(Nadam's ``m_schedule``, LARS's ``last_lr``/``cur_lr`` per multi-tensor group, the update
counts behind ``num_update`` and the lr schedule, which LBSGD reads before counting). The
oracle is the wrapped optimizer alone training *all* parameters on the same gradients; the
gradients are given, so the neighbours' cannot depend on the frozen parameter's values. Only
the neighbours are compared (and the frozen parameter keeps its bits). SGLD's noise stream is
the one documented exception (``masked_opt/steps/stand_in.py``); with the noise replaced by
zeros it is exact too.
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from mxnet import autograd, gluon
from optim_db import SPARSE_CONFIGS as CASES

import masked_opt as mo

STEPS = 8

# Frozen ones first (LBSGD reads the lr before counting), two frozen in a row (a whole LARS/SGD
# group of MXNET_OPTIMIZER_AGGREGATION_SIZE=2), a frozen 1-D one between unmasked ones.
PARAMS = (
    ('f_weight', (5, 3), mo.freeze_rows(range(5))),
    ('g_weight', (4, 3), mo.freeze_cols(range(3))),
    ('a_weight', (4, 3), None),
    ('b_weight', (6, 3), None),
    ('h_bias', (4,), mo.freeze_rows(range(4))),
    ('c_weight', (3, 3), None),
)


def _params(name):
    if name == 'groupadagrad':   # 2-D only
        return tuple(p for p in PARAMS if len(p[1]) == 2)
    return PARAMS


def _kwargs(name, config, schedule=True):
    kwargs = dict(config, learning_rate=0.05, rescale_grad=0.5, wd=0.0 if name == 'groupadagrad'
                  else 1e-3)
    if schedule:
        kwargs['lr_scheduler'] = mx.lr_scheduler.FactorScheduler(step=3, factor=0.5,
                                                                 base_lr=0.05)
    return kwargs


def _train(opt, weights, grads, steps=STEPS):
    updater = mx.optimizer.get_updater(opt)
    for t in range(steps):
        updater(list(range(len(weights))), [g[t] for g in grads], weights)
    return updater


def _data(params, seed=0):
    rng = np.random.RandomState(seed)
    w0 = [rng.uniform(-1, 1, p[1]).astype('float32') for p in params]
    grads = [rng.normal(size=(STEPS,) + p[1]).astype('float32') for p in params]
    return w0, grads


def _nd(arrays):
    return [mx.nd.array(a) for a in arrays]


def _scalars(opt):
    """The wrapped optimizer's plain numbers (m_schedule, last_lr, cur_lr, num_update, ...)."""
    return {k: v for k, v in vars(opt).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _run_both(name, config, params):
    idx2name = {i: p[0] for i, p in enumerate(params)}
    w0, grads = _data(params)
    masked = mo.Masked(base=name, param_idx2name=idx2name,
                       masks={p[0]: p[2] for p in params if p[2] is not None},
                       **_kwargs(name, config))
    w_m = _nd(w0)
    up_m = _train(masked, w_m, _nd(grads))
    alone = mx.optimizer.create(name, param_idx2name=idx2name, **_kwargs(name, config))
    w_a = _nd(w0)
    up_a = _train(alone, w_a, _nd(grads))
    return w0, (masked, w_m, up_m), (alone, w_a, up_a)


def _check(params, w0, masked, alone):
    (opt_m, w_m, up_m), (opt_a, w_a, up_a) = masked, alone
    for i, (pname, _, mask) in enumerate(params):
        if mask is not None:
            assert_same_bits(w0[i], w_m[i], '%s (frozen) weight' % pname)
            continue
        assert_same_bits(w_m[i], w_a[i], '%s weight vs the wrapped optimizer alone' % pname)
        assert (w_m[i].asnumpy() != w0[i]).any(), '%s did not train' % pname
        for k, (a, b) in enumerate(zip(state_arrays(up_m.states[i]),
                                       state_arrays(up_a.states[i]), strict=True)):
            assert_same_bits(a, b, '%s state[%d]' % (pname, k))
    # Every parameter counted as with the optimizer alone, the frozen ones too.
    assert opt_m.base._index_update_count == opt_a._index_update_count
    assert _scalars(opt_m.base) == _scalars(opt_a)


CASE_IDS = [pytest.param(name, config, id='%s-%d' % (name, k))
            for name, configs in sorted(CASES.items()) for k, config in enumerate(configs)]


@pytest.mark.parametrize('name, config', CASE_IDS)
def test_neighbours_of_fully_frozen_parameters_get_the_wrapped_optimizers_bits(
        name, config, monkeypatch):
    """Every registered optimizer (test_sparse.CASES is kept complete), an lr schedule, wd."""
    warnings.simplefilter('ignore', UserWarning)
    monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', '2')
    if name == 'sgld':
        # SGLD draws noise from one stream whose advance depends on the size of each draw: the
        # frozen parameter's stand-in draws one row, not the table (steps/stand_in.py). Zero
        # noise, and the draws' scales recorded: the rest of SGLD must be exact.
        scales = []

        def no_noise(loc, scale, shape, **kwargs):
            scales.append(scale)
            return mx.nd.zeros(shape, dtype=kwargs.get('dtype'), ctx=kwargs.get('ctx'))
        monkeypatch.setattr(mx.optimizer.optimizer, 'normal', no_noise)
    params = _params(name)
    w0, masked, alone = _run_both(name, config, params)
    _check(params, w0, masked, alone)
    if name == 'sgld':
        half = len(scales) // 2
        assert half == STEPS * len(params) and scales[:half] == scales[half:]


def test_every_registered_optimizer_is_covered():
    assert set(CASES) == set(mx.optimizer.Optimizer.opt_registry) - {'masked'}


def test_a_fully_frozen_parameter_is_counted_like_the_others():
    """The mutant 'skip the update count of a fully frozen parameter': its count, num_update
    and -- with LBSGD, which reads the lr before counting -- the lr schedule of the parameter
    after it would lag behind the wrapped optimizer alone."""
    params = (('f_weight', (4, 2), mo.freeze_rows(range(4))), ('a_weight', (3, 2), None))
    w0, masked, alone = _run_both('lbsgd', {'momentum': 0.9}, params)
    assert masked[0].base._index_update_count == {0: STEPS, 1: STEPS}
    assert masked[0].num_update == STEPS
    _check(params, w0, masked, alone)


def test_adam_step_of_a_parameter_unfrozen_later_continues_from_its_count():
    """Staged unfreezing: a parameter fully frozen for the first phase, then trained. Its Adam
    step t counts the frozen phase, exactly as Adam alone gives a parameter that saw zero
    gradients in that phase (wd 0: its weight and moments stay as they were)."""
    idx2name = {0: 'f_weight', 1: 'a_weight'}
    w0, grads = _data((('f_weight', (4, 2), None), ('a_weight', (3, 2), None)))
    first = [g.copy() for g in grads]
    first[0][:STEPS // 2] = 0.0
    kwargs = dict(learning_rate=0.05, rescale_grad=0.5, wd=0.0)
    alone = mx.optimizer.create('adam', param_idx2name=idx2name, **kwargs)
    w_a = _nd(w0)
    _train(alone, w_a, _nd(first))

    base = mx.optimizer.create('adam', **kwargs)
    phase1 = mo.Masked(base=base, param_idx2name=idx2name,
                       masks={'f_weight': mo.freeze_rows(range(4))})
    w_m = _nd(w0)
    first_updater = _train(phase1, w_m, _nd(grads), steps=STEPS // 2)
    assert_same_bits(w0[0], w_m[0], 'f_weight during phase 1')
    phase2 = mo.Masked(base=base, param_idx2name=idx2name)   # nothing frozen any more
    updater = mx.optimizer.get_updater(phase2)
    updater.states[1] = first_updater.states[1]   # a_weight keeps its moments; f_weight: fresh
    updater.states_synced[1] = True
    for t in range(STEPS // 2, STEPS):
        updater([0, 1], [mx.nd.array(g[t]) for g in grads], w_m)
    assert_same_bits(w_a[0], w_m[0], 'f_weight after unfreezing vs Adam alone')
    assert_same_bits(w_a[1], w_m[1], 'a_weight vs Adam alone')


class _TwoBranches(gluon.HybridBlock):
    """loss = sum(emb(x)) + sum(dense(y)): the Dense gradients do not depend on the table."""

    def __init__(self):
        super().__init__(prefix='net_')
        with self.name_scope():
            self.emb = gluon.nn.Embedding(10, 4, prefix='emb_')
            self.dense = gluon.nn.Dense(3, in_units=4, prefix='dense_')
            self.out = gluon.nn.Dense(1, in_units=3, prefix='out_')

    def hybrid_forward(self, F, x, y):
        return F.sum(self.emb(x)) + F.sum(self.out(F.tanh(self.dense(y))))


@pytest.mark.parametrize('name, config', [('nadam', {}), ('lars', {'momentum': 0.9}),
                                          ('adam', {})])
def test_gluon_net_with_a_frozen_branch(name, config):
    """End to end in Gluon (hybridized): the table fully frozen by its mask; the Dense layers
    end bit-identical to a Trainer with the wrapped optimizer alone training everything."""
    rng = np.random.RandomState(1)
    xs = [mx.nd.array(rng.randint(0, 10, 6)) for _ in range(STEPS)]
    ys = [mx.nd.array(rng.normal(size=(6, 4))) for _ in range(STEPS)]
    runs = []
    for masked in (True, False):
        mx.random.seed(0)
        net = _TwoBranches()
        net.initialize(mx.init.Uniform(0.5))
        net.hybridize()
        params = dict(_kwargs(name, config), learning_rate=0.05)
        if masked:
            trainer = gluon.Trainer(net.collect_params(), 'masked', dict(
                params, base=name, masks={net.emb.weight: mo.freeze_rows(range(10))}))
        else:
            trainer = gluon.Trainer(net.collect_params(), name, params)
        table = net.emb.weight.data().copy()
        for x, y in zip(xs, ys, strict=True):
            with autograd.record():
                loss = net(x, y)
            loss.backward()
            trainer.step(6)
        runs.append((net, table))
    (net_m, table_m), (net_a, _) = runs
    assert_same_bits(table_m, net_m.emb.weight.data(), 'frozen table')
    for p_m, p_a in zip(net_m.collect_params().values(), net_a.collect_params().values(),
                        strict=True):
        if p_m.name != net_m.emb.weight.name:
            assert_same_bits(p_a.data(), p_m.data(), p_m.name)


# A row_sparse gradient that holds only frozen rows at even steps (nothing of the block
# trains then) and a frozen and a trainable row at odd steps.
_SPARSE_PARAMS = (
    ('e_weight', (6, 3), mo.train_rows_from(4)),
    ('a_weight', (4, 3), None),
    ('c_weight', (3, 3), None),
)


def _sparse_ids(t):
    return [0, 1] if t % 2 == 0 else [1, 4]


@pytest.mark.parametrize('path', ['pure', 'auto'])
@pytest.mark.parametrize('name, config', CASE_IDS)
def test_neighbours_of_a_sparse_batch_without_trainable_rows_get_the_wrapped_optimizers_bits(
        name, config, path, monkeypatch):
    """A step whose row_sparse gradient holds no trainable row updates nothing of the masked
    parameter, but MXNet alone would still call the optimizer for it: the neighbours must see
    the same call sequence (Nadam's schedule, LARS's lr, the counts). The regression: the
    pure path only counted such a step, so Nadam's neighbours drifted from the first one."""
    warnings.simplefilter('ignore', UserWarning)
    monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', '2')
    if name == 'sgld':
        monkeypatch.setattr(mx.optimizer.optimizer, 'normal',
                            lambda loc, scale, shape, **kw: mx.nd.zeros(
                                shape, dtype=kw.get('dtype'), ctx=kw.get('ctx')))
    params = _SPARSE_PARAMS
    idx2name = {i: p[0] for i, p in enumerate(params)}
    w0, grads = _data(params)

    def grads_at(t, sparse):
        out = []
        for (pname, shape, _), g in zip(params, grads, strict=True):
            if pname != 'e_weight':
                out.append(mx.nd.array(g[t]))
                continue
            ids = _sparse_ids(t)
            dense = np.zeros(shape, dtype='float32')
            dense[ids] = g[t][ids]
            out.append(mx.nd.array(dense).tostype('row_sparse') if sparse
                       else mx.nd.array(dense))
        return out

    masked = mo.Masked(base=name, param_idx2name=idx2name, masks={'e_weight': params[0][2]},
                       **_kwargs(name, config))
    masked.step_path = path   # 'auto': the native path where it serves the optimizer
    alone = mx.optimizer.create(name, param_idx2name=idx2name, **_kwargs(name, config))
    runs = []
    for opt, sparse in ((masked, True), (alone, False)):
        updater = mx.optimizer.get_updater(opt)
        weights = _nd(w0)
        for t in range(STEPS):
            updater(list(range(len(params))), grads_at(t, sparse), weights)
        runs.append((opt, weights, updater))
    (opt_m, w_m, up_m), (opt_a, w_a, up_a) = runs
    assert_same_bits(w0[0][:4], w_m[0][:4], 'e_weight frozen rows')
    for i in (1, 2):
        assert_same_bits(w_m[i], w_a[i], '%s vs the wrapped optimizer alone' % params[i][0])
        for k, (a, b) in enumerate(zip(state_arrays(up_m.states[i]),
                                       state_arrays(up_a.states[i]), strict=True)):
            assert_same_bits(a, b, '%s state[%d]' % (params[i][0], k))
    assert opt_m.base._index_update_count == opt_a._index_update_count
    assert _scalars(opt_m.base) == _scalars(opt_a)
