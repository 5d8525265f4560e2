"""The lean row_sparse path: exact row writes into a row_sparse weight, few uploads, views.

- A row_sparse weight (``contrib.nn.SparseEmbedding`` on a kvstore) is written by copying, so
  every entry keeps or takes its exact bits: frozen entries holding +-Inf, NaN with a payload,
  a signalling NaN or -0.0 in a trained row stay as they were, and trainable entries equal the
  same update of a dense weight bit for bit (``test_row_sparse_weight_keeps_special_bits``).
- The per-step uploads of :class:`~masked_opt.steps.sparse.SparseRows` are pinned: one per step
  whatever the mask (``test_uploads_per_sparse_step_are_one``).
- The host table of a plan is O(trainable rows), not O(rows) (``test_plan_host_memory``).
- An aligned column group is gathered and scattered through the ``(V*D/k, k)`` view of the
  weight, in place and bit-identical to the other paths (``test_column_group_view_*``).
"""
import mxnet as mx
import numpy as np
import pytest
from bits import as_bits, assert_same_bits, state_arrays

import masked_opt as mo
from masked_opt import update as mo_update
from masked_opt.steps import sparse as sparse_step

NAME = 'table_weight'

# float32 bit patterns that arithmetic does not preserve: 0 * Inf is NaN, a signalling NaN is
# quieted, the sign of NaN and of zero flips under negation.
SPECIAL = np.array([0x7F800000, 0xFF800000, 0x7FC12345, 0xFFC00001, 0x7F800001, 0x80000000],
                   dtype=np.uint32).view(np.float32)


def _rsp(ids, values, shape):
    return mx.nd.sparse.row_sparse_array((np.asarray(values, np.float32),
                                          np.asarray(ids, np.int64)), shape=shape)


def _run(stype, mask, base, w0, grads, extra):
    opt = mo.Masked(base=base, learning_rate=0.1, masks={NAME: mask}, param_idx2name={0: NAME},
                    **extra)
    weight = mx.nd.array(w0).tostype(stype)
    state = opt.create_state_multi_precision(0, weight)
    for ids, values in grads:
        opt.update_multi_precision(0, weight, _rsp(ids, values, w0.shape), state)
    return weight.tostype('default').asnumpy(), [a.asnumpy() for a in state_arrays(state)]


@pytest.mark.parametrize('base,extra', [('sgd', {'momentum': 0.9}), ('adam', {'wd': 0.01})])
@pytest.mark.parametrize('mask', ['rows', 'rows+cols', 'cols'])
def test_row_sparse_weight_keeps_special_bits(base, extra, mask):
    """The regression: a row_sparse weight's rows were written with
    ``sgd_update(lr=1, wd=1, rescale_grad=-1)``, i.e. ``0 * w + v``: a frozen +-Inf in a
    trained row became NaN. Every bit must now be kept or taken exactly."""
    shape = (8, 6)
    rng = np.random.RandomState(1)
    w0 = rng.uniform(-1, 1, shape).astype(np.float32)
    spec = {'rows': mo.train_rows_from(2), 'rows+cols': mo.train_rows_from(2) & mo.train_cols(
        [2, 3]), 'cols': mo.train_cols([1, 4])}[mask]
    rows, cols = spec.resolve(shape, NAME)
    frozen = ((np.ones(shape[0]) if rows is None else rows)[:, None]
              * (np.ones(shape[1]) if cols is None else cols)[None, :]) == 0
    # Special values in every trained row: in frozen entries and in trainable ones (a
    # trainable Inf stays Inf under a finite step; 0 * Inf would make it NaN).
    for r in (2, 3, 5, 7):
        w0[r, :] = np.resize(np.roll(SPECIAL, r), shape[1])
    grads = [([0, 2, 3, 5, 7], rng.normal(size=(5, shape[1]))),
             ([2, 4, 5, 7], rng.normal(size=(4, shape[1])))]
    got_w, got_s = _run('row_sparse', spec, base, w0, grads, extra)
    want_w, want_s = _run('default', spec, base, w0, grads, extra)
    assert_same_bits(w0[frozen], got_w[frozen], 'frozen entries of a row_sparse weight')
    assert_same_bits(want_w, got_w, 'row_sparse weight vs the same update of a dense weight')
    for k, (a, b) in enumerate(zip(want_s, got_s, strict=True)):
        assert_same_bits(a, b, 'state %d' % k)


