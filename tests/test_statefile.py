"""State files without pickle (masked_opt.save_states / load_states) resume like MXNet's pickles.

Every resume here is checked on the bits against two references: the same run never
interrupted, and the same resume through MXNet's pickle-based ``Trainer.save_states`` /
``Module.save_optimizer_states`` (what tests/test_checkpoint.py and tests/test_phases.py
check). Covered: every optimizer and setting of the optimizer table (optim_db) under a masked
Gluon Trainer, float16 weights with multi_precision, MXNet's four learning-rate schedulers with
warmup, Module on one device and on two (states keyed by name on
the kvstore), Gluon on two devices with and without update_on_kvstore, a warm start from an
unmasked run, and a change of masks between phases. What the format cannot hold is refused
when saving, with a pointer to the pickle route; what does not fit is refused when loading,
before anything is written. Damaged and crafted files: tests/test_statefile_fuzz.py.
"""
import os
import pickle

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, state_arrays
from models import forum_block, forum_mf, gluon_steps, mf_iter, module_steps, ratings
from optim_db import CONFIGS, MULTI_PRECISION, NO_WD, case_ids
from payloads import Tripwire, payload_array

import masked_opt as mo

N_USERS, N_ITEMS, DIM, BATCH = 10, 12, 4, 8
BOOK, MEMBER = 'book_embedding_weight', 'member_embedding_weight'
MASKS = {BOOK: mo.train_rows_from(8), MEMBER: mo.train_cols([1, 3])}

# Optimizers that keep arrays of their own: refused when saving (see test_refused_when_saving).
KEEP_ARRAYS = {'lbsgd': 'cumgrads', 'dcasgd': 'weight_previous'}
CASES = [case for case in case_ids(CONFIGS, order=sorted) if case.values[0] not in KEEP_ARRAYS]


def _params(base, masks=MASKS, config=None, **extra):
    out = dict({'base': base, 'learning_rate': 0.01, 'wd': 0.0 if base in NO_WD else 1e-3,
                'masks': masks}, **(config if config is not None else CONFIGS[base][-1]))
    out.update(extra)
    return out


def _trainer(net, params, **kwargs):
    """A masked Trainer when ``params`` has masks, else one with ``params['base']`` alone."""
    if 'masks' in params:
        return mx.gluon.Trainer(net.collect_params(), 'masked', params, **kwargs)
    rest = {k: v for k, v in params.items() if k != 'base'}
    return mx.gluon.Trainer(net.collect_params(), params['base'], rest, **kwargs)


def _steps(net, trainer, first, count, seed=None):
    if seed is not None:      # SGLD draws noise: every continuation draws the same
        mx.random.seed(seed)
    ctx = net.member.weight.list_ctx()
    if len(ctx) == 1:
        gluon_steps(net, trainer, first, count, n_users=N_USERS, n_items=N_ITEMS, batch=BATCH,
                    n_ratings=96)
        return
    member, book, label = ratings(N_USERS, N_ITEMS, 96, seed=4)
    for s in range(first, first + count):   # half of each batch on each device
        sl = slice(s * BATCH, (s + 1) * BATCH)
        parts = [mx.gluon.utils.split_and_load(a[sl], ctx) for a in (member, book, label)]
        with mx.autograd.record():
            losses = [((net(u, i) - y) ** 2).sum() for u, i, y in zip(*parts, strict=True)]
        mx.autograd.backward(losses)
        trainer.step(BATCH)


def _same_weights(a, b, what):
    for name, p in a.collect_params().items():
        assert_same_bits(p.data(), b.collect_params()[name].data(), '%s: %s' % (what, name))


def _states(trainer):
    return trainer._updaters[0].states


def _same_states(a, b, what):
    assert sorted(a) == sorted(b), what
    for i in a:
        for x, y in zip(state_arrays(a[i]), state_arrays(b[i]), strict=True):
            assert_same_bits(x, y, '%s: state %s' % (what, i))


