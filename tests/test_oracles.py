"""C2: the forum's own workarounds are the oracles for ``Module.fit`` with the masked optimizer.

* Latent split: the forum model with ``train_cols([7])`` on ``member_embedding_weight`` against
  workaround (A) -- two Embeddings of 7 and 1 columns on the same input, ``concat``, and
  ``fixed_param_names=['member_embedding1_weight']``.
* New rows: the forum model with ``train_rows_from(N_OLD)`` on ``book_embedding_weight`` against
  workaround (B) -- ``one_hot`` -> two ``slice_axis`` -> two ``FullyConnected`` summed, with
  ``fixed_param_names=['book_old_weight']``. FullyConnected weights are ``(latent, n)``: the
  transposed rows of the embedding table.

Both runs start from the same values (the workaround's tables are the masked table split by
columns / rows), see the same batches, and treat the *other* table alike (trained in both).
The frozen part must keep its bits; the trainable part and the other table must agree to float32
rounding (see ``assert_f32_close`` for the tolerance and why).
"""
import mxnet as mx
import numpy as np
import pytest
from bits import assert_same_bits
from models import forum_mf, mf_iter, one_hot_mf, ratings, split_embedding_mf

import masked_opt as mo

N_USERS, N_ITEMS, N_OLD, DIM, TRAIN_COL = 60, 40, 28, 8, 7
N_RATINGS, BATCH, EPOCHS = 512, 32, 2

OPTIMIZERS = [
    pytest.param('sgd', {'learning_rate': 0.1}, id='sgd'),
    pytest.param('sgd', {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 1e-3}, id='sgd-mom-wd'),
    pytest.param('adam', {'learning_rate': 0.01, 'wd': 1e-3}, id='adam-wd'),
    pytest.param('adagrad', {'learning_rate': 0.1}, id='adagrad'),
    pytest.param('rmsprop', {'learning_rate': 0.01}, id='rmsprop'),
    pytest.param('rmsprop', {'learning_rate': 0.01, 'centered': True, 'wd': 1e-3},
                 id='rmsprop-centered-wd'),
]


