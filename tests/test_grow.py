"""Growing tables: old rows bit-identical, new rows distributed as promised, bad input refused.

Statistical tolerances (new rows drawn by 'mean_cov' / 'normal_like'): the new rows are
whitened with the old rows' mean and covariance; whitened coordinates must then be standard
normal. With n samples, each mean is N(0, 1/n) and each covariance entry has a standard
deviation of at most sqrt(2/n): we allow 5 standard deviations (a false alarm once in ~10^6
seeds per entry), and scipy.stats.kstest against N(0, 1) / chi2(rank) at p > 1e-4. The seeds
are fixed, so the tests are deterministic; the tolerances say they would hold for any seed.
"""
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
import scipy.stats
from bits import as_bits, assert_same_bits
from hypothesis import given
from hypothesis import strategies as st
from models import forum_mf, mf_iter, ratings
from mxnet.gluon.contrib.nn import SparseEmbedding

import masked_opt as mo


def _correlated(n, dim, seed=0, rank=None, offset=1.0):
    """Rows from a normal with a random full (or rank-``rank``) covariance and a non-zero mean."""
    rng = np.random.default_rng(seed)
    rank = dim if rank is None else rank
    mixing = rng.normal(size=(rank, dim))
    mean = offset * rng.normal(size=dim)
    return mean + rng.normal(size=(n, rank)) @ mixing


def _whiten(rows, mean, cov):
    """Coordinates of ``rows`` along the covariance's non-null eigenvectors, unit variance."""
    val, vec = np.linalg.eigh(cov)
    keep = val > 1e-9 * val.max()
    return (rows - mean) @ vec[:, keep] / np.sqrt(val[keep]), vec[:, ~keep]


def _assert_standard_normal(z):
    n, k = z.shape
    assert np.all(np.abs(z.mean(axis=0)) < 5 / np.sqrt(n)), z.mean(axis=0)
    assert np.all(np.abs(np.cov(z, rowvar=False).reshape(k, k) - np.eye(k))
                  < 5 * np.sqrt(2.0 / n))
    for j in range(k):
        assert scipy.stats.kstest(z[:, j], 'norm').pvalue > 1e-4
    assert scipy.stats.kstest((z ** 2).sum(axis=1), scipy.stats.chi2(k).cdf).pvalue > 1e-4


# ------------------------------------------------------------------ old rows are bit-identical
@pytest.mark.parametrize('dtype', ['float16', 'float32', 'float64'])
@pytest.mark.parametrize('init', ['mean_cov', 'normal_like', 'mean', 'zeros', ('copy', [0, 2, 2])])
def test_grow_table_keeps_old_rows_bits(dtype, init):
    old = mx.nd.array(_correlated(40, 6), dtype=dtype)
    before = as_bits(old)
    new = mo.grow_table(old, 3, init, seed=0)
    assert new.shape == (43, 6) and new.dtype == old.dtype and new.context == old.context
    assert_same_bits(before, new[:40], 'old rows of the grown table')
    assert_same_bits(before, old, 'the input table')
    assert np.isfinite(new.asnumpy()).all()


@given(n_old=st.integers(2, 30), dim=st.integers(1, 5), n_new=st.integers(1, 10),
       dtype=st.sampled_from(['float16', 'float32', 'float64']),
       init=st.sampled_from(['mean_cov', 'normal_like', 'mean', 'zeros']),
       seed=st.integers(0, 2 ** 31))
def test_grow_table_property(n_old, dim, n_new, dtype, init, seed):
    old = np.random.default_rng(seed).normal(size=(n_old, dim)).astype(dtype)
    new = mo.grow_table(old, n_new, init, seed=seed)
    assert new.shape == (n_old + n_new, dim) and new.dtype == old.dtype
    assert_same_bits(old, new[:n_old])
    assert np.isfinite(new).all()


def test_special_inits():
    old = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert (mo.init_rows(old, 2, 'zeros') == 0).all()
    assert (mo.init_rows(old, 2, 'mean') == old.mean(axis=0)).all()
    assert_same_bits(mo.init_rows(old, 3, ('copy', [3, 0, 3])), old[[3, 0, 3]])
    assert_same_bits(mo.init_rows(mx.nd.array(old), 2, ('copy', [1, 2])), old[[1, 2]])
    got = mo.init_rows(old, 2, lambda shape, rng: np.full(shape, 7.0), seed=0)
    assert got.dtype == np.float32 and (got == 7).all()