def _gluon_resume(tmp_path, params, make_params=None, ctx=None, steps=(3, 3), resume=None,
                  **kwargs):
    """(uninterrupted, resumed from MXNet's pickle, resumed from save_states) nets/trainers;
    the resumed Trainers are built with ``resume`` (default: the same parameters)."""
    ctx = ctx or [mx.cpu()]
    make_params = make_params or (lambda: params)

    def build(params=None):
        net = forum_block(N_USERS, N_ITEMS, DIM)
        net.collect_params().reset_ctx(ctx)
        return net, _trainer(net, params or make_params(), **kwargs)
    whole, whole_t = build()
    _steps(whole, whole_t, 0, steps[0])
    _steps(whole, whole_t, steps[0], steps[1], seed=7)

    first, first_t = build()
    _steps(first, first_t, 0, steps[0])
    first.save_parameters(str(tmp_path / 'w.params'))
    first_t.save_states(str(tmp_path / 'pickle.states'))
    mo.save_states(first_t, str(tmp_path / 'plain.states'))
    out = [(whole, whole_t)]
    for name, load in (('pickle.states', lambda t, p: t.load_states(p)),
                       ('plain.states', mo.load_states)):
        net, trainer = build(resume)
        net.load_parameters(str(tmp_path / 'w.params'), ctx=ctx)
        load(trainer, str(tmp_path / name))
        _steps(net, trainer, steps[0], steps[1], seed=7)
        out.append((net, trainer))
    return out


@pytest.mark.parametrize('base,config', CASES)
def test_gluon_every_optimizer_resumes_like_the_pickle(base, config, tmp_path):
    """Masked Gluon Trainer, every registered optimizer and setting of the optimizer table:
    weights, states and update counts after the resume are those of the pickle resume and of
    the run never interrupted."""
    (whole, whole_t), (pick, pick_t), (plain, plain_t) = _gluon_resume(
        tmp_path, _params(base, config=config))
    _same_weights(pick, plain, 'pickle vs save_states')
    _same_states(_states(pick_t), _states(plain_t), 'pickle vs save_states')
    if base != 'sgld':   # its noise: MXNet's generator, in no state file (the pickle's resume
        _same_weights(whole, plain, 'uninterrupted vs save_states')   # differs as well)
        _same_states(_states(whole_t), _states(plain_t), 'uninterrupted vs save_states')
    assert plain_t._optimizer.num_update == whole_t._optimizer.num_update
    assert plain_t._optimizer._index_update_count == whole_t._optimizer._index_update_count
    assert plain_t._optimizer.masks == MASKS


SCHEDULERS = {
    'factor': lambda: mx.lr_scheduler.FactorScheduler(2, factor=0.5, warmup_steps=2,
                                                      warmup_begin_lr=0.001),
    'multifactor': lambda: mx.lr_scheduler.MultiFactorScheduler([2, 4], factor=0.3,
                                                                warmup_steps=1,
                                                                warmup_mode='constant'),
    'poly': lambda: mx.lr_scheduler.PolyScheduler(8, base_lr=0.05, pwr=2, final_lr=0.001,
                                                  warmup_steps=2),
    'cosine': lambda: mx.lr_scheduler.CosineScheduler(8, base_lr=0.05, final_lr=0.001,
                                                      warmup_steps=3, warmup_begin_lr=0.01),
}


@pytest.mark.parametrize('kind', sorted(SCHEDULERS))
@pytest.mark.parametrize('base', ['sgd', 'adam'])
def test_gluon_schedulers_resume_bit_for_bit(kind, base, tmp_path):
    """The resume falls in the middle of the warmup or of the decay. The resumed Trainers are
    built without a scheduler: the file's comes back (class, count, step index, base_lr,
    warmup), as from MXNet's pickle, and sets the learning rate of every later step."""
    def make():
        return _params(base, lr_scheduler=SCHEDULERS[kind]())
    runs = _gluon_resume(tmp_path, None, make_params=make, steps=(3, 4), resume=_params(base))
    (whole, whole_t), (pick, _), (plain, plain_t) = runs
    _same_weights(whole, plain, 'uninterrupted vs save_states')
    _same_weights(pick, plain, 'pickle vs save_states')
    want, got = whole_t._optimizer.lr_scheduler, plain_t._optimizer.lr_scheduler
    assert type(got) is type(want) and vars(got) == vars(want)


