"""convert_embeddings: the converted model trains bit for bit as the unconverted one.

Whole runs -- Module (fit, forward_backward + update, BucketingModule, several CPU contexts,
kvstore local/device) and gluon.Trainer (imperative, hybridized, converted before or after
initialize), plain SGD/Adam and 'masked' with rows, columns and rows x columns masks -- give
the same bits in every weight and every optimizer state array as the same run unconverted.
Checkpoints move between the two. Layers that cannot be converted are left, named in one log
line; without the native library the model comes back unconverted.
"""
import json
import logging
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from hypothesis import given, settings
from hypothesis import strategies as st
from models import forum_mf, mf_iter, ratings

import masked_opt as mo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NU, NI, D, B = 30, 60, 8, 16
MASKS = {
    'none': None,
    'rows': {'book_embedding_weight': mo.train_rows_from(50)},
    'cols': {'member_embedding_weight': mo.train_cols([6, 7])},
    'rows x cols': {'book_embedding_weight': mo.train_rows_from(50) & mo.train_cols([5, 7])},
}
OPTS = {'sgd': {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3},
        'adam': {'learning_rate': 0.01}}


# Every test needs the native library (conftest's `lib`: a skip, or a failure in CI).
pytestmark = pytest.mark.usefixtures('lib')


def ops(sym):
    return [n['op'] for n in json.loads(sym.tojson())['nodes'] if n['op'] != 'null']


def optimizer(opt, mask):
    if MASKS[mask] is None:
        return opt, dict(OPTS[opt])
    return 'masked', dict(OPTS[opt], base=opt, masks=MASKS[mask])


def module_run(sym, opt, mask, style='step', context=None, kvstore='local', tmp=None):
    """Weights and the optimizer state file's bytes after 2 epochs of a fixed stream."""
    mx.random.seed(0)
    it = mf_iter(*ratings(NU, NI, 96, seed=1), batch_size=B)
    mod = mx.mod.Module(sym, data_names=['member', 'book'], label_names=['label'],
                        context=context or mx.cpu())
    name, params = optimizer(opt, mask)
    if style == 'fit':
        mod.fit(it, num_epoch=2, optimizer=name, optimizer_params=params, kvstore=kvstore,
                initializer=mx.init.Uniform(0.5))
    else:
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(mx.init.Uniform(0.5))
        mod.init_optimizer(kvstore=kvstore, optimizer=name, optimizer_params=params)
        for _ in range(2):
            it.reset()
            for batch in it:
                mod.forward_backward(batch)
                mod.update()
    path = os.path.join(str(tmp), 'states')
    mod.save_optimizer_states(path)
    with open(path, 'rb') as f:
        states = f.read()
    arg, aux = mod.get_params()
    return {k: v.asnumpy() for k, v in arg.items()}, states


def assert_runs_equal(ref, got):
    assert sorted(ref[0]) == sorted(got[0])
    for k in ref[0]:
        assert_same_bits(ref[0][k], got[0][k], k)
    assert ref[1] == got[1], 'optimizer state files differ'


def test_symbol_keeps_names_shapes_attributes_and_outputs(caplog):
    sym = forum_mf(NU, NI, D, sparse_grad=True)
    with caplog.at_level(logging.INFO, logger='masked_opt'):
        conv = mo.convert_embeddings(sym)
    assert ops(conv).count('masked_opt_lookup') == 2 and 'Embedding' not in ops(conv)
    assert conv.list_arguments() == sym.list_arguments()
    assert conv.list_outputs() == sym.list_outputs()
    shapes = dict(member=(B,), book=(B,), label=(B,))
    assert conv.infer_shape(**shapes) == sym.infer_shape(**shapes)
    attrs, cattrs = sym.attr_dict(), conv.attr_dict()
    for name in ('member_embedding', 'book_embedding'):
        assert attrs[name] == cattrs[name]
    assert cattrs['book_embedding_weight']['__shape__'] == str((NI, D))
    lines = [r.getMessage() for r in caplog.records if 'convert_embeddings' in r.getMessage()]
    assert len(lines) == 1 and 'converted 2' in lines[0]


