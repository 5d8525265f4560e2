"""masked_opt's native operators (masked_opt/_native/ops.cc) against numpy, on the bits.

Values are random bit patterns of the dtype (NaN payloads, infinities, -0.0, subnormals) plus
explicit NaN/Inf/-0.0: every op only moves values, so every bit must arrive. The op tests skip
when the library is not available, with the reason, unless ``MASKED_OPT_REQUIRE_NATIVE=1``
(CI), which turns the skip into a failure. The loader tests run either way.
"""
import logging
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits, random_bits
from hypothesis import given
from hypothesis import strategies as st

from masked_opt import native

DTYPES = ['float16', 'float32', 'float64']
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row_sparse(seed, ids, shape, dtype):
    """A RowSparseNDArray with rows `ids` (sorted, unique) of random bits; and its data."""
    data = random_bits(seed, (len(ids), shape[1]), dtype)
    if not len(ids):
        return mx.nd.sparse.zeros('row_sparse', shape, dtype=dtype), data
    arr = mx.nd.sparse.row_sparse_array((data, np.asarray(ids, np.int64)), shape=shape,
                                        dtype=dtype)
    return arr, data


@st.composite
def subset(draw, n):
    """A sorted unique subset of range(n), possibly empty, possibly all."""
    return sorted(draw(st.sets(st.integers(0, n - 1), max_size=n))) if n else []


