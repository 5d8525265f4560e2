"""The demo's references: the ceiling is the optimum of the masked phase's objective (checked
against a generic solver), the floors are what they say, and the frozen check compares bits."""
import numpy as np
import pytest
import scipy.optimize

from masked_opt.demo import reference as ref
from masked_opt.demo.data import Ratings, validation_split
from masked_opt.demo.run import frozen_changed


def _problem(seed=0, n_old=(30, 20), n_new=(6, 5), dim=3, n=150):
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_old[0] + n_new[0], dim))
    items = rng.normal(size=(n_old[1] + n_new[1], dim))
    # every rating involves a new user or a new item; some are new x new
    u = rng.integers(0, users.shape[0], n)
    i = np.where(u >= n_old[0], rng.integers(0, items.shape[0], n),
                 rng.integers(n_old[1], items.shape[0], n))
    return users, items, Ratings(u, i, rng.normal(size=n)), n_old


def test_fold_in_is_the_optimum_of_the_objective():
    users, items, r, (n_ou, n_oi) = _problem()
    lam = 0.7
    u, b, info = ref.fold_in(users, items, n_ou, n_oi, r, lam, tol=1e-14, sweeps=2000)
    assert (u[:n_ou] == users[:n_ou]).all() and (b[:n_oi] == items[:n_oi]).all()
    shape_u, shape_b = users[n_ou:].shape, items[n_oi:].shape

    def f(x):
        uu, bb = users.copy(), items.copy()
        uu[n_ou:] = x[:uu[n_ou:].size].reshape(shape_u)
        bb[n_oi:] = x[uu[n_ou:].size:].reshape(shape_b)
        return ref.objective(uu, bb, n_ou, n_oi, r, lam)
    start = np.concatenate([u[n_ou:].ravel(), b[n_oi:].ravel()])
    polished = scipy.optimize.minimize(f, start, method='BFGS', options={'gtol': 1e-10})
    assert info['objective'] <= polished.fun * (1 + 1e-8)        # nothing lower nearby
    # and from a generic start, BFGS finds no better point either
    other = scipy.optimize.minimize(f, np.zeros_like(start), method='BFGS')
    assert info['objective'] <= other.fun * (1 + 1e-6)


def test_fold_in_without_new_x_new_pairs_is_one_ridge_per_row():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(10, 2))
    items = np.zeros((1, 2))                                     # one new item, rated by old users
    r = Ratings(np.arange(10), np.zeros(10, dtype=np.int64), rng.normal(size=10))
    _, b, info = ref.fold_in(users, items, 10, 0, r, lam=2.0)
    X, t = users, 1 - r.label
    assert info['sweeps'] == 1
    np.testing.assert_allclose(b[0], np.linalg.solve(X.T @ X + 2.0 * np.eye(2), X.T @ t))
    with pytest.raises(ValueError, match='expected a ridge strength > 0'):
        ref.fold_in(users, items, 10, 0, r, lam=0.0)


def test_a_new_row_without_ratings_gets_zero_in_the_ceiling():
    users, items, r, (n_ou, n_oi) = _problem(n_new=(6, 5))
    keep = r.user != n_ou                                    # new user n_ou has no rating now
    r = Ratings(r.user[keep], r.item[keep], r.label[keep])
    u, _, _ = ref.fold_in(users, items, n_ou, n_oi, r, lam=0.5)
    assert (u[n_ou] == 0).all()


def test_bias_only_and_global_mean_floors():
    rng = np.random.default_rng(2)
    u, i = rng.integers(0, 20, 3000), rng.integers(0, 15, 3000)
    b_u, b_i = rng.normal(size=20), rng.normal(size=15)
    r = Ratings(u, i, 3 + b_u[u] + b_i[i] + 0.1 * rng.normal(size=3000))
    fit, val = validation_split(r, seed=0)
    lam, predict = ref.choose_bias_lambda(fit, val, 20, 15)
    err = predict(val) - val.label
    assert np.sqrt(np.mean(err ** 2)) < 0.12 and lam in ref.BIAS_LAMBDAS
    assert ref.global_mean(fit) == pytest.approx(fit.label.mean())


def test_last_column_fold_in_lowers_the_objective_to_a_stationary_point():
    rng = np.random.default_rng(3)
    users, items = rng.normal(size=(12, 3)), rng.normal(size=(9, 3))
    r = Ratings(rng.integers(0, 12, 100), rng.integers(0, 9, 100), rng.normal(size=100))
    u, b, info = ref.last_column_fold_in(users, items, r, lam=0.3, tol=1e-14, sweeps=5000)
    assert (u[:, :-1] == users[:, :-1]).all() and (b[:, :-1] == items[:, :-1]).all()
    # gradient of the objective over the last column is ~0
    pred_err = (1 - np.einsum('ij,ij->i', u[r.user], b[r.item])) - r.label
    grad_u = -2 * np.bincount(r.user, pred_err * b[r.item, -1], 12) + 2 * 0.3 * u[:, -1]
    grad_b = -2 * np.bincount(r.item, pred_err * u[r.user, -1], 9) + 2 * 0.3 * b[:, -1]
    assert np.abs(grad_b).max() < 1e-9          # the items' half-step was the last: exact
    assert np.abs(grad_u).max() < 1e-4          # the users' is off by the last change only



def test_frozen_changed_compares_bits():
    a = np.array([0.0, np.nan, 1.5], dtype=np.float32)
    assert frozen_changed(a, a.copy()) == 0                       # NaN with the same bits
    assert frozen_changed(a, np.array([-0.0, np.nan, 1.5], np.float32)) == 1    # -0.0 == 0.0
    assert frozen_changed(a, np.array([0.0, np.nan, np.nextafter(np.float32(1.5), np.float32(2))],
                                      np.float32)) == 1
