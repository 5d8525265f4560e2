"""Pickling (C9): the optimizer as the kvstore sends it, and checkpoints that resume bit for bit.

* ``pickle.dumps(opt, 0).decode('utf-8')`` and back -- what ``KVStore.set_optimizer`` does for the
  dist kvstore -- with every kind of mask, large ones included; masks, names and
  hyper-parameters survive, the pickle holds no numpy or MXNet array, and the copy updates to the
  same bits as the original.
* The same while ``import mxnet`` is still running, at the point where a kvstore server unpickles
  the optimizer (``mxnet.kvstore`` being imported: ``mx.gluon``, ``mx.kv`` do not exist yet).
* ``Trainer.save_states``/``load_states`` (which pickles the optimizer) restores the masks and
  continues exactly like an uninterrupted run; so do Module's ``save_checkpoint(...,
  save_optimizer_states=True)`` and ``Module.load(..., load_optimizer_states=True)``.
"""
import base64
import json
import os
import pickle
import pickletools
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits
from models import GluonMF, forum_mf, mf_iter, module_steps, ratings
from mxnet import autograd, gluon

import masked_opt as mo

N_USERS, N_ITEMS, N_OLD, DIM = 20, 16, 12, 8
BATCH_SIZES = [8, 5, 12, 3, 8, 7, 16, 4]
SHAPES = {'a_weight': (6, 4), 'b_weight': (7, 3), 'c_weight': (5, 4), 'd_weight': (6, 5),
          'e_bias': (9,), 'f_weight': (4, 6), 'g_weight': (5, 3), 'h_weight': (6, 2)}


def _every_kind_of_mask():
    rng = np.random.RandomState(3)
    return {
        'a_weight': mo.train_rows_from(2),
        'b_weight': mo.train_rows([0, 4, 6]) & mo.freeze_cols([1]),
        'c_weight': mo.freeze_rows([1, 3]) & mo.train_cols([0, 3]),
        'd_weight': mo.scale_rows(rng.rand(6)) & mo.scale_cols([1, 0, 0.5, 0.25, 1]),
        'e_bias': {'rows': rng.rand(9)},                          # plain data, numpy
        'f_weight': {'rows': [0, 1, 0.5, 1], 'cols': None},       # plain data, list
        'g_weight': {'rows': None, 'cols': mx.nd.array([0, 1, 1])},  # plain data, NDArray
        '*_weight': mo.train_rows([0]),                           # glob (matches h_weight)
    }


def _optimizer(masks, base='adam', **extra):
    params = dict(learning_rate=0.01, wd=1e-3, rescale_grad=0.5, clip_gradient=1.0,
                  param_idx2name=dict(enumerate(SHAPES)))
    if base == 'sgd':
        params['momentum'] = 0.9
    params.update(extra)
    return mo.Masked(base=base, masks=masks, **params)


def _kvstore_roundtrip(opt):
    """What the dist kvstore does: protocol 0, decoded as UTF-8 text, sent, loaded."""
    text = pickle.dumps(opt, 0).decode('utf-8')
    return pickle.loads(text.encode('utf-8')), text


def _globals_in(pickled):
    """Every class or function the pickle refers to, as 'module name'."""
    return [str(arg) for op, arg, _ in pickletools.genops(pickled)
            if op.name in ('GLOBAL', 'STACK_GLOBAL')]


def _run_updates(opt, steps=4):
    """Updater steps on every parameter of SHAPES; returns the final weights as bits."""
    updater = mx.optimizer.get_updater(opt)
    rng = np.random.RandomState(4)
    weights = [mx.nd.array(rng.randn(*s)) for s in SHAPES.values()]
    for _ in range(steps):
        grads = [mx.nd.array(rng.randn(*s)) for s in SHAPES.values()]
        updater(list(range(len(weights))), grads, weights)
    return [as_bits(w) for w in weights]


