"""C8 on several devices: a mask that does not fit raises a ValueError the caller can catch.

With ``update_on_kvstore`` on a ``'device'`` (or ``'local'``) kvstore -- Module and Trainer on
two devices by default, and ``gluon.contrib.nn.SparseEmbedding`` always -- MXNet runs the updates
inside a ctypes callback, where an exception would be swallowed; masked_opt ends the process
there (exit code ``server.EXIT_CODE``). The same bad masks that raise a catchable ValueError on
one device must raise it here too, in the user's process and before anything is written: the
masks are checked when the kvstore gets the optimizer (``KVStore.set_optimizer``, called by
``Module.init_optimizer`` and by the Trainer's first step or ``row_sparse_data``).

Each case runs in a subprocess with a timeout: where the error is not caught in time, the
process exits with code 86 and the test runner survives to report it.
"""
import os
import subprocess
import sys

import pytest

from masked_opt import server

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

_PRELUDE = '''
import sys
sys.path[:0] = [%r, %r]
import mxnet as mx, numpy as np
from mxnet import autograd, gluon
import masked_opt as mo
from bits import as_bits
CTXS = [mx.cpu(0), mx.cpu(1)]
# Two common mistakes: a column index past the end, a rows list of the wrong length.
BAD = {'cols': lambda n, d: mo.train_cols([d]), 'rows': lambda n, d: {'rows': np.ones(n + 1)}}

def same(before, after):
    return all((as_bits(a) == as_bits(b)).all() for a, b in zip(before, after, strict=True))

def report(kind, err, unchanged):
    print('CAUGHT %%s %%s: %%s' %% (kind, type(err).__name__, err))
    print('UNCHANGED %%s %%s' %% (kind, unchanged))
''' % (ROOT, TESTS)

MODULE = _PRELUDE + '''
from models import forum_mf, mf_iter, ratings
for kind, bad in sorted(BAD.items()):
    it = mf_iter(*ratings(10, 12, 32), batch_size=8)
    mod = mx.mod.Module(forum_mf(10, 12, 8), data_names=['member', 'book'],
                        label_names=['label'], context=CTXS)
    mod.bind(data_shapes=it.provide_data, label_shapes=it.provide_label)
    mod.init_params(initializer=mx.init.Uniform(0.5))
    before = [a.copy() for arrays in mod._exec_group.param_arrays for a in arrays]
    masks = {'book_embedding_weight': bad(12, 8), 'member_embedding_weight': mo.train_rows([1])}
    try:
        mod.init_optimizer(kvstore='device', optimizer='masked',
                           optimizer_params={'base': 'adam', 'masks': masks})
        assert mod._update_on_kvstore
        for batch in it:
            mod.forward_backward(batch)
            mod.update()
        mx.nd.waitall()
        print('TRAINED ON', kind)
    except ValueError as err:
        after = [a for arrays in mod._exec_group.param_arrays for a in arrays]
        report(kind, err, same(before, after))
print('ALIVE')
'''

GLUON = _PRELUDE + '''
for kind, bad in sorted(BAD.items()):
    net = gluon.nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(gluon.nn.Embedding(12, 8), gluon.nn.Dense(1))   # Dense: deferred init
    net.initialize(mx.init.Uniform(0.5), ctx=CTXS)
    params = list(net.collect_params().values())
    masks = {params[0]: bad(12, 8), params[1]: mo.train_cols([0])}
    trainer = gluon.Trainer(net.collect_params(), 'masked',
                            {'base': 'adam', 'masks': masks}, kvstore='device')
    x = [mx.nd.array([1, 2, 11], ctx=c) for c in CTXS]
    with autograd.record():
        losses = [net(xi).sum() for xi in x]
    autograd.backward(losses)
    before = [a.copy() for p in params for a in p.list_data()]
    try:
        trainer.step(6)
        assert trainer._update_on_kvstore
        mx.nd.waitall()
        print('TRAINED ON', kind)
    except ValueError as err:
        report(kind, err, same(before, [a for p in params for a in p.list_data()]))
print('ALIVE')
'''