# ------------------------------------------------------------------ distribution of new rows
def test_mean_cov_matches_old_mean_and_covariance():
    old = _correlated(20000, 5, seed=1)
    new = mo.init_rows(old, 20000, 'mean_cov', seed=2)
    z, _ = _whiten(new, old.mean(axis=0), np.cov(old, rowvar=False))
    _assert_standard_normal(z)


def test_mean_cov_rank_deficient_samples_the_subspace():
    # Old rows span a 2-D affine subspace of R^6 (e.g. latent dims that never trained): the
    # covariance is singular, Cholesky fails, and HF's recipe would fall back to the mean.
    old = _correlated(5000, 6, seed=3, rank=2)
    cov = np.cov(old, rowvar=False)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(cov)
    new = mo.init_rows(old, 20000, 'mean_cov', seed=4)
    z, null = _whiten(new, old.mean(axis=0), cov)
    assert z.shape[1] == 2
    _assert_standard_normal(z)
    # No component outside the subspace (up to float64 round-off of the eigendecomposition).
    scale = np.abs(old - old.mean(axis=0)).max()
    assert np.abs((new - old.mean(axis=0)) @ null).max() < 1e-9 * scale
    # Spread like the old rows, not "almost the mean".
    ratio = (np.linalg.norm(new - old.mean(axis=0), axis=1).mean()
             / np.linalg.norm(old - old.mean(axis=0), axis=1).mean())
    assert 0.95 < ratio < 1.05


def test_normal_like_matches_mean_and_std_per_dimension():
    old = _correlated(20000, 4, seed=5)
    new = mo.init_rows(old, 20000, 'normal_like', seed=6)
    z = (new - old.mean(axis=0)) / old.std(axis=0, ddof=1)
    # Independent per dimension: the whitening is the diagonal one.
    _assert_standard_normal(z)