@pytest.mark.parametrize('base', ['adam', 'sgd'])
def test_kvstore_style_pickle_keeps_masks_names_and_behaviour(base):
    opt = _optimizer(_every_kind_of_mask(), base)
    # Pickle after steps too: plans (device arrays) exist then and must not be pickled.
    reference = _run_updates(opt)
    copy, text = _kvstore_roundtrip(opt)
    assert copy.masks == opt.masks
    assert copy.index_names == opt.index_names == dict(enumerate(SHAPES))
    assert type(copy.base) is type(opt.base)
    for attr in ('lr', 'wd', 'rescale_grad', 'clip_gradient', 'num_update'):
        assert getattr(copy, attr) == getattr(opt, attr), attr
    for name, shape in SHAPES.items():
        key = name if name in copy.masks else '*_weight'
        for a, b in zip(copy.masks[key].resolve(shape, name), opt.masks[key].resolve(shape, name),
                        strict=True):
            assert (a is None and b is None) or np.array_equal(a, b), name
    banned = [g for g in _globals_in(text.encode('utf-8'))
              if g.startswith(('numpy', 'mxnet.ndarray', 'mxnet.numpy', 'mxnet.gluon'))]
    assert not banned, 'the pickle refers to %s' % banned
    # The copy and a fresh optimizer train the same bits.
    fresh = _run_updates(_optimizer(_every_kind_of_mask(), base))
    again, _ = _kvstore_roundtrip(_optimizer(_every_kind_of_mask(), base))
    for k, (a, b) in enumerate(zip(fresh, _run_updates(again), strict=True)):
        assert np.array_equal(a, b), 'parameter %d' % k
    for k, (a, b) in enumerate(zip(reference, fresh, strict=True)):
        assert np.array_equal(a, b), 'parameter %d' % k


def test_kvstore_style_pickle_of_large_masks():
    n = 1_000_000
    rng = np.random.RandomState(5)
    scales = rng.rand(n)
    rows = rng.choice(n, 300_000, replace=False)
    opt = mo.Masked(base='sgd', masks={'big_weight': mo.scale_rows(scales),
                                       'huge_weight': mo.freeze_rows(rows) & mo.train_cols([1]),
                                       'cfg_weight': {'rows': scales.astype(np.float32)}})
    copy, text = _kvstore_roundtrip(opt)
    assert copy.masks == opt.masks
    got_rows, _ = copy.masks['big_weight'].resolve((n, 4), 'big_weight')
    assert_same_bits(scales, got_rows, 'row scales')
    got_rows, got_cols = copy.masks['huge_weight'].resolve((n, 2), 'huge_weight')
    expected = np.ones(n)
    expected[rows] = 0
    assert_same_bits(expected, got_rows, 'frozen rows')
    assert got_cols.tolist() == [0, 1]
    # About the size of the base64 text of the arrays: no per-element Python objects.
    size = len(text)
    assert size < 2 * (8 * n + 8 * 300_000 + 8 * n) * 4 / 3, size


_SERVER_SIDE = r'''
import base64, importlib.abc, json, pickle, sys
PICKLED = base64.b64decode(sys.argv[1]).decode('utf-8')
result = {}

class _AtKVStoreImport(importlib.abc.MetaPathFinder):
    """Runs the check when mxnet imports its kvstore package: the moment a server starts."""
    def find_spec(self, name, path, target=None):
        if name == 'mxnet.kvstore' and not result:
            import mxnet
            result['missing'] = [a for a in ('gluon', 'kv', 'mod', 'init', 'metric')
                                 if not hasattr(mxnet, a)]
            assert 'masked_opt' not in sys.modules
            opt = pickle.loads(PICKLED.encode('utf-8'))
            from mxnet import ndarray as nd
            from mxnet.optimizer import get_updater
            updater = get_updater(opt)
            w = nd.ones((5, 3))
            for _ in range(3):
                updater(0, nd.ones((5, 3)), w)
            result['weight'] = w.asnumpy().tolist()
        return None

sys.meta_path.insert(0, _AtKVStoreImport())
import mxnet
print(json.dumps(result))
'''


