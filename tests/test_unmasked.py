"""C4: parameters without a mask get exactly what the wrapped optimizer alone gives them.

Exactly means the same bits, and for optimizers with a fused multi-tensor update (SGD's
``multi_sgd_update``/``multi_sgd_mom_update``, also reached through ``aggregate_num`` and
``MXNET_OPTIMIZER_AGGREGATION_SIZE``) the same fused call: the unmasked parameters of each of
the Updater's groups still go to the wrapped optimizer together, in one call, even when masked
parameters sit in the same group. The calls are counted by replacing the operators in
``mxnet.optimizer.optimizer``'s namespace, where SGD looks them up.
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from exact import params_for
from optim_db import CONFIGS

import masked_opt as mo

STEPS = 10

# Parameters trained together, masked ones between unmasked ones, with a run of three
# unmasked ones in the middle. (name, shape, mask or None)
PARAMS = (
    ('a_weight', (4, 3), None),
    ('b_weight', (6, 4), mo.train_rows_from(3)),
    ('c_weight', (5,), None),
    ('d_weight', (3, 4, 2), None),
    ('e_bias', (4,), None),          # wd_mult 0 by MXNet's name rule, as for real biases
    ('f_weight', (5, 6), mo.train_cols([2])),
    ('g_weight', (7, 2), None),
    ('h_weight', (7, 2), mo.freeze_rows([0, 6])),
)

# SGLD adds random noise drawn from one shared stream; a masked parameter draws noise only for
# its block, so the noise the *next* parameter gets is a different slice of the stream. The
# unmasked parameters are updated by the same code, but their bits cannot match a run without
# masks. (Its C1 is covered in test_exact_all_optimizers.py.)
RANDOM_STREAM = {'sgld'}

MULTI_OPS = ('multi_sgd_update', 'multi_sgd_mom_update', 'multi_mp_sgd_update',
             'multi_mp_sgd_mom_update')


class Spy:
    """Wraps an operator; records the ``out`` arrays (by identity, and their shapes) of every
    call."""

    def __init__(self, fn, name):
        self.fn, self.name, self.calls, self.shapes = fn, name, [], []

    def __call__(self, *args, **kwargs):
        self.calls.append([id(w) for w in kwargs['out']])
        self.shapes.append([w.shape for w in kwargs['out']])
        return self.fn(*args, **kwargs)


@pytest.fixture
def spies(monkeypatch):
    """The fused SGD operators, counted."""
    out = {}
    for name in MULTI_OPS:
        spy = Spy(getattr(mx.optimizer.optimizer, name), name)
        monkeypatch.setattr(mx.optimizer.optimizer, name, spy)
        out[name] = spy
    return out


def _train(opt, weights, grads):
    updater = mx.optimizer.get_updater(opt)
    for t in range(grads[0].shape[0]):
        updater(list(range(len(weights))), [g[t] for g in grads], weights)
    return updater.states


def _setup(params, dtype, seed=0):
    rng = np.random.RandomState(seed)
    w0 = [rng.uniform(-1, 1, p[1]).astype(dtype) for p in params]
    grads = [rng.normal(size=(STEPS,) + p[1]).astype(dtype) for p in params]
    return w0, grads


def _nd(arrays_):
    # Fresh arrays for each run: AdaDelta scales the gradient it is given in place.
    return [mx.nd.array(a, dtype=a.dtype) for a in arrays_]


def _run_both(name, config, params, dtype='float32', scheduler=None):
    """Masked (masks on some params) and the wrapped optimizer alone, same inputs.

    ``scheduler``: a function making an lr scheduler (they are stateful: one per run)."""
    kwargs = dict(config, learning_rate=0.05, rescale_grad=0.5, wd=1e-3)
    if name in ('groupadagrad',):
        kwargs['wd'] = 0.0   # GroupAdaGrad asserts wd == 0 (see test_exact_all_optimizers)
    if dtype == 'float16':
        kwargs['multi_precision'] = True
    idx2name = {i: p[0] for i, p in enumerate(params)}
    w0, grads = _setup(params, dtype)
    if scheduler is not None:
        kwargs['lr_scheduler'] = scheduler()
    masked = mo.Masked(base=name, param_idx2name=idx2name,
                       masks={p[0]: p[2] for p in params if p[2] is not None}, **kwargs)
    w_masked = _nd(w0)
    s_masked = _train(masked, w_masked, _nd(grads))
    if scheduler is not None:
        kwargs['lr_scheduler'] = scheduler()
    alone = mx.optimizer.create(name, param_idx2name=idx2name, **kwargs)
    w_alone = _nd(w0)
    s_alone = _train(alone, w_alone, _nd(grads))
    return w0, (w_masked, s_masked), (w_alone, s_alone)


def _check_unmasked(params, w0, masked, alone):
    (w_m, s_m), (w_a, s_a) = masked, alone
    n_plain = 0
    for i, (pname, _, mask) in enumerate(params):
        if mask is not None:
            continue
        n_plain += 1
        assert_same_bits(w_m[i], w_a[i], '%s weight vs wrapped optimizer alone' % pname)
        assert (w_m[i].asnumpy() != w0[i]).any(), '%s did not train' % pname
        for k, (a, b) in enumerate(zip(state_arrays(s_m[i]), state_arrays(s_a[i]), strict=True)):
            assert_same_bits(a, b, '%s state[%d]' % (pname, k))
    assert n_plain >= 1


def _cases(schedule):
    for name, configs in sorted(CONFIGS.items()):
        if name in RANDOM_STREAM:
            continue
        for k, config in enumerate(configs):
            yield pytest.param(name, config, id='%s-%d' % (name, k))


def _schedule():
    return mx.lr_scheduler.FactorScheduler(step=3, factor=0.5, base_lr=0.05)


@pytest.mark.parametrize('name, config', list(_cases(schedule=True)))
def test_unmasked_params_get_the_wrapped_optimizers_bits(name, config):
    """Every optimizer, wd > 0 and an lr schedule: unmasked params, weights and states."""
    warnings.simplefilter('ignore', UserWarning)
    params = params_for(name, PARAMS)
    w0, masked, alone = _run_both(name, config, params, scheduler=_schedule)
    _check_unmasked(params, w0, masked, alone)


def test_unmasked_params_lars_momentum_without_schedule():
    """LARS with momentum is exact for unmasked params while the lr stays constant."""
    w0, masked, alone = _run_both('lars', {'momentum': 0.9}, PARAMS)
    _check_unmasked(PARAMS, w0, masked, alone)


@pytest.mark.parametrize('name, config', [('sgd', {'momentum': 0.9}), ('adam', {}),
                                          ('lamb', {}), ('nag', {'momentum': 0.9})])
def test_unmasked_params_multi_precision(name, config):
    w0, masked, alone = _run_both(name, config, PARAMS, dtype='float16')
    _check_unmasked(PARAMS, w0, masked, alone)


def _fused_calls_per_step(spy, weights, steps):
    """The calls of ``spy`` that touched any of ``weights`` (as sets of array ids)."""
    ids = {id(w) for w in weights}
    calls = [c for c in spy.calls if set(c) & ids]
    assert len(calls) % steps == 0
    return calls


@pytest.mark.parametrize('size', [None, '2', '3', '16'])
@pytest.mark.parametrize('momentum, dtype, op', [
    (0.0, 'float32', 'multi_sgd_update'),
    (0.9, 'float32', 'multi_sgd_mom_update'),
    (0.9, 'float16', 'multi_mp_sgd_mom_update'),
    (0.0, 'float16', 'multi_mp_sgd_update'),
])
def test_sgd_fused_call_kept_for_unmasked_params(spies, monkeypatch, size, momentum, dtype, op):
    """Unmasked params still go through SGD's fused multi-tensor op, several per call."""
    if size is not None:
        monkeypatch.setenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', size)
    else:
        monkeypatch.delenv('MXNET_OPTIMIZER_AGGREGATION_SIZE', raising=False)
    aggregate_num = int(size or 4)
    assert mo.Masked(base='sgd').base.aggregate_num == aggregate_num
    w0, masked, alone = _run_both('sgd', {'momentum': momentum}, PARAMS, dtype=dtype)
    _check_unmasked(PARAMS, w0, masked, alone)

    (w_m, _), (w_a, _) = masked, alone
    plain = [w_m[i] for i, p in enumerate(PARAMS) if p[2] is None]
    calls = _fused_calls_per_step(spies[op], plain, STEPS)
    # Each unmasked param exactly once per step, in calls of at most aggregate_num arrays.
    flat = [i for c in calls for i in c if i in {id(w) for w in plain}]
    assert sorted(flat) == sorted(id(w) for w in plain for _ in range(STEPS))
    assert max(len(c) for c in calls) <= aggregate_num
    if aggregate_num > 1:
        assert any(len(c) > 1 for c in calls), 'unmasked params were updated one by one'
    # The very calls of the wrapped optimizer alone (same grouping and order), with each masked
    # param's block (a new array) standing in for its full weight -- except that one-row
    # stand-ins (a block updated in place, a frozen parameter) get calls of their own
    # (masked_opt.steps.stand_in.calls_apart: in a fused call, a one-row array costs as much as
    # the largest). Restricted to the unmasked params, both runs make the same calls in order.
    alone_ids = {id(w) for w in w_a}
    alone_calls = [c for c in spies[op].calls if set(c) & alone_ids]
    masked_calls = [(c, shapes) for c, shapes in zip(spies[op].calls, spies[op].shapes,
                                                      strict=True) if not set(c) & alone_ids]

    def unmasked_positions(calls, weights):
        pos = {id(w): i for i, w in enumerate(weights) if PARAMS[i][2] is None}
        return [tuple(pos[a] for a in c if a in pos) for c in calls if set(c) & set(pos)]
    assert unmasked_positions([c for c, _ in masked_calls], w_m) == \
        unmasked_positions(alone_calls, w_a)
    plain_ids = {id(w) for w in plain}
    for c, shapes in masked_calls:
        if set(c) & plain_ids:
            assert not any(a not in plain_ids and shape[0] == 1
                           for a, shape in zip(c, shapes, strict=True)), (
                'a one-row stand-in shares a fused call with unmasked params: %s' % shapes)
    masked_ids = {id(w_m[i]) for i, p in enumerate(PARAMS) if p[2] is not None}
    assert not any(set(c) & masked_ids for c in spies[op].calls)