SPARSE = _PRELUDE + '''
for kind, bad in sorted(BAD.items()):
    for ctxs in ([mx.cpu(0)], CTXS):
        net = gluon.contrib.nn.SparseEmbedding(12, 8, prefix='table_')
        net.initialize(mx.init.Uniform(0.5), ctx=ctxs)
        trainer = gluon.Trainer(net.collect_params(), 'masked',
                                {'base': 'adam', 'masks': {net.weight: bad(12, 8)}})
        before = [d.tostype('default').copy() for d in net.weight._data]
        try:
            x = mx.nd.array([1, 2, 11])
            for c in ctxs:
                net.weight.row_sparse_data(x.as_in_context(c))
            with autograd.record():
                losses = [net(x.as_in_context(c)).sum() for c in ctxs]
            autograd.backward(losses)
            trainer.step(3)
            assert trainer._update_on_kvstore
            mx.nd.waitall()
            print('TRAINED ON', kind)
        except ValueError as err:
            after = [d.tostype('default') for d in net.weight._data]
            report('%s-%d' % (kind, len(ctxs)), err, same(before, after))
print('ALIVE')
'''


def _run(script):
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode != server.EXIT_CODE, 'the process was ended (exit %d):\n%s' % (
        proc.returncode, out)
    assert proc.returncode == 0, out
    assert 'ALIVE' in out and 'TRAINED ON' not in out, out
    return out


def _check(out, kinds, param):
    for kind in kinds:
        assert 'UNCHANGED %s True' % kind in out, out
    cols = [line for line in out.splitlines() if line.startswith('CAUGHT cols')]
    rows = [line for line in out.splitlines() if line.startswith('CAUGHT rows')]
    assert cols and all("parameter '%s' cols" % param in c and 'train_cols index 8 is out of '
                        'range; expected indices in [0, 8)' in c for c in cols), out
    assert rows and all("parameter '%s' rows" % param in r and 'has 13 values; expected 12'
                        in r for r in rows), out


def test_module_two_devices_kvstore_device_bad_mask_is_a_value_error():
    """Module.init_optimizer raises; the weights on both devices keep their bits."""
    _check(_run(MODULE), ['cols', 'rows'], 'book_embedding_weight')


def test_gluon_two_devices_kvstore_device_bad_mask_is_a_value_error():
    """The Trainer's first step raises (its Parameters are known by then); nothing written."""
    out = _run(GLUON)
    _check(out, ['cols', 'rows'], 'net_embedding0_weight')


def test_sparse_embedding_bad_mask_is_a_value_error():
    """SparseEmbedding forces update_on_kvstore, on one device too: the first row_sparse_data
    (which creates the kvstore) raises; nothing written."""
    _check(_run(SPARSE), ['cols-1', 'cols-2', 'rows-1', 'rows-2'], 'table_weight')


@pytest.mark.parametrize('kvstore', ['local', 'device'])
def test_the_check_runs_in_set_optimizer(kvstore):
    """In process: set_optimizer of a local/device kvstore raises for a bad mask, names the
    parameter, and installs no updater; a good mask passes."""
    import mxnet as mx

    import masked_opt as mo
    w = mx.gluon.Parameter('w', shape=(12, 8))
    w.initialize()
    kv = mx.kv.create(kvstore)
    bad = mo.Masked(base='sgd', masks={'w': mo.train_cols([8])}, param_dict={0: w})
    with pytest.raises(ValueError, match="parameter 'w' cols: train_cols index 8"):
        kv.set_optimizer(bad)
    assert kv._updater is None
    good = mo.Masked(base='sgd', masks={'w': mo.train_cols([7])}, param_dict={0: w})
    kv.set_optimizer(good)
    assert kv._updater is not None