def _rsp_grad(rng, shape, n):
    ids = np.unique(rng.randint(0, shape[0], n))
    return _rsp(ids, rng.normal(size=(ids.size,) + shape[1:]), shape)


MASKS = {
    'rows': (mo.train_rows_from(20), (30, 8)),
    'cols': (mo.train_cols([1, 2, 5]), (30, 8)),        # not a group: (2, n*C) scatter index
    'group': (mo.train_cols([4, 5]), (30, 8)),           # aligned group: (V*D/k, k) view
    'both': (mo.freeze_rows([3, 25]) & mo.train_cols([0, 3]), (30, 8)),
    'fraction': (mo.scale_rows(np.linspace(0, 1, 30)), (30, 8)),
    '3d': (mo.train_rows_from(20), (30, 2, 3)),        # N-D: rows of grad.data kept by take
}


@pytest.mark.parametrize('lazy', [True, False])
@pytest.mark.parametrize('mask', list(MASKS))
def test_uploads_per_sparse_step_are_one(monkeypatch, mask, lazy):
    """Every index array of a SparseRows step comes from one packed upload (lazy); none per step
    once the plan holds them (lazy_update=False: the same trainable rows every step). The pure
    path: contiguous blocks would otherwise take the native path, which uploads nothing."""
    spec, shape = MASKS[mask]
    rng = np.random.RandomState(0)
    opt = mo.Masked(base='sgd', learning_rate=0.1, momentum=0.9, lazy_update=lazy,
                    masks={NAME: spec}, param_idx2name={0: NAME})
    opt.step_path = 'pure'
    weight = mx.nd.array(rng.normal(size=shape))
    state = opt.create_state(0, weight)
    opt.update(0, weight, _rsp_grad(rng, shape, 12), state)   # builds the plan
    calls = []
    original = sparse_step._upload
    monkeypatch.setattr(sparse_step, '_upload', lambda *a: calls.append(a) or original(*a))
    monkeypatch.setattr(mx.nd, 'array', lambda *a, **k: pytest.fail('nd.array in a step'))
    for _ in range(3):
        opt.update(0, weight, _rsp_grad(rng, shape, 12), state)
    assert len(calls) == (3 if lazy else 0)


def test_plan_host_memory_is_per_trainable_row():
    """No V-sized host table: positions come from a binary search in the sorted row ids."""
    plan = mo_update.BlockPlan((10_000_000, 1), np.r_[np.zeros(9_999_990), np.ones(10)], None,
                               mx.cpu(), np.float32)
    host = sum(v.nbytes for v in vars(plan).values() if isinstance(v, np.ndarray))
    assert host < 1024
    keep, pos = plan.positions(np.array([0, 9_999_989, 9_999_990, 9_999_995, 9_999_999]))
    assert keep.tolist() == [2, 3, 4] and pos.tolist() == [0, 5, 9]


def test_column_group_view_is_in_place_and_exact():
    """The (V*D/k, k) reshape shares the weight's memory: a scatter into it writes the weight;
    gather and scatter through it give the bits of the general take path."""
    shape, rng = (7, 6), np.random.RandomState(3)
    w0 = rng.normal(size=shape).astype(np.float32)
    w0[2, 2:4] = SPECIAL[:2]
    rows = np.array([0, 1, 1, 0, 1, 0, 1.])
    plan = mo_update.BlockPlan(shape, rows, np.array([0, 0, 1, 1, 0, 0.]), mx.cpu(), np.float32)
    assert plan.group == (1, 3, 2)
    weight = mx.nd.array(w0)
    view = plan.group_view(weight)
    assert view.shape == (21, 2)
    block = plan.gather(weight)
    assert_same_bits(w0[np.ix_(np.flatnonzero(rows), [2, 3])], block, 'gathered block')
    new = block.asnumpy()[::-1].copy()
    plan.scatter(mx.nd.array(new), weight)
    want = w0.copy()
    want[np.ix_(np.flatnonzero(rows), [2, 3])] = new
    assert_same_bits(want, weight, 'weight after a scatter through the view')
    assert as_bits(view).reshape(shape).tolist() == as_bits(weight).tolist()