def test_no_masks_at_all_is_the_wrapped_optimizer(spies):
    """Masked without masks: identical bits and as many fused calls, of the same sizes."""
    params = tuple((n, s, None) for n, s, _ in PARAMS)
    w0, masked, alone = _run_both('sgd', {'momentum': 0.9}, params)
    _check_unmasked(params, w0, masked, alone)
    spy = spies['multi_sgd_mom_update']
    sizes_m = sorted(len(c) for c in _fused_calls_per_step(spy, masked[0], STEPS))
    sizes_a = sorted(len(c) for c in _fused_calls_per_step(spy, alone[0], STEPS))
    assert sizes_m == sizes_a == sorted([4, 4] * STEPS)


# ---------------------------------------------------------------------------------------------
# Module: several params, single device (Module's own Updater, aggregated)
# ---------------------------------------------------------------------------------------------
def _mlp():
    """Embedding + two FullyConnected layers: five params, one of them masked below."""
    data = mx.sym.Variable('data')
    emb = mx.sym.Embedding(data, input_dim=12, output_dim=4, name='emb')
    h = mx.sym.FullyConnected(mx.sym.Flatten(emb), num_hidden=5, name='fc1')
    h = mx.sym.Activation(h, act_type='tanh')
    out = mx.sym.FullyConnected(h, num_hidden=1, name='fc2')
    return mx.sym.LinearRegressionOutput(out, mx.sym.Variable('label'), name='lro')