def test_unpickles_and_updates_while_mxnet_is_still_importing():
    opt = mo.Masked(base='adam', learning_rate=0.1, wd=0.1,
                    masks={'w': mo.freeze_rows([1]) & mo.scale_cols([1, 0.5, 0])},
                    param_idx2name={0: 'w'})
    arg = base64.b64encode(pickle.dumps(opt, 0)).decode('ascii')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', _SERVER_SIDE, arg], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The check ran in the half-imported state it means to test.
    assert {'gluon', 'kv'} <= set(result['missing'])
    w = np.array(result['weight'], dtype=np.float32)
    assert np.all(w[1] == 1) and np.all(w[:, 2] == 1), 'frozen entries moved'
    here = mx.nd.ones((5, 3))
    updater = mx.optimizer.get_updater(pickle.loads(pickle.dumps(opt, 0)))
    for _ in range(3):
        updater(0, mx.nd.ones((5, 3)), here)
    assert_same_bits(here, w, 'server-side update vs in-process update')


# ---- gluon.Trainer.save_states / load_states ----

def _batches():
    rng = np.random.RandomState(12)
    return [(mx.nd.array(rng.randint(0, N_USERS, b)), mx.nd.array(rng.randint(0, N_ITEMS, b)),
             mx.nd.array(rng.rand(b))) for b in BATCH_SIZES]


def _gluon_net(seed):
    net = GluonMF(N_USERS, N_ITEMS, DIM)
    net.initialize(mx.init.Uniform(0.5))
    rng = np.random.RandomState(seed)
    net.user.weight.set_data(mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))))
    net.book.weight.set_data(mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM))))
    return net


def _gluon_steps(net, trainer, batches):
    loss_fn = gluon.loss.L2Loss()
    for member, book, label in batches:
        with autograd.record():
            loss = loss_fn(net(member, book), label)
        loss.backward()
        trainer.step(member.shape[0])


GLUON_SETTINGS = [
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam-wd'),
    pytest.param('adam', {'wd': 1e-3, 'lr_scheduler': 'factor'}, id='adam-scheduler'),
]


def _params(params):
    if params.get('lr_scheduler') == 'factor':
        params = dict(params, lr_scheduler=mx.lr_scheduler.FactorScheduler(
            step=3, factor=0.5, base_lr=0.01))
    return params


@pytest.mark.parametrize('base,params', GLUON_SETTINGS)
def test_trainer_save_and_load_states_resume_bit_for_bit(base, params, tmp_path):
    batches = _batches()

    def masks(net):
        return {net.book.weight: mo.train_rows_from(N_OLD), 'mf_user_weight':
                {'rows': None, 'cols': [0, 0, 1, 1, 1, 0.5, 1, 1]}}

    whole = _gluon_net(seed=1)
    _gluon_steps(whole, gluon.Trainer(whole.collect_params(), 'masked',
                                      dict(_params(params), base=base, masks=masks(whole))),
                 batches)

    first = _gluon_net(seed=1)
    first_trainer = gluon.Trainer(first.collect_params(), 'masked',
                                  dict(_params(params), base=base, masks=masks(first)))
    _gluon_steps(first, first_trainer, batches[:4])
    first.save_parameters(str(tmp_path / 'net.params'))
    first_trainer.save_states(str(tmp_path / 'trainer.states'))

    # A new process would build the net and a trainer from scratch: here with a plain
    # optimizer and different weights, so that everything that matters comes from the files.
    second = _gluon_net(seed=2)
    second.load_parameters(str(tmp_path / 'net.params'))
    second_trainer = gluon.Trainer(second.collect_params(), 'sgd', {'learning_rate': 1.0})
    second_trainer.load_states(str(tmp_path / 'trainer.states'))
    assert isinstance(second_trainer._optimizer, mo.Masked)
    assert second_trainer._optimizer.masks == first_trainer._optimizer.masks
    _gluon_steps(second, second_trainer, batches[4:])

    for name in ('user', 'book'):
        assert_same_bits(getattr(whole, name).weight.data(), getattr(second, name).weight.data(),
                         '%s table, resumed vs uninterrupted' % name)
    start = _gluon_net(seed=1)
    assert_same_bits(start.book.weight.data()[:N_OLD], second.book.weight.data()[:N_OLD],
                     'old book rows')
    assert_same_bits(start.user.weight.data()[:, :2], second.user.weight.data()[:, :2],
                     'frozen user columns')


