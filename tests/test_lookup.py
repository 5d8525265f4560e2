"""The native lookup (masked_opt/_native/lookup.cc) against MXNet's own Embedding, on the bits.

Forward outputs and row_sparse weight gradients of ``mx.nd.masked_opt_lookup`` must equal those
of ``mx.nd.Embedding(sparse_grad=True)`` bit for bit (ids of every dtype and 1-D to 3-D shape,
duplicates, one id, all ids equal; output gradients of random bit patterns with NaN, Inf,
-0.0), and odd ids must behave as MXNet 1.9.1 treats them: the forward clips, the backward
refuses what MXNet's bound check refuses. A NaN id, undefined in MXNet's backward, is refused.
Bad shapes, dtypes and attributes give an MXNetError naming the op, never a crash.
"""
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits
from hypothesis import given
from hypothesis import strategies as st
from mxnet import autograd

ID_DTYPES = ['float32', 'float64', 'float16', 'uint8', 'int8', 'int32', 'int64']
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Every test needs the native library (conftest's `lib`: a skip, or a failure in CI).
pytestmark = pytest.mark.usefixtures('lib')


def random_bits(rng, shape, dtype):
    """Random bit patterns of `dtype` with NaN, +-Inf and -0.0 sprinkled in."""
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    a = rng.integers(0, np.iinfo(uint).max, size=shape, dtype=uint, endpoint=True).view(dtype)
    flat = a.reshape(-1)
    where = rng.choice(flat.size, size=min(4, flat.size), replace=False)
    flat[where] = np.array([np.nan, np.inf, -np.inf, -0.0], dtype)[:where.size]
    return a


def run(op, ids, weight, ograd):
    """(output, gradient row ids, gradient rows) of `op` ('Embedding' or the lookup), bound as
    Module binds it, or the MXNetError it raised. (MXNet 1.9.1's imperative backward of a
    float64 Embedding fails its own shape check, so the comparison runs bound graphs.)"""
    V, D = weight.shape
    dt = weight.dtype.name
    sym = getattr(mx.sym, op)(mx.sym.Variable('data'),
                              mx.sym.Variable('weight', shape=(V, D), dtype=dt),
                              input_dim=V, output_dim=D, sparse_grad=True, dtype=dt)
    grad = mx.nd.sparse.zeros('row_sparse', (V, D), dtype=dt)
    try:
        exe = sym.bind(mx.cpu(), args={'data': mx.nd.array(ids, dtype=ids.dtype),
                                       'weight': mx.nd.array(weight, dtype=dt)},
                       args_grad={'weight': grad}, grad_req={'data': 'null', 'weight': 'write'})
        exe.forward(is_train=True)
        exe.backward(mx.nd.array(ograd, dtype=ograd.dtype))
        return exe.outputs[0].asnumpy(), grad.indices.asnumpy(), grad.data.asnumpy()
    except mx.MXNetError as e:
        return e


def assert_same(ref, got):
    if isinstance(ref, Exception) or isinstance(got, Exception):
        assert isinstance(ref, Exception) and isinstance(got, Exception), (ref, got)
        assert 'masked_opt_lookup' in str(got)
        return
    assert_same_bits(ref[0], got[0], 'forward output')
    assert ref[1].tolist() == got[1].tolist(), 'gradient row ids'
    assert_same_bits(ref[2], got[2], 'gradient rows')


@st.composite
def cases(draw, weight_dtypes=('float32', 'float64')):
    id_dtype = draw(st.sampled_from(ID_DTYPES))
    V = draw(st.integers(1, 120))   # int8 holds V - 1: MXNet's check casts it to the ids' dtype
    D = draw(st.integers(1, 6))
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    kind = draw(st.sampled_from(['any', 'one id', 'all equal', 'few distinct']))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    n = int(np.prod(shape))
    if kind == 'one id':
        shape, n = (1,), 1
    hi = {'few distinct': min(V, 3)}.get(kind, V)
    ids = rng.integers(0, hi, n)
    if kind == 'all equal':
        ids[:] = ids[0]
    wdtype = draw(st.sampled_from(weight_dtypes))
    weight = random_bits(rng, (V, D), wdtype)
    ograd = random_bits(rng, shape + (D,), wdtype)
    return ids.reshape(shape).astype(id_dtype), weight, ograd


@given(cases())
def test_forward_and_gradient_bits_equal_mxnet_embedding(case):
    ids, weight, ograd = case
    assert_same(run('Embedding', ids, weight, ograd), run('masked_opt_lookup', ids, weight, ograd))


@pytest.mark.parametrize('id_dtype', ID_DTYPES)
def test_duplicates_sum_in_batch_order_from_positive_zero(id_dtype):
    """Three rows of one id: the order of the adds and the sign of zero are MXNet's."""
    ids = np.array([2, 0, 2, 2], id_dtype)
    weight = np.arange(12, dtype='float32').reshape(3, 4)
    ograd = np.array([[1e8, -0.0, 1, np.nan], [5, 5, 5, 5], [-1e8, -0.0, 1e-8, 1],
                      [1, -0.0, -1, np.inf]], 'float32')
    ref, got = run('Embedding', ids, weight, ograd), run('masked_opt_lookup', ids, weight, ograd)
    assert_same(ref, got)
    assert got[1].tolist() == [0, 2]
    assert np.signbit(got[2][1, 1]) == np.signbit(np.float32(0) + np.float32(-0.0))


@given(st.sampled_from(ID_DTYPES), st.integers(1, 400), st.data())
def test_odd_ids_behave_as_mxnet(id_dtype, V, data):
    """Negative, fractional, huge and out-of-range ids: the forward clips as MXNet does and the
    backward refuses exactly what MXNet's bound check (in the ids' own dtype) refuses."""
    info = np.finfo(id_dtype) if id_dtype.startswith('float') else np.iinfo(id_dtype)
    values = st.one_of(st.integers(-3, V + 3), st.floats(-V - 3, V + 3),
                       st.sampled_from([float(info.min), float(info.max), -0.0, 1e30, -1e30,
                                        np.inf, -np.inf]))
    raw = data.draw(st.lists(values, min_size=1, max_size=6))
    with np.errstate(all='ignore'):
        ids = np.array(raw, 'float64')
        if not id_dtype.startswith('float'):
            ids = np.clip(np.trunc(np.nan_to_num(ids)), info.min, info.max)
        ids = ids.astype(id_dtype)
    weight = np.arange(V * 2, dtype='float32').reshape(V, 2)
    x, w = mx.nd.array(ids, dtype=id_dtype), mx.nd.array(weight)
    assert_same_bits(mx.nd.Embedding(x, w, input_dim=V, output_dim=2),
                     mx.nd.masked_opt_lookup(x, w, input_dim=V, output_dim=2), 'forward')
    ograd = np.ones(ids.shape + (2,), 'float32')
    assert_same(run('Embedding', ids, weight, ograd), run('masked_opt_lookup', ids, weight, ograd))


@pytest.mark.parametrize('id_dtype', ['float16', 'float32', 'float64'])
def test_nan_id_refused_in_backward_and_row_zero_forward(id_dtype):
    """MXNet's backward indexes its workspace at INT64_MIN for a NaN id (undefined): refused.
    Its forward reads row 0 (x86's conversion of NaN, clipped): so does the lookup's."""
    ids = np.array([1, np.nan], id_dtype)
    weight = np.arange(6, dtype='float32').reshape(3, 2)
    w = mx.nd.array(weight)
    fwd = mx.nd.masked_opt_lookup(mx.nd.array(ids, dtype=id_dtype), w, input_dim=3, output_dim=2)
    ref = mx.nd.Embedding(mx.nd.array(ids, dtype=id_dtype), w, input_dim=3, output_dim=2)
    assert_same_bits(ref, fwd)
    got = run('masked_opt_lookup', ids, weight, np.ones((2, 2), 'float32'))
    assert isinstance(got, mx.MXNetError) and 'is NaN' in str(got)


def test_float16_weight_forward_equal_backward_refused_as_mxnet():
    ids = np.array([0, 2, 2], 'int32')
    weight = np.arange(6, dtype='float16').reshape(3, 2)
    ograd = np.ones((3, 2), 'float16')
    ref, got = run('Embedding', ids, weight, ograd), run('masked_opt_lookup', ids, weight, ograd)
    assert isinstance(ref, mx.MXNetError) and isinstance(got, mx.MXNetError)
    assert 'float16' in str(got)
    x, w = mx.nd.array(ids, dtype='int32'), mx.nd.array(weight, dtype='float16')
    assert_same_bits(mx.nd.Embedding(x, w, input_dim=3, output_dim=2),
                     mx.nd.masked_opt_lookup(x, w, input_dim=3, output_dim=2))


@given(cases(), st.floats(0, 1))
def test_row_sparse_weight_as_sparse_embedding(case, keep):
    """A row_sparse weight (SparseEmbedding's): stored rows copied, absent rows +0.0, and
    out-of-range ids refused in the forward, as MXNet's Embedding with that weight."""
    ids, weight, ograd = case
    rng = np.random.default_rng(int(keep * 1e6))
    rows = np.flatnonzero(rng.random(weight.shape[0]) < keep)
    w = mx.nd.sparse.row_sparse_array((weight[rows], rows), shape=weight.shape,
                                      dtype=weight.dtype)
    x = mx.nd.array(ids, dtype=ids.dtype)
    kw = dict(input_dim=weight.shape[0], output_dim=weight.shape[1])
    assert_same_bits(mx.nd.Embedding(x, w, **kw), mx.nd.masked_opt_lookup(x, w, **kw))
    bad = mx.nd.array([weight.shape[0]], dtype='int64')
    if len(rows):
        with pytest.raises(mx.MXNetError, match='masked_opt_lookup'):
            mx.nd.masked_opt_lookup(bad, w, **kw).asnumpy()


BAD_ATTRS = [dict(input_dim=0, output_dim=2), dict(input_dim=-1, output_dim=2),
             dict(input_dim='x', output_dim=2), dict(output_dim=2), dict(input_dim=3),
             dict(input_dim=4, output_dim=2),
             dict(input_dim=3, output_dim=3)]


@given(st.sampled_from(BAD_ATTRS + [None]),
       st.sampled_from([(3, 2), (3,), (3, 2, 1), (6,), (2, 3)]),
       st.sampled_from(['float32', 'int32', 'uint8', 'int64', 'bool']),
       st.sampled_from(['float32', 'float64', 'int32', 'uint8']),
       st.lists(st.integers(-5, 10), min_size=1, max_size=4))
def test_fuzz_bad_input_is_an_error_never_a_crash(attrs, wshape, wdtype, id_dtype, ids):
    """Whatever the attributes, shapes and dtypes, the op answers or raises MXNetError naming
    itself (its checks run in MXNet's shape/type callbacks and in the kernel)."""
    attrs = attrs or dict(input_dim=3, output_dim=2)
    w = mx.nd.zeros(wshape, dtype=wdtype)
    w.attach_grad(stype='row_sparse')
    x = mx.nd.array(ids, dtype=id_dtype)
    try:
        with autograd.record():
            out = mx.nd.masked_opt_lookup(x, w, **attrs)
        out.backward()
        w.grad.asnumpy()
    except mx.MXNetError as e:
        assert 'masked_opt_lookup' in str(e)
        return
    assert wshape == (3, 2) and wdtype.startswith('float') and attrs == dict(input_dim=3,
                                                                             output_dim=2)
    assert all(0 <= i <= 2 for i in ids)


def test_two_lookups_at_once_are_reentrant():
    """Several engine threads run lookups concurrently: every gradient still equals MXNet's."""
    script = textwrap.dedent('''
        import mxnet as mx, numpy as np
        from mxnet import autograd
        from masked_opt import native
        assert native.available()
        rng = np.random.default_rng(0)
        arrays = []
        for k in range(16):
            ids = mx.nd.array(rng.integers(0, 5000, 2048))
            for op in ('Embedding', 'masked_opt_lookup'):
                w = mx.nd.array(rng.standard_normal((5000, 8)) if op == 'Embedding' else w0)
                w0 = w
                w.attach_grad(stype='row_sparse')
                with autograd.record():
                    out = getattr(mx.nd, op)(ids, w, input_dim=5000, output_dim=8,
                                             sparse_grad=True)
                out.backward(out * 3)
                arrays.append(w.grad)
        for a, b in zip(arrays[::2], arrays[1::2]):
            assert (a.indices.asnumpy() == b.indices.asnumpy()).all()
            assert (a.data.asnumpy().view('uint32') == b.data.asnumpy().view('uint32')).all()
        print('ok')
    ''')
    env = dict(os.environ, MXNET_CPU_WORKER_NTHREADS='4', PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stdout


def test_gradient_is_batch_sized_at_ten_million_rows():
    """The gradient holds the batch's rows only (no table-sized buffer is part of it)."""
    w = mx.nd.zeros((10_000_000, 2))
    w.attach_grad(stype='row_sparse')
    with autograd.record():
        out = mx.nd.masked_opt_lookup(mx.nd.array([9_999_999, 3, 3]), w, input_dim=10_000_000,
                                      output_dim=2)
    out.backward()
    assert w.grad.indices.asnumpy().tolist() == [3, 9_999_999]
    assert as_bits(w.grad.data).tolist() == as_bits(np.array([[2, 2], [1, 1]], 'float32')).tolist()


@pytest.mark.parametrize('attrs, message', [
    (dict(input_dim=4), "missing integer attribute 'output_dim' (Embedding's)"),
    (dict(input_dim=0, output_dim=3), "attribute 'input_dim' must be an integer in [1, 2^31), "
                                      "got '0'"),
    (dict(input_dim=4, output_dim='3x'), "attribute 'output_dim' must be an integer in "
                                         "[1, 2^31), got '3x'")])
def test_bad_dims_are_refused_naming_the_attribute(attrs, message):
    with pytest.raises(mx.MXNetError) as err:
        mx.nd.masked_opt_lookup(mx.nd.array([0]), mx.nd.zeros((4, 3)), **attrs)
    assert 'masked_opt_lookup: ' + message in str(err.value)
