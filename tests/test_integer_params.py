"""A mask on an integer parameter is refused wherever the mask first meets the parameter's dtype.

Four places, each before anything is written (C8): ``check_masks`` (what
``KVStore.set_optimizer`` of a ``'local'``/``'device'`` kvstore runs, with Gluon's
``param_dict`` or the Module's arrays), the pickling for dist kvstore servers
(``server.capture``), and the first step without a kvstore. The message names the parameter,
its dtype, what a mask needs and how to fix it. Integer parameters sit next to float ones, and
the float ones keep their bits.
"""
import mxnet as mx
import pytest
from bits import assert_same_bits
from dist_kv import RecordingDistKV
from mxnet import gluon
from mxnet.kvstore.kvstore import KVStore

import masked_opt as mo
from masked_opt.validate import check_masks

INT_DTYPES = ['int8', 'uint8', 'int32', 'int64']
FRAGMENTS = ("parameter 'counts_weight'", 'a mask needs a floating-point weight',
             'Remove its mask', 'glob pattern')


def _assert_message(err, dtype):
    msg = str(err.value)
    for fragment in FRAGMENTS + ('dtype %s' % dtype,):
        assert fragment in msg, 'message %r lacks %r' % (msg, fragment)


def _params(dtype):
    """A float parameter and an integer one, initialised (Gluon's name-sorted keys)."""
    counts = gluon.Parameter('counts_weight', shape=(4, 2), dtype=dtype)
    counts.initialize(mx.init.Constant(3))
    emb = gluon.Parameter('emb_weight', shape=(5, 2))
    emb.initialize(mx.init.Constant(0.5))
    return counts, emb


@pytest.mark.parametrize('key', ['counts_weight', '*_weight'])
@pytest.mark.parametrize('dtype', INT_DTYPES)
def test_check_masks_refuses_an_integer_parameter(dtype, key):
    """By name, and through a glob that also matches a float parameter."""
    counts, emb = _params(dtype)
    opt = mo.Masked(base='sgd', masks={key: mo.train_rows([0])},
                    param_dict={0: counts, 1: emb})
    with pytest.raises(TypeError) as err:
        check_masks(opt)
    _assert_message(err, dtype)


def test_check_masks_passes_float_parameters_and_unmasked_integer_ones():
    counts, emb = _params('int32')
    opt = mo.Masked(base='sgd', masks={'emb_weight': mo.train_rows([0])},
                    param_dict={0: counts, 1: emb})
    check_masks(opt)     # the integer parameter has no mask: nothing to refuse


@pytest.mark.parametrize('kvstore', ['local', 'device'])
@pytest.mark.parametrize('dtype', INT_DTYPES)
def test_set_optimizer_refuses_an_integer_parameter_and_installs_nothing(kvstore, dtype):
    counts, emb = _params(dtype)
    kv = mx.kv.create(kvstore)
    opt = mo.Masked(base='sgd', masks={'counts_weight': mo.train_rows([0])},
                    param_dict={0: counts, 1: emb})
    with pytest.raises(TypeError) as err:
        kv.set_optimizer(opt)
    _assert_message(err, dtype)
    assert kv._updater is None


def test_module_two_devices_refuses_an_integer_parameter_in_init_optimizer():
    """Module.init_optimizer with a 'device' kvstore (update_on_kvstore): the check reads the
    Module's own arrays; nothing is written, no updater is installed."""
    data = mx.sym.Variable('data')
    counts = mx.sym.Variable('counts_weight', dtype='int32', shape=(4, 2),
                             init=mx.init.Zero())
    w = mx.sym.Variable('w_weight', shape=(4, 2))
    out = mx.sym.sum(mx.sym.broadcast_mul(data, w + mx.sym.cast(counts, 'float32')),
                     axis=(1, 2))
    net = mx.sym.LinearRegressionOutput(out, mx.sym.Variable('label'))
    mod = mx.mod.Module(net, data_names=['data'], label_names=['label'],
                        context=[mx.cpu(0), mx.cpu(1)])
    mod.bind([('data', (2, 4, 2))], [('label', (2,))])
    mod.init_params(mx.init.Uniform(0.5))
    before = {k: v.copy() for k, v in mod.get_params()[0].items()}
    with pytest.raises(TypeError) as err:
        mod.init_optimizer(kvstore='device', optimizer='masked',
                           optimizer_params={'base': 'sgd',
                                             'masks': {'counts_weight': mo.train_rows([0])}})
    _assert_message(err, 'int32')
    assert mod._kvstore is None or mod._kvstore._updater is None
    for name, value in mod.get_params()[0].items():
        assert_same_bits(before[name], value, name)


def test_dist_kvstore_refuses_an_integer_parameter_before_sending(monkeypatch):
    """A dist kvstore's servers would get the optimizer pickled: the worker refuses first."""
    counts, emb = _params('int64')
    opt = mo.Masked(base='sgd', masks={'counts_weight': mo.train_rows([0])},
                    param_dict={0: counts, 1: emb})
    kv = RecordingDistKV()
    monkeypatch.delenv('DMLC_ROLE', raising=False)
    with pytest.raises(TypeError) as err:
        KVStore.set_optimizer(kv, opt)
    _assert_message(err, 'int64')
    assert kv.sent == []


@pytest.mark.parametrize('dtype', INT_DTYPES)
def test_first_step_without_kvstore_refuses_and_writes_nothing(dtype):
    """gluon.Trainer without a kvstore: the first step raises; neither parameter moves."""
    counts, emb = _params(dtype)
    trainer = gluon.Trainer([counts, emb], 'masked',
                            {'base': 'sgd', 'learning_rate': 1.0,
                             'masks': {'*_weight': mo.train_rows([0])}}, kvstore=None)
    for p in (counts, emb):
        p.grad()[:] = 1
        p.list_data()[0]._fresh_grad = True  # what backward() would set
    before = [p.data().copy() for p in (counts, emb)]
    with pytest.raises(TypeError) as err:
        trainer.step(1)
    _assert_message(err, dtype)
    for b, p in zip(before, (counts, emb), strict=True):
        assert_same_bits(b, p.data(), p.name)