@pytest.mark.parametrize('base', sorted(MULTI_PRECISION))
def test_float16_weights_with_multi_precision_resume_like_the_pickle(base, tmp_path):
    """States nested two deep (the float32 master copy, then the optimizer's own)."""
    def build():
        net = mx.gluon.nn.Embedding(N_ITEMS, DIM, prefix='book_embedding_', dtype='float16')
        net.initialize(mx.init.Uniform(0.5))
        return net, mx.gluon.Trainer(net.collect_params(), 'masked', _params(
            base, {BOOK: mo.train_rows_from(8)}, multi_precision=True))

    def steps(net, trainer, first, count):
        ids = mx.nd.array(ratings(N_USERS, N_ITEMS, 96, seed=4)[1])
        for s in range(first, first + count):
            with mx.autograd.record():
                loss = (net(ids[s * BATCH:(s + 1) * BATCH]).astype('float32') ** 2).sum()
            loss.backward()
            trainer.step(BATCH)
    start = build()[0].weight.data().copy()

    def fresh():
        net, trainer = build()
        net.weight.set_data(start.copy())
        return net, trainer
    whole, whole_t = fresh()
    steps(whole, whole_t, 0, 5)
    first, first_t = fresh()
    steps(first, first_t, 0, 2)
    first_t.save_states(str(tmp_path / 'p.pickle'))
    mo.save_states(first_t, str(tmp_path / 'p.states'))
    resumed = []
    for load in (lambda t: t.load_states(str(tmp_path / 'p.pickle')),
                 lambda t: mo.load_states(t, str(tmp_path / 'p.states'))):
        net, trainer = fresh()
        net.weight.set_data(first.weight.data().copy())
        load(trainer)
        steps(net, trainer, 2, 3)
        resumed.append((net, trainer))
    (pick, pick_t), (plain, plain_t) = resumed
    assert_same_bits(whole.weight.data(), plain.weight.data(), 'uninterrupted vs save_states')
    assert_same_bits(pick.weight.data(), plain.weight.data(), 'pickle vs save_states')
    _same_states(_states(pick_t), _states(plain_t), 'pickle vs save_states')
    master = _states(plain_t)[0][0]
    assert master.dtype == np.float32 and master.shape == (N_ITEMS - 8, DIM)


@pytest.mark.parametrize('update_on_kvstore', [False, True])
def test_gluon_two_devices_resume_bit_for_bit(update_on_kvstore, tmp_path):
    """One updater per device, or the states on the kvstore: all of them restored."""
    runs = _gluon_resume(tmp_path, _params('adam'), ctx=[mx.cpu(0), mx.cpu(1)],
                         kvstore='device', update_on_kvstore=update_on_kvstore)
    (whole, _), (pick, _), (plain, plain_t) = runs
    _same_weights(whole, plain, 'uninterrupted vs save_states')
    _same_weights(pick, plain, 'pickle vs save_states')


def test_gluon_unmasked_trainer_resumes_like_the_pickle(tmp_path):
    params = {'base': 'adam', 'learning_rate': 0.01}
    (whole, _), (pick, pick_t), (plain, plain_t) = _gluon_resume(tmp_path, params)
    _same_weights(whole, plain, 'uninterrupted vs save_states')
    _same_states(_states(pick_t), _states(plain_t), 'pickle vs save_states')