# ---- Module checkpoints ----

MODULE_SETTINGS = [
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam-wd'),
]
MODULE_MASKS = {'book_embedding_weight': mo.train_rows_from(N_OLD),
                'member_embedding_weight': mo.train_cols([6, 7])}


def _module(it):
    mod = mx.mod.Module(forum_mf(N_USERS, N_ITEMS, DIM), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    return mod


@pytest.mark.parametrize('base,params', MODULE_SETTINGS)
def test_module_checkpoint_with_optimizer_states_resumes_bit_for_bit(base, params, tmp_path):
    member, book, label = ratings(N_USERS, N_ITEMS, 128, seed=6)
    it = mf_iter(member, book, label, 16)
    batches = list(it)
    rng = np.random.RandomState(9)
    init = {'member_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_USERS, DIM))),
            'book_embedding_weight': mx.nd.array(rng.uniform(-.5, .5, (N_ITEMS, DIM)))}
    opt_params = dict(params, base=base, masks=MODULE_MASKS)

    whole = _module(it)
    whole.init_params(arg_params=init)
    whole.init_optimizer(optimizer='masked', optimizer_params=opt_params)
    module_steps(whole, batches)

    first = _module(it)
    first.init_params(arg_params=init)
    first.init_optimizer(optimizer='masked', optimizer_params=opt_params)
    module_steps(first, batches[:4])
    prefix = str(tmp_path / 'mf')
    first.save_checkpoint(prefix, 4, save_optimizer_states=True)

    second = mx.mod.Module.load(prefix, 4, load_optimizer_states=True,
                                data_names=['member', 'book'], label_names=['label'])
    second.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    # Module saves the states but not the optimizer: pass the same masks again, and the
    # update count (Adam's bias correction uses it; plain Adam needs the same).
    second.init_optimizer(optimizer='masked',
                          optimizer_params=dict(opt_params, begin_num_update=4))
    module_steps(second, batches[4:])

    got, expected = second.get_params()[0], whole.get_params()[0]
    for name in expected:
        assert_same_bits(expected[name], got[name], '%s, resumed vs uninterrupted' % name)
    assert_same_bits(init['book_embedding_weight'][:N_OLD], got['book_embedding_weight'][:N_OLD],
                     'old book rows')
    assert_same_bits(init['member_embedding_weight'][:, :6],
                     got['member_embedding_weight'][:, :6], 'frozen member columns')


def test_module_save_and_load_optimizer_states(tmp_path):
    """``save_optimizer_states``/``load_optimizer_states`` on a live Module, with SGD momentum."""
    member, book, label = ratings(N_USERS, N_ITEMS, 128, seed=6)
    it = mf_iter(member, book, label, 16)
    batches = list(it)
    opt_params = {'base': 'sgd', 'learning_rate': 0.1, 'momentum': 0.9, 'masks': MODULE_MASKS}

    whole = _module(it)
    whole.init_params(mx.init.Uniform(0.5))
    init = {k: v.copy() for k, v in whole.get_params()[0].items()}
    whole.init_optimizer(optimizer='masked', optimizer_params=opt_params)
    module_steps(whole, batches)

    first = _module(it)
    first.init_params(arg_params=init)
    first.init_optimizer(optimizer='masked', optimizer_params=opt_params)
    module_steps(first, batches[:3])
    first.save_optimizer_states(str(tmp_path / 'opt.states'))
    params = {k: v.copy() for k, v in first.get_params()[0].items()}

    second = _module(it)
    second.init_params(arg_params=params)
    second.init_optimizer(optimizer='masked', optimizer_params=opt_params)
    second.load_optimizer_states(str(tmp_path / 'opt.states'))
    module_steps(second, batches[3:])
    for name, value in whole.get_params()[0].items():
        assert_same_bits(value, second.get_params()[0][name], name)
