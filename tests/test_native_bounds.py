"""Every native operator, given anything: the right result, or a clear error and nothing written.

A C++ operator must never read or write outside its arrays, whatever it is given. Hypothesis
draws each operator's inputs freely -- shapes that disagree (rows, columns, 1-D and 3-D),
dtypes that differ (float16/32/64, int32), dense where row_sparse is expected, row ids in any
order, repeated, negative or past the end, and ranges anywhere (negative, empty, huge) -- and
a predicate written here from the operators' documented contract says whether the call is
well-formed. Well-formed calls must give numpy's answer on the bits; every other call must
raise ``MXNetError`` naming the operator (at the call, or at the first read when only the
engine can see the problem, as with row ids) and leave the arrays it writes in place
(``weight`` for ``scatter_rows``, ``scratch`` for ``rsp_block_gather``) with their bits.
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from hypothesis import given
from hypothesis import strategies as st

from masked_opt import native

if not native.available():   # CI sets MASKED_OPT_REQUIRE_NATIVE=1: conftest fails the run
    pytest.skip('native library not available: %s' % native.status().reason,
                allow_module_level=True)

FLOATS = ['float16', 'float32', 'float64']
DTYPES = FLOATS + ['int32']
BIG = 2 ** 62


def _values(rng, shape, dtype):
    return (rng.normal(size=shape) * 10).astype(dtype)


def _dense(rng, shape, dtype):
    return mx.nd.array(_values(rng, shape, dtype), dtype=dtype)


def _rsp(rng, ids, shape, dtype):
    data = _values(rng, (len(ids),) + tuple(shape[1:]), dtype)
    return mx.nd.sparse.row_sparse_array((data, np.asarray(ids, np.int64)), shape=shape,
                                         dtype=dtype), data


def _ids_ok(ids, rows):
    ids = np.asarray(ids, np.int64)
    return bool(np.all((ids >= 0) & (ids < rows)) and np.all(np.diff(ids) > 0))


@st.composite
def shapes(draw, near):
    """A shape near ``near`` (2-D): often exactly it, else other rows/cols or other ndim."""
    how = draw(st.sampled_from(['same'] * 4 + ['rows', 'cols', '1d', '3d']))
    r, c = near
    if how == 'rows':
        return (draw(st.integers(1, r + 3)), c)
    if how == 'cols':
        return (r, draw(st.integers(1, c + 3)))
    if how == '1d':
        return (r,)
    if how == '3d':
        return (r, c, 2)
    return (r, c)


@st.composite
def row_ids(draw, rows):
    if draw(st.booleans()):
        return sorted(draw(st.sets(st.integers(0, rows - 1), max_size=rows)))
    return draw(st.lists(st.integers(-3, rows + 3), max_size=8))


@st.composite
def ranges(draw, rows, cols):
    """(lo, hi, c0, c1): usually inside (rows, cols), sometimes anywhere."""
    def one(n):
        if draw(st.integers(0, 4)):
            a = draw(st.integers(0, n - 1))
            return a, draw(st.integers(a + 1, n))
        edge = st.sampled_from([-1, 0, 1, n, n + 1, BIG, 2 ** 63 - 1])
        return draw(edge), draw(edge)
    return one(rows) + one(cols)


def _dtype(draw, base):
    return base if draw(st.integers(0, 5)) else draw(st.sampled_from(DTYPES))


def _call(fn):
    """Run ``fn`` and wait for its result; the MXNetError it raised, or None."""
    try:
        out = fn()
        out.wait_to_read()
        if out.stype == 'row_sparse':
            out.indices.asnumpy()
        return None, out
    except mx.MXNetError as err:
        mx.nd.waitall()
        return err, None


def _refused(err, op):
    assert err is not None, '%s accepted a malformed call' % op
    assert op in str(err), 'the error does not name %s: %s' % (op, str(err)[-300:])


@st.composite
def block_cases(draw):
    V, D = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(FLOATS))
    g_shape = draw(shapes((V, D)))
    return dict(V=V, D=D, dtype=dtype, g_shape=g_shape, g_dtype=_dtype(draw, dtype),
                ids=draw(row_ids(g_shape[0])), r=draw(ranges(V, D)),
                w_shape=draw(shapes((V, D))), w_dtype=_dtype(draw, dtype),
                w_stype=draw(st.sampled_from(['default'] * 5 + ['row_sparse'])),
                s_dtype=_dtype(draw, dtype), s_delta=draw(st.sampled_from(
                    [(0, 0)] * 4 + [(1, 0), (0, 1), (-1, 0)])),
                g_dense=draw(st.integers(0, 7)) == 0, seed=draw(st.integers(0, 2 ** 16)))


def _grad(rng, case):
    if case['g_dense']:
        return _dense(rng, case['g_shape'], case['g_dtype']), None
    return _rsp(rng, case['ids'], case['g_shape'], case['g_dtype'])


def _block_ok(case):
    lo, hi, c0, c1 = case['r']
    shape = case['g_shape']
    return (not case['g_dense'] and len(shape) == 2 and case['g_dtype'] in FLOATS
            and 0 <= lo < hi <= shape[0] and 0 <= c0 < c1 <= shape[1]
            and _ids_ok(case['ids'], shape[0]))


@given(case=block_cases())
def test_rsp_block_given_anything(case):
    rng = np.random.RandomState(case['seed'])
    grad, data = _grad(rng, case)
    lo, hi, c0, c1 = case['r']
    err, out = _call(lambda: mx.nd.masked_opt_rsp_block(grad, lo=lo, hi=hi, c0=c0, c1=c1))
    if not _block_ok(case):
        _refused(err, 'masked_opt_rsp_block')
        return
    assert err is None, err
    ids = np.asarray(case['ids'], np.int64)
    keep = (ids >= lo) & (ids < hi)
    np.testing.assert_array_equal(out.indices.asnumpy(), ids[keep] - lo)
    assert_same_bits(data[keep][:, c0:c1], out.data, 'kept rows')


@given(case=block_cases())
def test_rsp_block_gather_given_anything(case):
    rng = np.random.RandomState(case['seed'])
    grad, data = _grad(rng, case)
    lo, hi, c0, c1 = case['r']
    weight = _dense(rng, case['w_shape'], case['w_dtype'])
    if case['w_stype'] == 'row_sparse':
        weight = weight.tostype('row_sparse')
    rows = max(hi - lo, 1) + case['s_delta'][0] if hi < BIG else 2
    cols = max(c1 - c0, 1) + case['s_delta'][1] if c1 < BIG else 2
    scratch_np = _values(rng, (max(rows, 1), max(cols, 1)), case['s_dtype'])
    scratch = mx.nd.array(scratch_np, dtype=case['s_dtype'])
    err, out = _call(lambda: mx.nd.masked_opt_rsp_block_gather(grad, weight, scratch, lo=lo,
                                                               hi=hi, c0=c0, c1=c1))
    ok = (_block_ok(case) and case['w_stype'] == 'default'
          and case['w_shape'] == case['g_shape'] and case['w_dtype'] == case['g_dtype']
          and case['s_dtype'] == case['g_dtype'] and scratch_np.shape == (hi - lo, c1 - c0))
    if not ok:
        _refused(err, 'masked_opt_rsp_block_gather')
        assert_same_bits(scratch_np, scratch, 'scratch of a refused call')
        return
    assert err is None, err
    ids = np.asarray(case['ids'], np.int64)
    kept = ids[(ids >= lo) & (ids < hi)]
    expect = scratch_np.copy()
    expect[kept - lo] = weight.asnumpy()[kept, c0:c1]
    assert_same_bits(expect, scratch, 'scratch')
    assert_same_bits(data[(ids >= lo) & (ids < hi)][:, c0:c1], out.data, 'gradient block')


@st.composite
def scatter_cases(draw):
    R, D = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(FLOATS))
    c0 = draw(st.sampled_from([0, 0, 1, 2, D - 1, D, BIG, 2 ** 63 - 1]))
    k = draw(st.integers(1, D))
    gb_shape = draw(shapes((R, k)))
    return dict(R=R, D=D, k=k, c0=c0, w_shape=draw(shapes((R, D))), w_dtype=dtype,
                b_shape=draw(shapes((R, k))), b_dtype=_dtype(draw, dtype),
                gb_shape=gb_shape, gb_dtype=_dtype(draw, dtype), ids=draw(row_ids(gb_shape[0])),
                swap=draw(st.integers(0, 7)) == 0, seed=draw(st.integers(0, 2 ** 16)))


@given(case=scatter_cases())
def test_scatter_rows_given_anything(case):
    rng = np.random.RandomState(case['seed'])
    w_np = _values(rng, case['w_shape'], case['w_dtype'])
    weight = mx.nd.array(w_np, dtype=case['w_dtype'])
    block_np = _values(rng, case['b_shape'], case['b_dtype'])
    block = mx.nd.array(block_np, dtype=case['b_dtype'])
    gblock, _ = _rsp(rng, case['ids'], case['gb_shape'], case['gb_dtype'])
    if case['swap']:   # storage types the wrong way round (not tostype: MXNet's own
        # cast_storage aborts the process on a row_sparse array with ids out of range)
        block = block.tostype('row_sparse')
        gblock = _dense(rng, case['gb_shape'], case['gb_dtype'])
    c0 = case['c0']
    err, _ = _call(lambda: mx.nd.masked_opt_scatter_rows(weight, block, gblock, c0=c0,
                                                         out=weight))
    ws, bs = case['w_shape'], case['b_shape']
    ok = (not case['swap'] and len(ws) == 2 and len(bs) == 2 and bs == case['gb_shape']
          and bs[0] == ws[0] and case['b_dtype'] == case['w_dtype'] == case['gb_dtype']
          and c0 + bs[1] <= ws[1] and _ids_ok(case['ids'], bs[0]))
    if not ok:
        _refused(err, 'masked_opt_scatter_rows')
        assert_same_bits(w_np, weight, 'weight of a refused call')
        return
    assert err is None, err
    ids = np.asarray(case['ids'], np.int64)
    expect = w_np.copy()
    expect[ids, c0:c0 + bs[1]] = block_np[ids]
    assert_same_bits(expect, weight, 'weight')


def _arrays():
    rng = np.random.RandomState(3)
    g, _ = _rsp(rng, [1, 4, 7], (10, 4), 'float32')
    return g, _dense(rng, (10, 4), 'float32'), rng


# Each operator, each input given a shape that disagrees with the others (the mutant list's
# "every native operator given arrays whose shapes disagree"); nothing written, clear error.
DISAGREE = {
    'rsp_block, grad 1-D': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block(
        _rsp(rng, [1], (10,), 'float32')[0], lo=0, hi=2, c0=0, c1=1),
    'rsp_block, block past grad': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block(
        g, lo=8, hi=11, c0=0, c1=4),
    'gather, weight rows': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block_gather(
        g, w[:9], s, lo=2, hi=8, c0=1, c1=3),
    'gather, weight cols': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block_gather(
        g, _dense(rng, (10, 5), 'float32'), s, lo=2, hi=8, c0=1, c1=3),
    'gather, scratch rows': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block_gather(
        g, w, s, lo=2, hi=7, c0=1, c1=3),
    'gather, scratch cols': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block_gather(
        g, w, s, lo=2, hi=8, c0=1, c1=4),
    'gather, grad rows': lambda g, w, s, rng: mx.nd.masked_opt_rsp_block_gather(
        _rsp(rng, [1], (12, 4), 'float32')[0], w, s, lo=2, hi=8, c0=1, c1=3),
    'scatter, block rows': lambda g, w, s, rng: mx.nd.masked_opt_scatter_rows(
        w, _dense(rng, (9, 2), 'float32'), _rsp(rng, [1], (9, 2), 'float32')[0], c0=0, out=w),
    'scatter, block cols past weight': lambda g, w, s, rng: mx.nd.masked_opt_scatter_rows(
        w, _dense(rng, (10, 2), 'float32'), _rsp(rng, [1], (10, 2), 'float32')[0], c0=3,
        out=w),
    'scatter, gblock shape': lambda g, w, s, rng: mx.nd.masked_opt_scatter_rows(
        w, _dense(rng, (10, 2), 'float32'), _rsp(rng, [1], (10, 3), 'float32')[0], c0=0,
        out=w),
    'scatter, gblock 3-D': lambda g, w, s, rng: mx.nd.masked_opt_scatter_rows(
        w, _dense(rng, (10, 2), 'float32'), _rsp(rng, [1], (10, 2, 2), 'float32')[0], c0=0,
        out=w),
    'scatter, out of another shape': lambda g, w, s, rng: mx.nd.masked_opt_scatter_rows(
        w, _dense(rng, (10, 2), 'float32'), _rsp(rng, [1], (10, 2), 'float32')[0], c0=0,
        out=s),
}


@pytest.mark.parametrize('name', sorted(DISAGREE))
def test_every_op_refuses_shapes_that_disagree(name):
    g, w, rng = _arrays()
    s = _dense(rng, (6, 2), 'float32')
    w_np, s_np = w.asnumpy(), s.asnumpy()
    err, _ = _call(lambda: DISAGREE[name](g, w, s, rng))
    assert err is not None, '%s: accepted' % name
    assert 'masked_opt_' in str(err) or 'shape' in str(err).lower(), str(err)[-300:]
    assert_same_bits(w_np, w, 'weight')
    assert_same_bits(s_np, s, 'scratch')