def assert_f32_close(actual, expected, what, ulps=8):
    """Equal up to a few float32 ulp of the array's scale.

    Why not bits: the two networks compute the same mathematics with different kernels. In (A)
    the member rows go through two Embeddings and ``concat``; in (B) the book gradient is a
    ``FullyConnected`` backward (a ``dot`` over the batch) instead of Embedding's scatter-add.
    A different summation order may change the last bit of a gradient, and the optimizers carry
    that difference on. ``ulps`` x eps(float32) x max|expected| bounds that; any real difference
    (a wrong step, a missed update, wd applied twice) is orders of magnitude larger. On this
    machine the runs agree to the bit (0 ulp), but that is not guaranteed across BLAS builds
    and thread counts.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    scale = float(np.abs(expected).max())
    tol = ulps * np.finfo(np.float32).eps * scale
    err = float(np.abs(actual.astype(np.float64) - expected).max())
    assert err <= tol, '%s: max |diff| %.3g > %d ulp of scale %.3g' % (what, err, ulps, scale)


def _initial_tables():
    rng = np.random.RandomState(1)
    return {'member_embedding_weight': rng.uniform(-.5, .5, (N_USERS, DIM)).astype(np.float32),
            'book_embedding_weight': rng.uniform(-.5, .5, (N_ITEMS, DIM)).astype(np.float32)}


def _fit(sym, arg_params, optimizer, optimizer_params, fixed=()):
    member, book, label = ratings(N_USERS, N_ITEMS, N_RATINGS, seed=3)
    mod = mx.mod.Module(sym, data_names=['member', 'book'], label_names=['label'],
                        fixed_param_names=list(fixed))
    mod.fit(mf_iter(member, book, label, BATCH), num_epoch=EPOCHS, eval_metric='mse',
            optimizer=optimizer, optimizer_params=optimizer_params,
            arg_params={k: mx.nd.array(v) for k, v in arg_params.items()})
    return {k: v.asnumpy() for k, v in mod.get_params()[0].items()}


@pytest.mark.parametrize('base,params', OPTIMIZERS)
def test_latent_split_equals_split_embedding_workaround(base, params):
    init = _initial_tables()
    masked = _fit(forum_mf(N_USERS, N_ITEMS, DIM), init, 'masked',
                  dict(params, base=base,
                       masks={'member_embedding_weight': mo.train_cols([TRAIN_COL])}))
    member = init['member_embedding_weight']
    oracle = _fit(split_embedding_mf(N_USERS, N_ITEMS, DIM, n_train_cols=1),
                  {'member_embedding1_weight': member[:, :TRAIN_COL],
                   'member_embedding2_weight': member[:, TRAIN_COL:],
                   'book_embedding_weight': init['book_embedding_weight']},
                  base, params, fixed=['member_embedding1_weight'])

    got = masked['member_embedding_weight']
    assert_same_bits(member[:, :TRAIN_COL], got[:, :TRAIN_COL], 'frozen columns vs initial')
    assert_same_bits(oracle['member_embedding1_weight'], got[:, :TRAIN_COL],
                     'frozen columns vs workaround')
    assert_f32_close(got[:, TRAIN_COL:], oracle['member_embedding2_weight'], 'trained column')
    assert_f32_close(masked['book_embedding_weight'], oracle['book_embedding_weight'],
                     'book table')
    # The comparison means something only if the trained column did train.
    assert np.abs(got[:, TRAIN_COL] - member[:, TRAIN_COL]).max() > 1e-3


@pytest.mark.parametrize('base,params', OPTIMIZERS)
def test_new_rows_equal_one_hot_workaround(base, params):
    init = _initial_tables()
    masked = _fit(forum_mf(N_USERS, N_ITEMS, DIM), init, 'masked',
                  dict(params, base=base,
                       masks={'book_embedding_weight': mo.train_rows_from(N_OLD)}))
    book = init['book_embedding_weight']
    oracle = _fit(one_hot_mf(N_USERS, N_ITEMS, N_OLD, DIM),
                  {'member_embedding_weight': init['member_embedding_weight'],
                   'book_old_weight': book[:N_OLD].T.copy(),
                   'book_new_weight': book[N_OLD:].T.copy()},
                  base, params, fixed=['book_old_weight'])

    got = masked['book_embedding_weight']
    assert_same_bits(book[:N_OLD], got[:N_OLD], 'old rows vs initial')
    assert_same_bits(oracle['book_old_weight'].T, got[:N_OLD], 'old rows vs workaround')
    assert_f32_close(got[N_OLD:], oracle['book_new_weight'].T, 'new rows')
    assert_f32_close(masked['member_embedding_weight'], oracle['member_embedding_weight'],
                     'member table')
    assert np.abs(got[N_OLD:] - book[N_OLD:]).max() > 1e-3


def test_tolerance_catches_a_real_difference():
    """Control: one SGD step of difference on the trained column is far outside the tolerance."""
    init = _initial_tables()
    params = {'learning_rate': 0.1}
    masks = {'member_embedding_weight': mo.train_cols([TRAIN_COL])}
    full = _fit(forum_mf(N_USERS, N_ITEMS, DIM), init, 'masked',
                dict(params, base='sgd', masks=masks))
    # Same run with a learning rate 1% off: the kind of error the oracle must catch.
    off = _fit(forum_mf(N_USERS, N_ITEMS, DIM), init, 'masked',
               dict(params, learning_rate=0.101, base='sgd', masks=masks))
    with pytest.raises(AssertionError, match='trained column'):
        assert_f32_close(off['member_embedding_weight'][:, TRAIN_COL:],
                         full['member_embedding_weight'][:, TRAIN_COL:], 'trained column')