def test_symbol_leaves_dense_gradient_and_gpu_with_reasons(caplog):
    dense = forum_mf(NU, NI, D, sparse_grad=False)
    with caplog.at_level(logging.INFO, logger='masked_opt'):
        assert mo.convert_embeddings(dense) is dense
        sparse = forum_mf(NU, NI, D, sparse_grad=True)
        assert mo.convert_embeddings(sparse, ctx=mx.gpu(0)) is sparse
    msgs = [r.getMessage() for r in caplog.records if 'convert_embeddings' in r.getMessage()]
    assert 'dense gradient' in msgs[0] and 'gpu(0)' in msgs[1]
    assert caplog.records[-1].levelno == logging.WARNING


@pytest.mark.parametrize('opt', sorted(OPTS))
@pytest.mark.parametrize('mask', sorted(MASKS))
def test_module_training_bit_identical(opt, mask, tmp_path):
    sym = forum_mf(NU, NI, D, sparse_grad=True)
    ref = module_run(sym, opt, mask, tmp=tmp_path)
    assert_runs_equal(ref, module_run(mo.convert_embeddings(sym), opt, mask, tmp=tmp_path))


@settings(max_examples=6)
@given(st.sampled_from(sorted(OPTS)), st.sampled_from(sorted(MASKS)),
       st.sampled_from(['fit', 'step']), st.sampled_from(['local', 'device']),
       st.integers(1, 2))
def test_module_fit_contexts_kvstores_bit_identical(opt, mask, style, kvstore, n_ctx):
    import tempfile
    sym = forum_mf(NU, NI, D, sparse_grad=True)
    ctx = [mx.cpu(i) for i in range(n_ctx)]
    with tempfile.TemporaryDirectory() as tmp:
        ref = module_run(sym, opt, mask, style, ctx, kvstore, tmp)
        got = module_run(mo.convert_embeddings(sym), opt, mask, style, ctx, kvstore, tmp)
    assert_runs_equal(ref, got)


def test_bucketing_module_bit_identical():
    def gen(key):
        return forum_mf(NU, NI, D, sparse_grad=True), ('member', 'book'), ('label',)

    def conv_gen(key):
        sym, d, lb = gen(key)
        return mo.convert_embeddings(sym), d, lb

    out = []
    for g in (gen, conv_gen):
        mx.random.seed(0)
        mod = mx.mod.BucketingModule(g, default_bucket_key=B)
        it = mf_iter(*ratings(NU, NI, 64, seed=2), batch_size=B)
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(mx.init.Uniform(0.5))
        mod.init_optimizer(optimizer='masked', optimizer_params=dict(
            OPTS['adam'], base='adam', masks=MASKS['rows']))
        for batch in it:
            batch.bucket_key = B
            mod.forward_backward(batch)
            mod.update()
        out.append(mod.get_params()[0])
    for k in out[0]:
        assert_same_bits(out[0][k], out[1][k], k)


def test_checkpoints_interchangeable(tmp_path):
    """A converted Module's checkpoint loads into the unconverted one and back."""
    sym = forum_mf(NU, NI, D, sparse_grad=True)
    conv = mo.convert_embeddings(sym)
    it = mf_iter(*ratings(NU, NI, 32, seed=3), batch_size=B)
    outs = []
    for save_sym, load_sym in ((conv, sym), (sym, conv)):
        mod = mx.mod.Module(save_sym, data_names=['member', 'book'], label_names=['label'])
        mod.bind(it.provide_data, it.provide_label)
        mod.init_params(mx.init.Uniform(0.5))
        prefix = str(tmp_path / 'ck')
        mod.save_checkpoint(prefix, 1)
        _, arg, aux = mx.model.load_checkpoint(prefix, 1)   # the JSON names the lookup
        other = mx.mod.Module(load_sym, data_names=['member', 'book'], label_names=['label'])
        other.bind(it.provide_data, it.provide_label, for_training=False)
        other.set_params(arg, aux)
        it.reset()
        batch = next(iter(it))
        mod.forward(batch, is_train=False)
        other.forward(batch, is_train=False)
        outs.append((mod.get_outputs()[0], other.get_outputs()[0]))
    for a, b in outs:
        assert_same_bits(a, b, 'inference output')