def test_warm_start_from_an_unmasked_run_like_the_pickle(tmp_path):
    """Pre-train without masks, save; a masked Trainer loads the full-size states and keeps
    its masks (frozen entries keep weight and state bits), as with Trainer.load_states."""
    pre = forum_block(N_USERS, N_ITEMS, DIM)
    pre_t = _trainer(pre, {'base': 'adam', 'learning_rate': 0.01})
    _steps(pre, pre_t, 0, 3)
    pre.save_parameters(str(tmp_path / 'pre.params'))
    pre_t.save_states(str(tmp_path / 'pre.pickle'))
    mo.save_states(pre_t, str(tmp_path / 'pre.states'))
    runs = []
    for load in (lambda t: t.load_states(str(tmp_path / 'pre.pickle')),
                 lambda t: mo.load_states(t, str(tmp_path / 'pre.states'))):
        net = forum_block(N_USERS, N_ITEMS, DIM)
        net.load_parameters(str(tmp_path / 'pre.params'))
        trainer = _trainer(net, _params('adam'))
        load(trainer)
        _steps(net, trainer, 3, 3)
        runs.append((net, trainer))
    (pick, pick_t), (plain, plain_t) = runs
    _same_weights(pick, plain, 'warm start, pickle vs save_states')
    _same_states(_states(pick_t), _states(plain_t), 'warm start, pickle vs save_states')
    assert plain_t._optimizer.masks == MASKS


@pytest.mark.parametrize('api', ['gluon', 'module'])
def test_new_masks_in_a_new_phase_like_the_pickle(api, tmp_path):
    """Phase 2 has other masks: the states follow their rows exactly as with the pickle."""
    phase1 = {BOOK: mo.train_rows([8, 9, 10]), MEMBER: mo.train_cols([1, 3])}
    phase2 = {BOOK: mo.train_rows([6, 7, 9, 10, 11])}
    if api == 'gluon':
        net, trainer = forum_block(N_USERS, N_ITEMS, DIM), None
        trainer = _trainer(net, _params('adam', phase1))
        _steps(net, trainer, 0, 3)
        net.save_parameters(str(tmp_path / 'w.params'))
        trainer.save_states(str(tmp_path / 'p.pickle'))
        mo.save_states(trainer, str(tmp_path / 'p.states'))
        runs = []
        for load in (lambda t: t.load_states(str(tmp_path / 'p.pickle')),
                     lambda t: mo.load_states(t, str(tmp_path / 'p.states'))):
            net = forum_block(N_USERS, N_ITEMS, DIM)
            net.load_parameters(str(tmp_path / 'w.params'))
            trainer = _trainer(net, _params('adam', phase2))
            load(trainer)
            _steps(net, trainer, 3, 3)
            runs.append((net, trainer))
        _same_weights(runs[0][0], runs[1][0], 'phase 2, pickle vs save_states')
        _same_states(_states(runs[0][1]), _states(runs[1][1]), 'phase 2')
        return
    first = _module(_init(), _params('adam', phase1))
    module_steps(first, _batches()[:3])
    first.save_optimizer_states(str(tmp_path / 'p.pickle'))
    mo.save_states(first, str(tmp_path / 'p.states'))
    weights = first.get_params()[0]
    pick = _module(weights, _params('adam', phase2, begin_num_update=3))
    pick.load_optimizer_states(str(tmp_path / 'p.pickle'))
    plain = _module(weights, _params('adam', phase2))
    mo.load_states(plain, str(tmp_path / 'p.states'))
    for mod in (pick, plain):
        module_steps(mod, _batches()[3:])
    _same_module(pick, plain, 'phase 2, pickle vs save_states')
    _same_states(pick._updater.states, plain._updater.states, 'phase 2')


# ---------------------------------------------------------------- Module

def _init():
    rng = np.random.RandomState(0)
    return {MEMBER: mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            BOOK: mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}


def _batches():
    return list(mf_iter(*ratings(N_USERS, N_ITEMS, 64, seed=5), batch_size=BATCH))


def _module(arg_params, params, ctx=None):
    it = mf_iter(*ratings(N_USERS, N_ITEMS, 64, seed=5), batch_size=BATCH)
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'], context=ctx or mx.cpu())
    mod.bind(it.provide_data, it.provide_label)
    mod.init_params(arg_params={k: v.copy() for k, v in arg_params.items()})
    mod.init_optimizer(optimizer='masked', optimizer_params=params)
    return mod


def _same_module(a, b, what):
    for name, value in a.get_params()[0].items():
        assert_same_bits(value, b.get_params()[0][name], '%s: %s' % (what, name))