def test_row_stats_streamed_equals_numpy_and_counts_sparse_zero_rows():
    table = _correlated(1000, 3, seed=7).astype(np.float32)
    exact = table.astype(np.float64)
    for t in (table, mx.nd.array(table)):
        s = mo.row_stats(t, chunk_rows=7)
        assert s.count == 1000
        np.testing.assert_allclose(s.mean, exact.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.cov, np.cov(exact, rowvar=False), rtol=1e-10)
    stored = np.array([1, 4, 5, 9])
    dense = np.zeros((12, 3), dtype=np.float32)
    dense[stored] = table[:4]
    rsp = mx.nd.sparse.row_sparse_array((table[:4], stored), shape=(12, 3))
    s = mo.row_stats(rsp, chunk_rows=3)
    np.testing.assert_allclose(s.mean, dense.mean(axis=0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(dense.astype(np.float64), rowvar=False),
                               rtol=1e-10)


# ------------------------------------------------------------------ reproducible
def test_seeded_and_reproducible():
    old = _correlated(50, 4).astype(np.float32)
    a = mo.init_rows(old, 5, seed=11)
    assert_same_bits(a, mo.init_rows(old, 5, seed=11))
    assert not np.array_equal(a, mo.init_rows(old, 5, seed=12))
    params = {'a_weight': mx.nd.array(old), 'b_weight': mx.nd.array(old)}
    p1, _ = mo.grow_params(params, {'a_weight': 3, 'b_weight': 3}, seed=3)
    p2, _ = mo.grow_params(dict(reversed(params.items())), {'b_weight': 3, 'a_weight': 3},
                           seed=3)
    for k in params:
        assert_same_bits(p1[k], p2[k], k + ' does not depend on dict order')
    # Two tables with identical old rows still get different new rows (own stream per name).
    assert not np.array_equal(p1['a_weight'][50:].asnumpy(), p1['b_weight'][50:].asnumpy())


# ------------------------------------------------------------------ Module world
def test_grow_params_then_module_fit_trains_only_new_rows():
    n_users, n_items, n_new = 30, 20, 6
    mod = mx.mod.Module(forum_mf(n_users, n_items), data_names=['member', 'book'],
                        label_names=['label'])
    it = mf_iter(*ratings(n_users, n_items, 400), batch_size=50)
    mod.fit(it, num_epoch=1, optimizer='adam', initializer=mx.init.Normal(0.1))
    arg_params, aux_params = mod.get_params()
    snapshot = {k: as_bits(v) for k, v in arg_params.items()}
    params, masks = mo.grow_params(arg_params, {'book_embedding_weight': n_new})
    assert params['member_embedding_weight'] is arg_params['member_embedding_weight']
    assert masks == {'book_embedding_weight': mo.train_rows_from(n_items)}
    assert_same_bits(snapshot['book_embedding_weight'], params['book_embedding_weight'][:n_items])
    for k, v in arg_params.items():
        assert_same_bits(snapshot[k], v, 'input ' + k)

    # The member table does not grow: freeze it as a whole, the usual MXNet way.
    grown = mx.mod.Module(forum_mf(n_users, n_items + n_new), data_names=['member', 'book'],
                          label_names=['label'], fixed_param_names=['member_embedding_weight'])
    it = mf_iter(*ratings(n_users, n_items + n_new, 400, seed=1), batch_size=50)
    grown.fit(it, num_epoch=2, arg_params=params, aux_params=aux_params, optimizer='masked',
              optimizer_params={'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-3,
                                'masks': masks})
    after = grown.get_params()[0]
    assert_same_bits(snapshot['book_embedding_weight'], after['book_embedding_weight'][:n_items])
    assert_same_bits(snapshot['member_embedding_weight'], after['member_embedding_weight'])
    assert not np.array_equal(after['book_embedding_weight'][n_items:].asnumpy(),
                              params['book_embedding_weight'][n_items:].asnumpy())


# ------------------------------------------------------------------ Gluon world
def test_grow_embedding_keeps_name_contexts_dtype_grad_stype_and_trains():
    ctxs = [mx.cpu(0), mx.cpu(1)]
    net = mx.gluon.nn.HybridSequential()
    with net.name_scope():
        net.add(mx.gluon.nn.Embedding(10, 4, dtype='float64', sparse_grad=True))
    net.initialize(mx.init.Normal(1.0), ctx=ctxs)
    net.hybridize()
    net(mx.nd.array([1, 2], ctx=ctxs[0]))  # builds the cached graph with input_dim=10
    emb = net[0]
    name = emb.weight.name
    before = [as_bits(d) for d in emb.weight.list_data()]
    mask = mo.grow_embedding(emb, 3, seed=0, parent=net)
    assert mask == mo.train_rows_from(10)
    w = emb.weight
    assert w.name == name and w.shape == (13, 4) and np.dtype(w.dtype) == np.float64
    assert w.list_ctx() == ctxs and w._grad_stype == 'row_sparse'
    assert [g.stype for g in w.list_grad()] == ['row_sparse'] * 2
    for b, d in zip(before, w.list_data(), strict=True):
        assert_same_bits(b, d[:10])
    assert_same_bits(w.list_data()[0], w.list_data()[1], 'new rows equal on every context')

    trainer = mx.gluon.Trainer(net.collect_params(), 'masked',
                               {'base': 'sgd', 'learning_rate': 0.1, 'wd': 0.01,
                                'masks': {w: mask}})
    with mx.autograd.record():
        losses = [net(mx.nd.array([1, 11, 12], ctx=c)).sum() for c in ctxs]
    mx.autograd.backward(losses)
    trainer.step(1)
    for b, d in zip(before, w.list_data(), strict=True):
        assert_same_bits(b, d[:10], 'old rows after a masked step')


def test_grow_sparse_embedding():
    emb = SparseEmbedding(8, 3)
    emb.initialize(mx.init.Normal(1.0))
    before = emb.weight._data[0].tostype('default').asnumpy()
    mask = mo.grow_embedding(emb, 4, 'normal_like', seed=1)
    w = emb.weight
    assert mask == mo.train_rows_from(8)
    assert w.shape == (12, 3) and w._stype == 'row_sparse' and w._grad_stype == 'row_sparse'
    data = w._data[0]
    assert data.stype == 'row_sparse' and data.shape == (12, 3)
    assert_same_bits(before, data.tostype('default')[:8])
    # A new Trainer attaches (the stale one is detached) and a lookup of a new row works.
    trainer = mx.gluon.Trainer(emb.collect_params(), 'sgd', {'learning_rate': 0.1})
    with mx.autograd.record():
        loss = emb(mx.nd.array([10])).sum()
    loss.backward()
    trainer.step(1)
    assert emb(mx.nd.array([11])).shape == (1, 3)


# ------------------------------------------------------------------ vocabularies
def test_grow_vocab_order_duplicates_known_ids():
    old = {10: 0, 42: 1, 7: 2}
    g = mo.grow_vocab(old, [5, 42, 99, 5, np.int64(3), 99])
    assert g.vocab == {10: 0, 42: 1, 7: 2, 5: 3, 99: 4, 3: 5}
    assert g.added == [5, 99, 3] and g.n_old == 3 and g.n_new == 3
    assert g.mask == mo.train_rows_from(3)
    assert old == {10: 0, 42: 1, 7: 2}
    # Row 0 reserved for padding: rows 1..2 used, table has 3 rows.
    g = mo.grow_vocab({'a': 1, 'b': 2}, ['c'], n_rows=3)
    assert g.vocab['c'] == 3 and g.n_old == 3
    assert mo.grow_vocab({}, ['x', 'y']).vocab == {'x': 0, 'y': 1}
    assert mo.grow_vocab(old, [42]).n_new == 0


@pytest.mark.parametrize('vocab, new_ids, kw, error, match', [
    ({1: 0, 2: 1}, ['3'], {}, TypeError, "'3' is str but the old ids are int"),
    ({1: 0, 2: 0}, [3], {}, ValueError, 'used by several ids'),
    ({1: -1}, [3], {}, ValueError, 'non-negative'),
    ({1: 0.5}, [3], {}, TypeError, 'integer row'),
    ({1: 0}, [[3]], {}, TypeError, 'unhashable'),
    ({'a': 0}, 'b', {}, TypeError, 'single string'),
    ({1: 4}, [3], {'n_rows': 2}, ValueError, 'expected an integer >= 5'),
    ([1, 2], [3], {}, TypeError, 'expected a dict'),
])
def test_grow_vocab_bad_input(vocab, new_ids, kw, error, match):
    copy = dict(vocab) if isinstance(vocab, dict) else list(vocab)
    with pytest.raises(error, match=match):
        mo.grow_vocab(vocab, new_ids, **kw)
    assert vocab == copy


# ------------------------------------------------------------------ bad input, nothing changed
def _params():
    rng = np.random.default_rng(0)
    return {'emb_weight': mx.nd.array(rng.normal(size=(6, 3))),
            'bias': mx.nd.array(rng.normal(size=(6,))),
            'emb_bias': mx.nd.array(rng.normal(size=(6,))),
            'cube': mx.nd.array(rng.normal(size=(2, 3, 4))),
            'ids': mx.nd.array(np.arange(6).reshape(3, 2), dtype='int32'),
            'tiny_weight': mx.nd.array(rng.normal(size=(1, 3)))}


@pytest.mark.parametrize('add, init, error, match', [
    ({'emb_weight': 0}, 'mean_cov', ValueError, 'positive integer number of rows to add, '
                                                'received 0'),
    ({'emb_weight': -2}, 'mean_cov', ValueError, 'received -2'),
    ({'emb_weight': 1.5}, 'mean_cov', ValueError, 'received 1.5'),
    ({'emb_weight': True}, 'mean_cov', ValueError, 'received True'),
    ({'nope': 1}, 'mean_cov', ValueError, r"unknown parameter names \['nope'\]; known names"),
    ({'cube': 1}, 'mean_cov', ValueError, r'received shape \(2, 3, 4\)'),
    ({'ids': 1}, 'mean_cov', TypeError, 'floating-point table.*int32'),
    ({'tiny_weight': 1}, 'mean_cov', ValueError, 'at least 2 of them, received 1'),
    ({'emb_weight': 2}, 'bogus', ValueError, "unknown init 'bogus'"),
    ({'emb_weight': 2}, 'copy', ValueError, r"pass \('copy', rows\)"),
    ({'emb_weight': 2}, ('copy', [0, 6]), ValueError, r'old rows in \[0, 6\)'),
    ({'emb_weight': 2}, ('copy', [0]), ValueError, 'expects 2 integer row numbers'),
    ({'emb_weight': 2}, lambda s, r: np.zeros((3, 3)), ValueError, r'expected \(2, 3\)'),
    ({'emb_weight': 2}, lambda s, r: np.zeros(s, dtype=int), TypeError, 'dtype int'),
    ({'emb_weight': 2}, lambda s, r: np.full(s, np.inf), ValueError, 'not finite'),
    ({'emb_weight': 2}, {'bias': 'mean'}, ValueError, 'not being grown'),
    ({'emb_weight': 2, 'cube': 1}, 'mean_cov', ValueError, 'cube'),  # one bad, none grown
    ({'emb_weight': 2, 'emb_bias': 3}, 'mean_cov', ValueError, 'emb_bias: grows by 3 but its '
     'weight emb_weight by 2'),
    ([('emb_weight', 2)], 'mean_cov', TypeError, 'non-empty dict'),
])
def test_grow_params_bad_input_changes_nothing(add, init, error, match):
    params = _params()
    snapshot = {k: as_bits(v) for k, v in params.items()}
    with pytest.raises(error, match=match):
        mo.grow_params(params, add, init)
    assert set(params) == set(snapshot)
    for k, v in params.items():
        assert_same_bits(snapshot[k], v, k)


def test_non_finite_old_rows_and_bad_seed_are_refused():
    table = np.ones((5, 2), dtype=np.float32)
    table[3, 1] = np.nan
    with pytest.raises(ValueError, match='old row 3 holds NaN or Inf'):
        mo.grow_table(table, 1, 'zeros')
    with pytest.raises(ValueError, match='old row 3'):
        mo.grow_table(table, 1, 'zeros', name='t')
    rsp = mx.nd.sparse.row_sparse_array((np.array([[np.inf, 0.]]), np.array([4])),
                                        shape=(6, 2))
    with pytest.raises(ValueError, match='old row 4'):
        mo.grow_table(rsp, 1, 'zeros')
    with pytest.raises(TypeError, match='seed'):
        mo.init_rows(np.ones((3, 2)), 1, seed='0')
    with pytest.raises(TypeError, match='NDArray or a numpy array'):
        mo.grow_table([[1.0, 2.0]], 1)


def test_grow_embedding_bad_input_changes_nothing():
    emb = mx.gluon.nn.Embedding(5, 2)
    with pytest.raises(ValueError, match='not initialized'):
        mo.grow_embedding(emb, 2)
    emb.initialize()
    data = emb.weight.data()
    data[2] = np.nan
    before = as_bits(data)
    with pytest.raises(ValueError, match='old row 2 holds NaN'):
        mo.grow_embedding(emb, 2)
    assert emb.weight.shape == (5, 2) and emb._kwargs['input_dim'] == 5
    assert_same_bits(before, emb.weight.data())
    with pytest.raises(ValueError, match='does not contain'):
        mo.grow_embedding(emb, 2, parent=mx.gluon.nn.Dense(2))
    with pytest.raises(TypeError, match='nn.Embedding'):
        mo.grow_embedding(mx.gluon.nn.Dense(2), 2)


# ------------------------------------------------------------------ memory
_MEMORY_SCRIPT = textwrap.dedent('''
    import resource, sys
    import mxnet as mx, numpy as np
    import masked_opt as mo
    rows, dim = int(sys.argv[1]), int(sys.argv[2])
    old = mx.nd.random.normal(shape=(rows, dim))
    old.wait_to_read()
    mo.grow_table(mx.nd.random.normal(shape=(1000, dim)), 10).wait_to_read()  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    new = mo.grow_table(old, rows // 100)
    new.wait_to_read()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - base) * 1024 / (rows * dim * 4))
''')


def test_growing_needs_about_one_more_table_of_memory():
    """Peak extra memory while growing ~ the new table (1.01x), not the 2-3x of host copies."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', _MEMORY_SCRIPT, '1000000', '64'], env=env,
                         capture_output=True, text=True, check=True)
    extra = float(out.stdout.strip().splitlines()[-1])
    # Old table (already there) + at most 1.25 more tables: the "2x" budget.
    assert extra < 1.25, 'growing used %.2f tables of extra memory' % extra