def test_module_refuses_grad_add_and_input_grads():
    conv = mo.convert_embeddings(forum_mf(NU, NI, D, sparse_grad=True))
    it = mf_iter(*ratings(NU, NI, 32), batch_size=B)
    mod = mx.mod.Module(conv, data_names=['member', 'book'], label_names=['label'])
    with pytest.raises(ValueError, match="grad_req='add'"):
        mod.bind(it.provide_data, it.provide_label, grad_req='add')
    with pytest.raises(ValueError, match='inputs_need_grad'):
        mod.bind(it.provide_data, it.provide_label, inputs_need_grad=True)
    mod.bind(it.provide_data, it.provide_label, grad_req={'book_embedding_weight': 'null'})


# ----------------------------------------------------------------------------- Gluon
class Net(mx.gluon.HybridBlock):
    """Two sparse tables and a dense one, under a hybridizable parent."""

    def __init__(self):
        super().__init__(prefix='net_')
        with self.name_scope():
            self.member = mx.gluon.nn.Embedding(NU, D, sparse_grad=True, prefix='member_')
            self.book = mx.gluon.nn.Embedding(NI, D, sparse_grad=True, prefix='book_')
            self.bias = mx.gluon.nn.Embedding(NI, 1, prefix='bias_')

    def hybrid_forward(self, F, u, i):
        return 1 - F.sum(self.member(u) * self.book(i), axis=1) + F.sum(self.bias(i), axis=1)


GLUON_MASKS = {'none': None, 'rows': {'net_book_weight': mo.train_rows_from(50)},
               'cols': {'net_member_weight': mo.train_cols([6, 7])},
               'rows x cols': {'net_book_weight': mo.train_rows_from(50) & mo.train_cols([5])}}


def gluon_run(convert, opt, mask, hybrid, when, tmp):
    mx.random.seed(0)
    net = Net()
    if convert and when == 'before':
        mo.convert_embeddings(net)
    net.initialize(mx.init.Uniform(0.5))
    if hybrid:
        net.hybridize()
    member, book, label = (mx.nd.array(a) for a in ratings(NU, NI, 96, seed=5))
    if convert and when == 'warm':   # after a hybridized forward: the cached graph must go
        net(member[:2], book[:2])
    if convert and when in ('after', 'warm'):
        mo.convert_embeddings(net)
    params = dict(OPTS[opt])
    name = opt
    if GLUON_MASKS[mask] is not None:
        name, params = 'masked', dict(params, base=opt, masks=GLUON_MASKS[mask])
    trainer = mx.gluon.Trainer(net.collect_params(), name, params)
    for s in range(6):
        sl = slice(s * B, (s + 1) * B)
        with mx.autograd.record():
            loss = ((net(member[sl], book[sl]) - label[sl]) ** 2).sum()
        loss.backward()
        trainer.step(B)
    path = os.path.join(str(tmp), 'trainer')
    trainer.save_states(path)
    with open(path, 'rb') as f:
        states = f.read()
    return {k: p.data().asnumpy() for k, p in net.collect_params().items()}, states, net


@settings(max_examples=8)
@given(st.sampled_from(sorted(OPTS)), st.sampled_from(sorted(GLUON_MASKS)), st.booleans(),
       st.sampled_from(['before', 'after', 'warm']))