@pytest.mark.parametrize('optimizer, config', [('sgd', {'momentum': 0.9, 'wd': 1e-3}),
                                               ('sgd', {}), ('adam', {'wd': 1e-3})])
def test_module_unmasked_params_equal_wrapped_optimizer_on_same_grads(spies, optimizer,
                                                                      config):
    """Module.update with a mask on emb_weight: the other four params get exactly the wrapped
    optimizer's update of the gradients Module computed (replayed on copies), and for SGD the
    four go through one fused call per step."""
    batch, n = 8, 32
    rng = np.random.RandomState(0)
    x = rng.randint(0, 12, (n, 3)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    it = mx.io.NDArrayIter(x, y, batch_size=batch, label_name='label')
    mod = mx.mod.Module(_mlp(), data_names=['data'], label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mx.random.seed(1)
    mod.init_params(mx.init.Uniform(0.5))
    mod.init_optimizer(optimizer='masked', optimizer_params=dict(
        config, base=optimizer, learning_rate=0.1,
        masks={'emb_weight': mo.train_rows([1, 5, 7])}))
    names = mod._exec_group.param_names
    assert names == ['emb_weight', 'fc1_weight', 'fc1_bias', 'fc2_weight', 'fc2_bias']
    plain = [i for i, nm in enumerate(names) if nm != 'emb_weight']

    ref = mx.optimizer.create(optimizer, param_idx2name=dict(enumerate(names)),
                              rescale_grad=1.0 / batch, learning_rate=0.1, **config)
    ref_updater = mx.optimizer.get_updater(ref)
    params = mod._exec_group.param_arrays
    ref_w = [params[i][0].copy() for i in plain]
    for _ in range(2):
        it.reset()
        for b in it:
            mod.forward_backward(b)
            grads = [mod._exec_group.grad_arrays[i][0].copy() for i in plain]
            mod.update()
            ref_updater(plain, grads, ref_w)
    for k, i in enumerate(plain):
        assert_same_bits(params[i][0], ref_w[k], '%s vs the wrapped optimizer' % names[i])
    if optimizer == 'sgd':
        # Five params, aggregate_num 4, as SGD alone: [emb block, a, b, c] then [d].
        op = 'multi_sgd_mom_update' if config.get('momentum') else 'multi_sgd_update'
        calls = _fused_calls_per_step(spies[op], [params[i][0] for i in plain], 2 * n // batch)
        assert [len(c) for c in calls] == [4, 1] * (2 * n // batch)


def test_lars_schedule_momentum_correction_for_unmasked_params():
    """LARS corrects momentum per call: masked b between unmasked a and c, one call a step."""
    params = (('a_weight', (3, 2), None), ('b_weight', (3, 2), mo.train_rows([0])),
              ('c_weight', (3, 2), None))
    w0, masked, alone = _run_both('lars', {'momentum': 0.9}, params, scheduler=lambda: (
        mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.05)))
    _check_unmasked(params, w0, masked, alone)