@pytest.mark.parametrize('ctx', [None, [mx.cpu(0), mx.cpu(1)]], ids=['one-device', 'kvstore'])
@pytest.mark.parametrize('base', ['sgd', 'adam'])
def test_module_resumes_bit_for_bit_without_begin_num_update(base, ctx, tmp_path):
    """The file holds the update counts (MXNet's Module pickle does not): no begin_num_update
    is needed, and the resume equals the pickle resume given begin_num_update."""
    batches = _batches()
    params = _params(base, lr_scheduler=None)
    whole = _module(_init(), params, ctx)
    module_steps(whole, batches)

    first = _module(_init(), params, ctx)
    module_steps(first, batches[:3])
    first.save_optimizer_states(str(tmp_path / 'm.pickle'))
    mo.save_states(first, str(tmp_path / 'm.states'))
    weights = first.get_params()[0]
    pick = _module(weights, dict(params, begin_num_update=3), ctx)
    pick.load_optimizer_states(str(tmp_path / 'm.pickle'))
    plain = _module(weights, params, ctx)
    opt = mo.load_states(plain, str(tmp_path / 'm.states'))
    assert opt is plain._optimizer and opt.num_update == 3
    for mod in (pick, plain):
        module_steps(mod, batches[3:])
    _same_module(whole, plain, 'uninterrupted vs save_states')
    _same_module(pick, plain, 'pickle vs save_states')


def test_module_resumes_its_scheduler(tmp_path):
    batches = _batches()

    def params():
        return _params('adam', lr_scheduler=SCHEDULERS['factor']())
    whole = _module(_init(), params())
    module_steps(whole, batches)
    first = _module(_init(), params())
    module_steps(first, batches[:3])
    mo.save_states(first, str(tmp_path / 'm.states'))
    plain = _module(first.get_params()[0], _params('adam'))     # no scheduler: the file's
    mo.load_states(plain, str(tmp_path / 'm.states'))
    module_steps(plain, batches[3:])
    _same_module(whole, plain, 'uninterrupted vs save_states')


# ---------------------------------------------------------------- refused when saving

class _MyScheduler(mx.lr_scheduler.FactorScheduler):
    pass


@pytest.mark.parametrize('case', ['lbsgd', 'dcasgd', 'custom-scheduler', 'float32-setting'])
def test_refused_when_saving_and_nothing_written(case, tmp_path):
    if case in KEEP_ARRAYS:
        params, match = _params(case), KEEP_ARRAYS[case]
    elif case == 'custom-scheduler':
        params, match = _params('sgd', lr_scheduler=_MyScheduler(2)), '_MyScheduler'
    else:
        params, match = _params('sgd', momentum=np.float32(0.9)), 'momentum'
    net = forum_block(N_USERS, N_ITEMS, DIM)
    trainer = _trainer(net, params)
    _steps(net, trainer, 0, 1)
    path = tmp_path / 'x.states'
    with pytest.raises(TypeError, match=match) as err:
        mo.save_states(trainer, str(path))
    assert 'save_states' in str(err.value) and 'pickle' in str(err.value)
    assert not os.listdir(tmp_path)


def test_module_needs_an_optimizer_first(tmp_path):
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    with pytest.raises(ValueError, match='init_optimizer'):
        mo.save_states(mod, str(tmp_path / 'x'))
    with pytest.raises(TypeError, match='Trainer or an mxnet.mod.Module'):
        mo.save_states(object(), str(tmp_path / 'x'))


# ---------------------------------------------------------------- refused when loading

def _snapshot(net, trainer):
    opt = trainer._optimizer
    base = opt.base if isinstance(opt, mo.Masked) else opt
    return ({n: p.data().copy() for n, p in net.collect_params().items()},
            {i: [a.copy() for a in state_arrays(s)] for i, s in _states(trainer).items()},
            mo.plain_optimizer.to_plain(base))