def test_gluon_training_bit_identical(opt, mask, hybrid, when):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        ref = gluon_run(False, opt, mask, hybrid, when, tmp)
        got = gluon_run(True, opt, mask, hybrid, when, tmp)
    assert type(got[2].book).__name__ == 'LookupEmbedding'
    assert type(got[2].bias) is mx.gluon.nn.Embedding
    assert_runs_equal(ref[:2], got[:2])


def test_gluon_converted_layer_runs_the_lookup_when_hybridized(tmp_path):
    """The parent's graph names the lookup (it was rebuilt), and the lookup's own refusal of a
    NaN id shows it runs (MXNet's Embedding takes it)."""
    net = Net()
    net.initialize()
    net.hybridize()
    net(mx.nd.array([1]), mx.nd.array([2]))
    mo.convert_embeddings(net)
    net(mx.nd.array([1]), mx.nd.array([2]))
    net.export(str(tmp_path / 'net'))
    graph = (tmp_path / 'net-symbol.json').read_text()
    assert graph.count('"masked_opt_lookup"') == 2
    with mx.autograd.record():
        out = net(mx.nd.array([1]), mx.nd.array([np.nan]))
    out.backward()
    with pytest.raises(mx.MXNetError, match='is NaN'):
        net.book.weight.grad().asnumpy()


def test_gluon_same_parameters_and_refusals(caplog):
    net = Net()
    net.initialize()
    before = dict(net.collect_params().items())
    net.book.weight.grad_req = 'add'
    with caplog.at_level(logging.INFO, logger='masked_opt'):
        mo.convert_embeddings(net)
    assert dict(net.collect_params().items()) == before
    assert type(net.book) is mx.gluon.nn.Embedding       # grad_req='add': left to MXNet
    assert "book: grad_req='add'" in caplog.records[-1].getMessage()
    net.member.weight.grad_req = 'add'                     # set after the conversion
    with pytest.raises(ValueError, match="grad_req='add'"):
        with mx.autograd.record():
            net.member(mx.nd.array([1]))
    net.member.weight.grad_req = 'write'
    ids = mx.nd.array([1])
    ids.attach_grad()
    with pytest.raises(ValueError, match='ids have a gradient'):
        with mx.autograd.record():
            net.member(ids)
    with pytest.raises(TypeError, match='Symbol or a gluon Block'):
        mo.convert_embeddings('net')


def test_sparse_embedding_gluon_bit_identical():
    """contrib.nn.SparseEmbedding (row_sparse weight, updated on the kvstore) converts too."""
    out = []
    for convert in (False, True):
        mx.random.seed(0)
        net = mx.gluon.contrib.nn.SparseEmbedding(NI, D, prefix='se_')
        net.initialize(mx.init.Uniform(0.5))
        if convert:
            mo.convert_embeddings(net)
            assert type(net).__name__ == 'LookupSparseEmbedding'
        trainer = mx.gluon.Trainer(net.collect_params(), 'masked', dict(
            OPTS['adam'], base='adam', masks={net.weight: mo.train_rows_from(40)}),
            kvstore='local')
        ids = mx.nd.array(np.random.RandomState(0).randint(0, NI, (4, B)))
        for s in range(4):
            with mx.autograd.record():
                loss = (net(ids[s]) ** 2).sum()
            loss.backward()
            trainer.step(B)
        out.append(net.weight.row_sparse_data(mx.nd.arange(NI)).asnumpy())
    assert_same_bits(out[0], out[1], 'SparseEmbedding weight')