@st.composite
def block_case(draw):
    V, D = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    lo = draw(st.integers(0, V - 1))
    hi = draw(st.integers(lo + 1, V))
    c0 = draw(st.integers(0, D - 1))
    c1 = draw(st.integers(c0 + 1, D))
    return dict(V=V, D=D, lo=lo, hi=hi, c0=c0, c1=c1, ids=draw(subset(V)),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


@st.composite
def rows_case(draw):
    R, D = draw(st.integers(1, 30)), draw(st.integers(1, 12))
    c0 = draw(st.integers(0, D - 1))
    k = draw(st.integers(1, D - c0))
    return dict(R=R, D=D, c0=c0, k=k, ids=draw(subset(R)),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


@given(case=block_case())
def test_rsp_block_matches_numpy(lib, case):
    V, D, lo, hi, c0, c1 = (case[k] for k in ('V', 'D', 'lo', 'hi', 'c0', 'c1'))
    ids = np.asarray(case['ids'], np.int64)
    grad, data = row_sparse(case['seed'], ids, (V, D), case['dtype'])
    out = native.rsp_block(grad, lo, hi, c0, c1)
    keep = (ids >= lo) & (ids < hi)
    assert out.stype == 'row_sparse' and out.shape == (hi - lo, c1 - c0)
    assert out.dtype == np.dtype(case['dtype'])
    np.testing.assert_array_equal(out.indices.asnumpy(), ids[keep] - lo)
    assert_same_bits(data[keep][:, c0:c1], out.data, 'kept rows')
    dense = np.zeros((hi - lo, c1 - c0), case['dtype'])
    dense[ids[keep] - lo] = data[keep][:, c0:c1]
    assert_same_bits(dense, out.tostype('default'), 'dense form')


@given(case=block_case())
def test_rsp_block_gather_is_rsp_block_and_the_weights_block(lib, case):
    V, D, lo, hi, c0, c1, dtype = (case[k] for k in ('V', 'D', 'lo', 'hi', 'c0', 'c1', 'dtype'))
    ids = np.asarray(case['ids'], np.int64)
    grad, _ = row_sparse(case['seed'], ids, (V, D), dtype)
    w = random_bits(case['seed'] + 1, (V, D), dtype)
    prior = random_bits(case['seed'] + 2, (hi - lo, c1 - c0), dtype)
    scratch = mx.nd.array(prior, dtype=dtype)
    out = native.rsp_block_gather(grad, mx.nd.array(w, dtype=dtype), scratch, lo, hi, c0, c1)
    alone = native.rsp_block(grad, lo, hi, c0, c1)
    np.testing.assert_array_equal(out.indices.asnumpy(), alone.indices.asnumpy())
    assert_same_bits(alone.data, out.data, 'gradient block')
    kept = ids[(ids >= lo) & (ids < hi)]
    expect = prior.copy()
    expect[kept - lo] = w[kept, c0:c1]   # the kept rows; every other row as it was
    assert_same_bits(expect, scratch, 'scratch')


@pytest.mark.parametrize('dtype', DTYPES)
def test_rsp_block_of_empty_and_of_no_kept_rows(lib, dtype):
    """Zero rows kept: a valid empty row_sparse array (usable by MXNet ops)."""
    empty = mx.nd.sparse.zeros('row_sparse', (10, 4), dtype=dtype)
    grad, _ = row_sparse(1, [0, 1, 8, 9], (10, 4), dtype)
    for g in (empty, grad):
        out = native.rsp_block(g, 2, 8, 1, 3)
        assert out.shape == (6, 2) and out.indices.shape == (0,) and out.data.shape == (0, 2)
        assert_same_bits(np.zeros((6, 2), dtype), out.tostype('default'))
        w = mx.nd.ones((6, 2), dtype=dtype)
        mx.nd.sgd_update(w, out, lr=1.0, lazy_update=True, out=w)
        assert_same_bits(np.ones((6, 2), dtype), w)


@given(case=rows_case(), margin=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_scatter_rows_into_a_slice_view(lib, case, margin):
    """scatter_rows(big[lo:hi], ...) writes into big; every other entry of big keeps its bits."""
    R, D, c0, k, dtype = (case[n] for n in ('R', 'D', 'c0', 'k', 'dtype'))
    lo = margin[0]
    hi = lo + R
    ids = np.asarray(case['ids'], np.int64)
    big_np = random_bits(case['seed'], (hi + margin[1], D), dtype)
    block = random_bits(case['seed'] + 1, (R, k), dtype)
    gblock, _ = row_sparse(case['seed'] + 2, ids, (R, k), dtype)
    big = mx.nd.array(big_np, dtype=dtype)
    view = big[lo:hi]
    ret = native.scatter_rows(view, mx.nd.array(block, dtype=dtype), gblock, c0)
    assert ret is view
    expect = big_np.copy()
    expect[lo + ids, c0:c0 + k] = block[ids]
    assert_same_bits(expect, big, 'big array')


@pytest.mark.parametrize('dtype', DTYPES)
def test_scatter_without_out_is_functional(lib, dtype):
    """Without out=weight the op returns a new array and leaves weight alone."""
    w_np = random_bits(3, (6, 5), dtype)
    block = random_bits(4, (6, 2), dtype)
    gblock, _ = row_sparse(5, [1, 4], (6, 2), dtype)
    w = mx.nd.array(w_np, dtype=dtype)
    new = mx.nd.masked_opt_scatter_rows(w, mx.nd.array(block, dtype=dtype), gblock, c0=3)
    expect = w_np.copy()
    expect[[1, 4], 3:5] = block[[1, 4]]
    assert_same_bits(expect, new, 'result')
    assert_same_bits(w_np, w, 'weight')


def test_no_host_read_during_the_calls(lib, monkeypatch):
    """None of the three waits on or reads an array on the host: results are checked after."""
    V, D, lo, hi, c0, c1 = 50, 8, 10, 40, 2, 6
    ids = np.array([3, 10, 11, 25, 39, 40, 49], np.int64)
    grad, data = row_sparse(7, ids, (V, D), 'float32')
    big_np = random_bits(8, (V, D), 'float32')
    big = mx.nd.array(big_np)
    upd = mx.nd.array(random_bits(9, (hi - lo, c1 - c0), 'float32'))
    mx.nd.waitall()

    def refuse(*args, **kwargs):
        raise AssertionError('host read during a native op call')

    with monkeypatch.context() as m:
        for name in ('asnumpy', 'asscalar', 'wait_to_read'):
            m.setattr(mx.nd.NDArray, name, refuse)
        for name in ('indices', 'data'):
            m.setattr(mx.nd.sparse.RowSparseNDArray, name, property(refuse))
        m.setattr(mx.nd, 'waitall', refuse)
        gblock = native.rsp_block(grad, lo, hi, c0, c1)
        gathered = mx.nd.zeros((hi - lo, c1 - c0))
        native.rsp_block_gather(grad, big, gathered, lo, hi, c0, c1)
        native.scatter_rows(big[lo:hi], upd, gblock, c0)
    kept = ids[(ids >= lo) & (ids < hi)]
    np.testing.assert_array_equal(gblock.indices.asnumpy(), kept - lo)
    assert_same_bits(big_np[kept, c0:c1], gathered.asnumpy()[kept - lo])
    expect = big_np.copy()
    expect[kept, c0:c1] = upd.asnumpy()[kept - lo]
    assert_same_bits(expect, big)


@pytest.mark.parametrize('call, match', [
    (lambda g, w: mx.nd.masked_opt_rsp_block(g, lo=0, hi=11, c0=0, c1=4), 'hi <= V'),
    (lambda g, w: mx.nd.masked_opt_rsp_block(g, lo=3, hi=3, c0=0, c1=4), 'lo < hi'),
    (lambda g, w: mx.nd.masked_opt_rsp_block(g, lo=0, hi=2, c0=1, c1=5), 'c1 <= D'),
    (lambda g, w: mx.nd.masked_opt_rsp_block(g, lo=-1, hi=2, c0=0, c1=1), 'integer >= 0'),
    (lambda g, w: mx.nd.masked_opt_rsp_block(g, hi=2, c0=0, c1=1), "missing integer"),
    (lambda g, w: mx.nd.masked_opt_rsp_block(w, lo=0, hi=2, c0=0, c1=1), 'row_sparse'),
    (lambda g, w: mx.nd.masked_opt_rsp_block(g.astype('int32'), lo=0, hi=2, c0=0, c1=1),
     'float16, float32 or float64'),
    (lambda g, w: mx.nd.masked_opt_scatter_rows(w, w, g, c0=1), 'does not fit'),
    (lambda g, w: mx.nd.masked_opt_scatter_rows(w[:5], w[:5], g, c0=0), 'does not fit'),
    (lambda g, w: mx.nd.masked_opt_scatter_rows(w, w[:, :2], g, c0=0), "gblock's shape"),
    (lambda g, w: mx.nd.masked_opt_scatter_rows(w.astype('float64'), w, g, c0=0),
     'share one dtype'),
    (lambda g, w: mx.nd.masked_opt_rsp_block_gather(g, w, w[:, :2], lo=0, hi=10, c0=0, c1=4),
     "scratch the block's"),
    (lambda g, w: mx.nd.masked_opt_rsp_block_gather(g, w.astype('float64'), w, lo=0, hi=10,
                                                    c0=0, c1=4), 'share one dtype'),
])
def test_bad_arguments_raise_clear_errors(lib, call, match):
    g, _ = row_sparse(0, [1, 2], (10, 4), 'float32')
    w = mx.nd.zeros((10, 4))
    with pytest.raises(mx.MXNetError, match=match):
        call(g, w).wait_to_read()


# ------------------------------------------------------------------------------ the loader
def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv('MASKED_OPT_NATIVE', '0')
    assert native.available() is False
    st_ = native.status()
    assert not st_.enabled and not st_.loaded and 'MASKED_OPT_NATIVE=0' in st_.reason
    with pytest.raises(RuntimeError, match='unavailable'):
        native.rsp_block(mx.nd.sparse.zeros('row_sparse', (2, 2)), 0, 1, 0, 1)


def _fresh_process(env):
    """available() and status() of a new process importing the checkout with `env` added."""
    code = textwrap.dedent('''
        import mxnet as mx
        from masked_opt import native
        sgd, retain = mx.nd.sgd_update, mx.nd.sparse.retain
        ok = native.available()
        st = native.status()
        kept = mx.nd.sgd_update is sgd and mx.nd.sparse.retain is retain
        print(ok, st.loaded, st.path, kept, sep='|')
        print(st.reason)
    ''')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=dict(os.environ, **env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
    head, reason = out.stdout.strip().split('\n', 1)
    return head.split('|'), reason


def _stale_library(tmp_path):
    cxx = os.environ.get('CXX', 'g++')
    src = tmp_path / 'stale.cc'
    src.write_text('extern "C" int masked_opt_ops_abi() { return %d; }\n' % (native.ABI + 99))
    lib_path = tmp_path / 'libstale.so'
    try:
        subprocess.run([cxx, '-shared', '-fPIC', str(src), '-o', str(lib_path)], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('no C++ compiler (%s) to build a stale library' % cxx)
    return lib_path


@pytest.mark.parametrize('kind', ['missing', 'not_a_library', 'stale_abi'])
def test_bad_explicit_library_path_is_refused_with_a_reason(tmp_path, kind):
    if kind == 'missing':
        path, expect = tmp_path / 'nope' / 'libmasked_opt_ops.so', 'no file'
    elif kind == 'not_a_library':
        path, expect = tmp_path / 'libmasked_opt_ops.so', 'cannot load'
        path.write_text('not an ELF file')
    else:
        path, expect = _stale_library(tmp_path), 'has ABI %d' % (native.ABI + 99)
    (ok, loaded, where, _), reason = _fresh_process({'MASKED_OPT_NATIVE_LIB': str(path),
                                                     'MASKED_OPT_NATIVE': '1'})
    assert (ok, loaded, where) == ('False', 'False', str(path))
    assert expect in reason and 'MASKED_OPT_NATIVE_LIB' in reason


def test_explicit_library_path_is_loaded(lib):
    """Loaded from $MASKED_OPT_NATIVE_LIB; MXNet's own functions stay the same objects."""
    path = native.status().path
    (ok, loaded, where, kept), reason = _fresh_process({'MASKED_OPT_NATIVE_LIB': path,
                                                        'MASKED_OPT_NATIVE': '1'})
    assert (ok, loaded, where, kept, reason) == ('True', 'True', path, 'True', 'None')


def test_notify_fallback_logs_once(monkeypatch, caplog):
    monkeypatch.setenv('MASKED_OPT_NATIVE', '0')
    monkeypatch.setattr(native, '_notified', False)
    with caplog.at_level(logging.WARNING, logger='masked_opt'):
        results = [native.notify_fallback() for _ in range(3)]
    assert results == [True, False, False]
    records = [r for r in caplog.records if r.name == 'masked_opt']
    assert len(records) == 1
    assert 'pure MXNet path' in records[0].getMessage()
    assert 'MASKED_OPT_NATIVE=0' in records[0].getMessage()


def test_notify_fallback_is_silent_when_native_is_used(lib, monkeypatch, caplog):
    monkeypatch.setenv('MASKED_OPT_NATIVE', '1')
    monkeypatch.setattr(native, '_notified', False)
    with caplog.at_level(logging.WARNING, logger='masked_opt'):
        assert native.notify_fallback() is False
    assert not [r for r in caplog.records if r.name == 'masked_opt']


@pytest.mark.parametrize('flag, expect', [('1', 'loaded from'), ('0', 'MASKED_OPT_NATIVE=0')])
def test_masked_opt_info_says_which_path_runs(lib, flag, expect):
    env = dict(os.environ, MASKED_OPT_NATIVE=flag)
    out = subprocess.run([sys.executable, '-m', 'masked_opt', 'info'], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'native sparse operators:' in out.stdout and expect in out.stdout


def test_every_installed_copy_is_a_candidate(monkeypatch, tmp_path):
    """A checkout built in place has its own masked_opt.egg-info, found first on sys.path and
    pointing back at the checkout: the installed copy behind it must still be tried (found in
    a CI run where the library was installed but not found)."""
    class Dist:
        def __init__(self, root):
            self.root = root

        def locate_file(self, rel):
            return os.path.join(self.root, rel)

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(native.__file__)))
    site = str(tmp_path / 'site-packages')
    monkeypatch.delenv('MASKED_OPT_NATIVE_LIB', raising=False)
    monkeypatch.setattr(native.importlib.metadata, 'distributions',
                        lambda name: [Dist(checkout), Dist(site)])
    paths, explicit = native._candidates()
    assert not explicit
    assert paths == [os.path.join(checkout, 'masked_opt', '_native', native.LIB_NAME),
                     os.path.join(site, 'masked_opt', '_native', native.LIB_NAME)]


def test_loads_and_runs_after_horovod_mxnet():
    """``import horovod.mxnet`` loads libmxnet with RTLD_GLOBAL; a library built without
    -Bsymbolic then resolved lib_api's symbols to libmxnet's and mx.library.load crashed
    (segfault). In a fresh process: horovod first, then the native path on one op."""
    import importlib.util
    if importlib.util.find_spec('horovod') is None:   # not imported here: see above
        if os.environ.get('MASKED_OPT_REQUIRE_HOROVOD') == '1':
            raise RuntimeError('MASKED_OPT_REQUIRE_HOROVOD=1 but horovod is not installed')
        pytest.skip('horovod is not installed')
    code = textwrap.dedent('''
        import horovod.mxnet
        import mxnet as mx
        from masked_opt import native
        assert native.available(), native.status()
        g = mx.nd.sparse.row_sparse_array(([[1.0, 2.0]], [3]), shape=(5, 2))
        out = native.rsp_block(g, 2, 5, 0, 2)
        assert out.indices.asnumpy().tolist() == [1], out.indices.asnumpy()
        print('ok')
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(native.__file__)))
    assert out.returncode == 0 and 'ok' in out.stdout, (out.returncode, out.stderr[-2000:])