def assert_untouched(net, trainer, before):
    weights, states, plain = before
    for name, p in net.collect_params().items():
        assert_same_bits(weights[name], p.data(), 'weight %s after a refused load' % name)
    after = _states(trainer)
    assert sorted(after) == sorted(states)
    for i, arrays in states.items():
        for a, b in zip(arrays, state_arrays(after[i]), strict=True):
            assert_same_bits(a, b, 'state %s after a refused load' % i)
    opt = trainer._optimizer
    assert mo.plain_optimizer.to_plain(opt.base if isinstance(opt, mo.Masked) else opt) == plain


def _trained(params, steps=2):
    net = forum_block(N_USERS, N_ITEMS, DIM)
    trainer = _trainer(net, params)
    _steps(net, trainer, 0, steps)
    return net, trainer


def test_a_pickle_is_refused_unopened(tmp_path):
    """MXNet's own state file, and a pickle whose unpickling would create a folder."""
    net, trainer = _trained(_params('adam'))
    before = _snapshot(net, trainer)
    trainer.save_states(str(tmp_path / 'mxnet.states'))
    marker = tmp_path / 'payload-ran'
    (tmp_path / 'evil.states').write_bytes(pickle.dumps(Tripwire(marker)))
    for name in ('mxnet.states', 'evil.states'):
        with pytest.raises(ValueError, match='is a pickle.*not opened.*trainer.load_states'):
            mo.load_states(trainer, str(tmp_path / name))
    assert not marker.exists()
    assert_untouched(net, trainer, before)


def test_a_pickled_member_is_refused_and_never_unpickled(tmp_path):
    net, trainer = _trained(_params('adam'))
    mo.save_states(trainer, str(tmp_path / 'good.states'))
    before = _snapshot(net, trainer)
    with np.load(str(tmp_path / 'good.states')) as data:
        arrays = {k: data[k] for k in data.files}
    marker = str(tmp_path / 'payload-ran')
    arrays['s0'] = payload_array(marker)
    with open(tmp_path / 'bad.states', 'wb') as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match='cannot be read as an .npz of plain arrays'):
        mo.load_states(trainer, str(tmp_path / 'bad.states'))
    assert not os.path.exists(marker)
    assert_untouched(net, trainer, before)


@pytest.mark.parametrize('case', ['other-optimizer', 'masked-into-plain', 'other-model',
                                  'grown-table', 'grown-table-unmasked'])
def test_a_file_that_does_not_fit_is_refused_before_writing(case, tmp_path):
    saved = {'other-optimizer': _params('sgd'), 'masked-into-plain': _params('adam'),
             'other-model': _params('adam'), 'grown-table': _params('adam'),
             'grown-table-unmasked': {'base': 'adam', 'learning_rate': 0.01}}[case]
    _, saver = _trained(saved)
    path = str(tmp_path / 'f.states')
    mo.save_states(saver, path)
    if case == 'other-model':
        net = mx.gluon.nn.HybridSequential(prefix='')
        with net.name_scope():
            net.add(mx.gluon.nn.Embedding(N_ITEMS, DIM, prefix='other_'))
        net.initialize()
        trainer = _trainer(net, _params('adam', {}))
        match = "'book_embedding_weight' is at index 0, where this Trainer has parameter " \
                "'other_weight'"
    elif case.startswith('grown-table'):
        net = forum_block(N_USERS, N_ITEMS + 2, DIM)
        trainer = _trainer(net, saved)
        match = (r'shape \(12, 4\); this weight has shape \(14, 4\)' if case == 'grown-table'
                 else r'has arrays .*\(12, 4\).* the Adam optimizer makes .*\(14, 4\)')
    else:
        params = {'other-optimizer': _params('adam'), 'masked-into-plain':
                  {'base': 'adam', 'learning_rate': 0.01}}[case]
        net = forum_block(N_USERS, N_ITEMS, DIM)
        trainer = _trainer(net, params)
        match = {'other-optimizer': "saved with optimizer str 'sgd'; this one is 'adam'",
                 'masked-into-plain': 'block-sized states of a masked run'}[case]
    if case != 'other-model':
        _steps(net, trainer, 0, 1)
    before = _snapshot(net, trainer)
    with pytest.raises(ValueError, match=match):
        mo.load_states(trainer, path)
    assert_untouched(net, trainer, before)