def test_without_native_library_model_unconverted_one_log_line():
    script = textwrap.dedent('''
        import logging, json
        logging.basicConfig(level=logging.INFO, format='LOG %(levelname)s %(message)s')
        import mxnet as mx, masked_opt as mo
        sym = mx.sym.Embedding(mx.sym.Variable('x'), input_dim=9, output_dim=2,
                               sparse_grad=True, name='e')
        assert mo.convert_embeddings(sym) is sym
        net = mx.gluon.nn.Embedding(9, 2, sparse_grad=True)
        assert type(mo.convert_embeddings(net)) is mx.gluon.nn.Embedding
        print('ok')
    ''')
    env = dict(os.environ, MASKED_OPT_NATIVE='0', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stdout
    logs = [ln for ln in proc.stdout.splitlines() if ln.startswith('LOG')]
    assert len(logs) == 2, logs        # one line per call
    assert all(ln.startswith('LOG WARNING') and 'native library not available' in ln
               and 'MASKED_OPT_NATIVE=0' in ln for ln in logs)


def test_sparse_embedding_symbol_module_bit_identical():
    """mx.sym.contrib.SparseEmbedding with a row_sparse weight variable, trained by Module."""
    def sym():
        w = mx.sym.Variable('emb_weight', stype='row_sparse')
        e = mx.sym.contrib.SparseEmbedding(mx.sym.Variable('ids'), w, input_dim=NI,
                                           output_dim=4, name='emb')
        return mx.sym.MakeLoss(mx.sym.sum(e * e))
    out = []
    for conv in (False, True):
        s = mo.convert_embeddings(sym()) if conv else sym()
        assert ('masked_opt_lookup' in ops(s)) == conv
        mx.random.seed(0)
        mod = mx.mod.Module(s, data_names=['ids'], label_names=None)
        mod.bind([('ids', (8,))])
        mod.init_params(mx.init.Uniform(0.5))
        mod.init_optimizer(optimizer='masked', optimizer_params=dict(
            OPTS['adam'], base='adam', masks={'emb_weight': mo.train_rows_from(40)}))
        rng = np.random.RandomState(0)
        for _ in range(5):
            mod.forward_backward(mx.io.DataBatch([mx.nd.array(rng.randint(0, NI, 8))]))
            mod.update()
        out.append(mod.get_params()[0]['emb_weight'].tostype('default'))
    assert_same_bits(out[0], out[1], 'emb_weight')


def test_gluon_two_cpu_contexts_bit_identical(tmp_path):
    """A Block on two CPU contexts (one Trainer, kvstore 'device'): same bits converted."""
    out = []
    for convert in (False, True):
        mx.random.seed(0)
        net = Net()
        ctx = [mx.cpu(0), mx.cpu(1)]
        net.initialize(mx.init.Uniform(0.5), ctx=ctx)
        if convert:
            mo.convert_embeddings(net)
        trainer = mx.gluon.Trainer(net.collect_params(), 'masked', dict(
            OPTS['adam'], base='adam', masks=GLUON_MASKS['rows']), kvstore='device')
        member, book, label = (mx.nd.array(a) for a in ratings(NU, NI, 64, seed=6))
        for s in range(4):
            with mx.autograd.record():
                losses = [((net(member[sl].as_in_context(c), book[sl].as_in_context(c))
                            - label[sl].as_in_context(c)) ** 2).sum()
                          for c, sl in zip(ctx, (slice(s * B, s * B + B // 2),
                                                 slice(s * B + B // 2, (s + 1) * B)),
                                           strict=True)]
            mx.autograd.backward(losses)
            trainer.step(B)
        out.append({k: p.data(ctx[1]).asnumpy() for k, p in net.collect_params().items()})
    for k in out[0]:
        assert_same_bits(out[0][k], out[1][k], k)


def test_gluon_layer_on_a_gpu_is_left(monkeypatch, caplog):
    """A layer whose Parameter lives on a GPU keeps MXNet's Embedding (the lookup is CPU-only)."""
    net = mx.gluon.nn.Embedding(NI, D, sparse_grad=True)
    net.initialize()
    monkeypatch.setattr(net.weight, 'list_ctx', lambda: [mx.gpu(0)])
    with caplog.at_level(logging.INFO, logger='masked_opt'):
        mo.convert_embeddings(net)
    assert type(net) is mx.gluon.nn.Embedding
    assert 'initialised on gpu(0)' in caplog.records[-1].getMessage()
    with pytest.raises(TypeError, match='ctx is for a Symbol'):
        mo.convert_embeddings(net, ctx=mx.cpu())


def test_masked_opt_imports_while_mxnet_is_still_importing():
    """A kvstore server imports masked_opt (unpickling the optimizer) from inside
    ``import mxnet``, before ``mx.gluon`` exists: importing the package, convert included, must
    not import mxnet.gluon. (A module-level ``from mxnet import gluon`` in convert.py broke
    every dist kvstore run with 'cannot import name np_symbol'.)"""
    script = textwrap.dedent('''
        import importlib.abc, sys
        class Hook(importlib.abc.MetaPathFinder):
            done = False
            def find_spec(self, name, path, target=None):
                if name == 'mxnet.kvstore' and not Hook.done:   # where a server starts
                    Hook.done = True
                    import masked_opt, masked_opt.convert
                    assert 'mxnet.gluon' not in sys.modules
                    print('imported')
        sys.meta_path.insert(0, Hook())
        import mxnet
    ''')
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0 and 'imported' in proc.stdout, proc.stdout


@pytest.mark.parametrize('path', ['native', 'pure'])
def test_masked_paths_take_the_lookups_gradient(path):
    """'masked' forced onto its native row_sparse path (which raises where it cannot serve a
    gradient) and onto the pure one: converted runs equal the unconverted run on each."""
    out = []
    for convert in (False, True):
        mx.random.seed(0)
        net = Net()
        net.initialize(mx.init.Uniform(0.5))
        if convert:
            mo.convert_embeddings(net)
        opt = mo.Masked(base='adam', learning_rate=0.01, masks={
            'net_book_weight': mo.train_rows_from(50) & mo.train_cols([1, 2, 3]),
            'net_member_weight': mo.train_cols([6, 7])})
        opt.step_path = path
        trainer = mx.gluon.Trainer(net.collect_params(), opt)
        member, book, label = (mx.nd.array(a) for a in ratings(NU, NI, 64, seed=7))
        for s in range(4):
            sl = slice(s * B, (s + 1) * B)
            with mx.autograd.record():
                loss = ((net(member[sl], book[sl]) - label[sl]) ** 2).sum()
            loss.backward()
            trainer.step(B)
        out.append({k: p.data().asnumpy() for k, p in net.collect_params().items()})
    for k in out[0]:
        assert_same_bits(out[0][k], out[1][k], k)


@pytest.mark.parametrize('dtype', [np.float32, np.dtype('float64'), 'float64'])
def test_gluon_layer_with_a_numpy_dtype(dtype):
    """nn.Embedding(dtype=np.float32): MXNet passes a library operator str(np.float32), which
    names no dtype; the converted layer gives the dtype's name and MXNet's output bits."""
    ref = mx.gluon.nn.Embedding(NI, D, sparse_grad=True, dtype=dtype)
    ref.initialize(mx.init.Uniform(0.5))
    net = mx.gluon.nn.Embedding(NI, D, sparse_grad=True, dtype=dtype)
    net.initialize()
    net.weight.set_data(ref.weight.data())
    mo.convert_embeddings(net)
    ids = mx.nd.array([3, 1, 3])
    for hybrid in (False, True):
        if hybrid:
            net.hybridize()
        assert_same_bits(ref(ids), net(ids), 'output')


def test_symbol_weight_computed_by_an_op_is_left(caplog):
    """A weight that is no variable cannot carry __shape__ (which the library op needs)."""
    w = mx.sym.Variable('w') * 2
    sym = mx.sym.Embedding(mx.sym.Variable('ids'), w, input_dim=NI, output_dim=D,
                           sparse_grad=True, name='e')
    with caplog.at_level(logging.INFO, logger='masked_opt'):
        assert mo.convert_embeddings(sym) is sym
    assert 'e: its weight is computed by _mul_scalar' in caplog.records[-1].getMessage()
