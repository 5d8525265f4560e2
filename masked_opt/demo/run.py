"""The demo's protocol for one seed, and over several seeds.

``grow`` (vocabulary growth), for one seed:

1. carve validation shares out of the old and the new training ratings
   (:func:`~masked_opt.demo.data.validation_split`); the test ratings are used once, at the end;
2. the old model: ``Module.fit`` on the old training ratings, ``wd`` from :data:`RETRAIN_WDS`
   and the epoch chosen on the old validation ratings;
3. grow both tables (:func:`~masked_opt.grow_params`) and compute the **ceiling** on the new
   training ratings: the ridge fold-in (:func:`~masked_opt.demo.reference.fold_in`) for every
   ``lam`` of :data:`~masked_opt.demo.reference.LAMBDAS`, keeping the one with the lowest
   validation RMSE. The masked phase then trains with ``wd = lam / N_train``, so the ceiling is
   the optimum of the masked phase's own objective;
4. the masked phase: only the new rows train (``'masked'`` around Adam, the learning rate
   halved every ``halve_every`` epochs), the epoch chosen on validation;
5. the full retrain from scratch on all training ratings, ``wd`` and epoch chosen on the new
   validation ratings, as for the old model;
6. the floors on the same pairs: the global mean and ``mu + b_u + b_i`` (bias ``lam`` chosen
   on validation);
7. the report: the frozen check on the bits, RMSE on the new-pair test ratings of every model,
   by pair type, the gap of masked training to the ceiling (objective and RMSE).
"""
import math
import time

import mxnet as mx
import numpy as np

from .. import grow as _grow
from ..masks import train_cols
from . import reference as ref
from .data import PAIR_TYPES, Ratings, pair_types, validation_split
from .model import BOOK, MEMBER, DemoError, fit, rmse
from .progress import Progress
from .report import gap

__all__ = ['run_demo', 'planned_batches', 'frozen_changed', 'RETRAIN_WDS', 'DEMO_DEFAULTS']

#: ``wd`` values tried for the old model and the full retrain (epochs chosen alongside).
RETRAIN_WDS = (0.0, 1e-4, 1e-3)

#: Training settings of :func:`run_demo` (the command line's defaults).
DEMO_DEFAULTS = dict(latent_dim=8, epochs=40, new_epochs=None, batch_size=128,
                     learning_rate=0.01, halve_every=None, retrain_learning_rate=0.03,
                     retrain_halve_every=8, init=_grow.DEFAULT_INIT)


def frozen_changed(before, after):
    """Entries whose bits differ (``-0.0`` vs ``0.0`` differ, a NaN equal to itself does not).

    Examples
    --------
    >>> import numpy as np
    >>> from masked_opt.demo.run import frozen_changed
    >>> a = np.array([0.0, np.nan, 1.0], dtype=np.float32)
    >>> frozen_changed(a, a.copy()), frozen_changed(a, np.array([-0.0, np.nan, 1.0], 'f4'))
    (0, 1)
    """
    before, after = np.ascontiguousarray(before), np.ascontiguousarray(after)
    if before.shape != after.shape or before.dtype != after.dtype:
        return int(before.size)
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[before.dtype.itemsize]
    return int(np.count_nonzero(before.view(view) != after.view(view)))


def _rows_changed(before, after):
    """Rows with at least one entry whose bits changed."""
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[before.dtype.itemsize]
    diff = np.ascontiguousarray(before).view(view) != np.ascontiguousarray(after).view(view)
    return int(diff.any(axis=1).sum())


def _concat(a, b):
    return Ratings(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))


def _select_wd(n_users, n_items, dim, train, val, wds, common, desc):
    """Train once per ``wd``; keep the run (and epoch) with the lowest validation RMSE."""
    runs = {wd: fit(n_users, n_items, dim, train, val, wd=wd,
                    desc='%s (wd %g)' % (desc, wd), **common) for wd in wds}
    wd = min(runs, key=lambda w: runs[w].curve[runs[w].epoch - 1])   # its chosen epoch's RMSE
    return wd, runs[wd], sum(r.seconds for r in runs.values())


def _norms(table, n_old):
    import scipy.stats
    norms = np.linalg.norm(np.asarray(table, np.float64), axis=1)
    old, new = norms[:n_old], norms[n_old:]
    if new.size == 0:
        return None
    ks = scipy.stats.ks_2samp(old, new)
    return {'old_norm_mean': float(old.mean()), 'old_norm_std': float(old.std()),
            'new_norm_mean': float(new.mean()), 'new_norm_std': float(new.std()),
            'ks_statistic': float(ks.statistic), 'ks_pvalue': float(ks.pvalue)}


def _by_type(models, test, n_old_users, n_old_items):
    codes = pair_types(test, n_old_users, n_old_items)
    out = {}
    for code, name in enumerate(PAIR_TYPES):
        keep = codes == code
        part = Ratings(test.user[keep], test.item[keep], test.label[keep])
        out[name] = {'count': int(keep.sum()),
                     'rmse': {m: _rmse_of(p, part) for m, p in models.items()}}
    return out


def _rmse_of(predictor, ratings):
    if len(ratings.label) == 0:
        return None
    if isinstance(predictor, dict):
        return rmse(predictor, ratings)
    err = predictor(ratings) - ratings.label.astype(np.float64)
    return float(np.sqrt(np.mean(err ** 2)))


def _settings(mode, settings):
    """:data:`DEMO_DEFAULTS` with ``settings`` and the mode's defaults filled in."""
    s = dict(DEMO_DEFAULTS, **settings)
    unknown = set(settings) - set(DEMO_DEFAULTS)
    if unknown:
        raise TypeError('run_demo: unknown settings %s; expected some of %s'
                        % (sorted(unknown), sorted(DEMO_DEFAULTS)))
    if s['new_epochs'] is None:
        s['new_epochs'] = 240 if mode == 'grow' else 60
    if s['halve_every'] is None:
        s['halve_every'] = 40 if mode == 'grow' else 15
    return s


def planned_batches(split, *, mode='grow', seed=0, **settings):
    """How many batches :func:`run_demo` trains on ``split``: the progress bar's total.

    The old model and the full retrain train once per ``wd`` of :data:`RETRAIN_WDS`, the
    masked phase once; each on the ratings :func:`run_demo` carves for it.

    Examples
    --------
    >>> from masked_opt.demo.run import planned_batches
    >>> from masked_opt.demo.synthetic import synthetic_split
    >>> planned_batches(synthetic_split(40, 30, 8, 6, per_user=8), epochs=2, new_epochs=3)
    33
    """
    s = _settings(mode, settings)

    def batches(n):
        return math.ceil(n / min(s['batch_size'], n)) if n else 0
    if mode == 'grow':
        old = len(validation_split(split.old_train, seed=seed)[0].label)
        new = len(validation_split(split.new_train, seed=seed)[0].label)
        old_runs, masked, full = batches(old), batches(new), batches(old + new)
    else:
        n = len(validation_split(_concat(split.old_train, split.new_train), seed=seed)[0].label)
        old_runs = masked = full = batches(n)
    return len(RETRAIN_WDS) * s['epochs'] * (old_runs + full) + s['new_epochs'] * masked


def run_demo(split, *, mode='grow', seed=0, progress=False, **settings):
    """Run the demo once on a :class:`~masked_opt.demo.data.Split`; return the report as a dict.

    ``settings`` are those of :data:`DEMO_DEFAULTS`. ``new_epochs`` (the masked phase)
    defaults to 240 with the learning rate halved every 40 epochs for ``'grow'``, and to 60
    halved every 15 for ``'latent-split'``. ``progress``: True for a bar on stderr, or the
    :class:`~masked_opt.demo.progress.Progress` of a longer run.

    Examples
    --------
    >>> from masked_opt.demo.run import run_demo
    >>> from masked_opt.demo.synthetic import synthetic_split
    >>> r = run_demo(synthetic_split(40, 30, 8, 6, per_user=8), epochs=2, new_epochs=2)
    >>> r['frozen_entries_changed'], r['ok'], sorted(r['rmse'])[:3]
    (0, True, ['bias_only', 'ceiling', 'full_retrain'])
    """
    s = _settings(mode, settings)
    if mode == 'latent-split' and s['latent_dim'] < 2:
        raise DemoError('--latent-dim: latent-split trains the last of at least 2 latent '
                        'dimensions, received %d; use --latent-dim 2 or more' % s['latent_dim'])
    if mode not in ('grow', 'latent-split'):
        raise DemoError("mode: expected 'grow' or 'latent-split', received %r" % (mode,))
    own_bar = progress is True
    if own_bar:
        progress = Progress(planned_batches(split, mode=mode, seed=seed, **settings))
    elif progress is False:
        progress = None
    common = dict(batch_size=s['batch_size'], learning_rate=s['learning_rate'], seed=seed,
                  progress=progress)
    # The old model and the full retrain (from scratch, every row): their own schedule.
    s['_retrain'] = dict(common, epochs=s['epochs'], learning_rate=s['retrain_learning_rate'],
                         halve_every=s['retrain_halve_every'])
    start = time.perf_counter()
    try:
        report = (_grow_report if mode == 'grow' else _latent_report)(split, s, common)
    finally:
        if own_bar:
            progress.close()
    report['seconds']['total'] = time.perf_counter() - start
    report['seed'] = seed
    del s['_retrain']
    report['settings'] = dict(s, mode=mode, optimizer='adam',
                              init=s['init'] if mode == 'grow' else None)
    report['data'] = dict(split.sizes(), source=split.source, noise=split.noise)
    return report


def _grow_report(split, s, common):
    dim, seed = s['latent_dim'], common['seed']
    n_ou, n_oi = split.n_old_users, split.n_old_items
    old_fit, old_val = validation_split(split.old_train, seed=seed)
    new_fit, new_val = validation_split(split.new_train, seed=seed)
    if min(len(old_val.label), len(new_val.label), len(split.new_test.label)) == 0:
        raise DemoError('the split is too small: %d new-pair training ratings and %d test '
                        'ratings leave an empty validation or test set; use more users, items '
                        'or ratings' % (len(split.new_train.label), len(split.new_test.label)))
    seconds = {}
    wd_old, old_run, seconds['train_old'] = _select_wd(
        n_ou, n_oi, dim, old_fit, old_val, RETRAIN_WDS, s['_retrain'],
        'stage 1/3 old model')
    old = old_run.params

    t = time.perf_counter()
    add = {k: n for k, n in ((MEMBER, split.n_new_users), (BOOK, split.n_new_items)) if n}
    grown, masks = _grow.grow_params({k: mx.nd.array(v) for k, v in old.items()}, add,
                                     s['init'], seed=seed)
    init = {k: v.asnumpy() for k, v in grown.items()}
    masks.update({k: _grow.train_rows_from(old[k].shape[0]) for k in (MEMBER, BOOK)
                  if k not in masks})
    seconds['grow'] = time.perf_counter() - t

    t = time.perf_counter()
    lam, lam_scores = ref.choose_lambda(init[MEMBER], init[BOOK], n_ou, n_oi, new_fit, new_val)
    cu, cb, cinfo = ref.fold_in(init[MEMBER], init[BOOK], n_ou, n_oi, new_fit, lam)
    ceiling = {MEMBER: cu, BOOK: cb}
    everything = _concat(old_fit, new_fit)
    bias_lam, bias = ref.choose_bias_lambda(everything, new_val, split.n_users, split.n_items)
    mean = ref.global_mean(everything)
    seconds['references'] = time.perf_counter() - t

    wd = lam / len(new_fit.label)
    masked_run = fit(split.n_users, split.n_items, dim, new_fit, new_val, wd=wd,
                     halve_every=s['halve_every'], masks=masks, arg_params=init,
                     epochs=s['new_epochs'], desc='stage 2/3 new rows (masked)',
                     track=lambda p: ref.objective(p[MEMBER], p[BOOK], n_ou, n_oi, new_fit,
                                                   lam), **common)
    new = masked_run.params
    seconds['train_new_masked'] = masked_run.seconds
    wd_full, full_run, seconds['full_retrain'] = _select_wd(
        split.n_users, split.n_items, dim, everything, new_val, RETRAIN_WDS,
        s['_retrain'], 'stage 3/3 full retrain')
    full = full_run.params

    frozen = sum(frozen_changed(old[k], new[k][:old[k].shape[0]]) for k in (MEMBER, BOOK))
    test = split.new_test
    models = {'init': init, 'masked': new, 'ceiling': ceiling, 'full_retrain': full,
              'bias_only': bias, 'global_mean': lambda r: np.full(len(r.label), mean)}
    obj = {name: ref.objective(p[MEMBER], p[BOOK], n_ou, n_oi, new_fit, lam)
           for name, p in (('masked', new), ('ceiling', ceiling), ('init', init))}
    rm = {m: _rmse_of(p, test) for m, p in models.items()}
    trained = np.zeros(split.n_users, bool), np.zeros(split.n_items, bool)
    trained[0][new_fit.user] = True
    trained[1][new_fit.item] = True
    unrated_u = int((~trained[0][n_ou:]).sum())
    unrated_i = int((~trained[1][n_oi:]).sum())
    blind = ((test.user >= n_ou) & ~trained[0][test.user]) | \
            ((test.item >= n_oi) & ~trained[1][test.item])
    before_old, after_old = rmse(old, split.old_test), rmse(new, split.old_test)
    report = {
        'mode': 'grow',
        'frozen_entries_changed': frozen,
        'frozen_entries': sum(old[k].size for k in (MEMBER, BOOK)),
        'new_rows_changed': sum(_rows_changed(init[k][old[k].shape[0]:],
                                              new[k][old[k].shape[0]:]) for k in (MEMBER, BOOK)),
        'new_rows': sum(new[k].shape[0] - old[k].shape[0] for k in (MEMBER, BOOK)),
        'rmse': rm,
        'rmse_old_pairs': {'before': before_old, 'after': after_old,
                           'full_retrain': rmse(full, split.old_test)},
        'gap': gap(obj, rm),
        'objective': obj,
        'choices': {'lambda': lam, 'lambda_validation_rmse': {str(k): v for k, v in
                                                              lam_scores.items()},
                    'masked_wd': wd, 'masked_epoch': masked_run.epoch,
                    'ceiling_sweeps': cinfo['sweeps'],
                    'old_wd': wd_old, 'old_epoch': old_run.epoch,
                    'full_retrain_wd': wd_full, 'full_retrain_epoch': full_run.epoch,
                    'bias_lambda': bias_lam},
        'validation': {'ceiling': rmse(ceiling, new_val), 'bias_only': _rmse_of(bias, new_val),
                       'global_mean': _rmse_of(models['global_mean'], new_val),
                       'old_model': min(old_run.curve)},
        'breakdown': _by_type(models, test, n_ou, n_oi),
        'unrated_new_rows': {'users': unrated_u, 'items': unrated_i,
                             'test_ratings': int(blind.sum()),
                             'rmse_masked': _rmse_of(new, Ratings(*(a[blind] for a in test)))},
        'carved': {'old_fit': len(old_fit.label), 'old_validation': len(old_val.label),
                   'new_fit': len(new_fit.label), 'new_validation': len(new_val.label)},
        'comparability': {when: {'member': _norms(p[MEMBER], n_ou), 'book': _norms(p[BOOK], n_oi)}
                          for when, p in (('at_init', init), ('after', new))},
        'curves': {'old_model_validation': old_run.curve,
                   'masked_validation': masked_run.curve,
                   'masked_objective': masked_run.track,
                   'full_retrain_validation': full_run.curve},
        'seconds': seconds,
    }
    report['ok'] = frozen == 0 and before_old == after_old
    report['_tables'] = {'old': old, 'init': init, 'new': new, 'ceiling': ceiling}
    return report


def _latent_report(split, s, common):
    dim, seed = s['latent_dim'], common['seed']
    train, val = validation_split(_concat(split.old_train, split.new_train), seed=seed)
    test = _concat(split.old_test, split.new_test)
    if min(len(val.label), len(test.label)) == 0:
        raise DemoError('the split is too small for a validation and a test set; use more '
                        'users, items or ratings')
    seconds = {}
    wd_small, small_run, seconds['train_old'] = _select_wd(
        split.n_users, split.n_items, dim - 1, train, val, RETRAIN_WDS,
        s['_retrain'], 'stage 1/3 %d dims' % (dim - 1))
    small = small_run.params
    # One latent column per table, spread like the trained ones (a zero column would get zero
    # gradient on both sides).
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    grown = {}
    for k, table in small.items():
        column = table.std(axis=0).mean() * rng.standard_normal((table.shape[0], 1))
        grown[k] = np.concatenate([table, column.astype(table.dtype)], axis=1)
    seconds['grow'] = time.perf_counter() - t
    t = time.perf_counter()
    scores = {}
    for lam in ref.LAMBDAS:
        u, b, _ = ref.last_column_fold_in(grown[MEMBER], grown[BOOK], train, lam)
        scores[lam] = rmse({MEMBER: u, BOOK: b}, val)
    lam = min(scores, key=scores.get)
    cu, cb, cinfo = ref.last_column_fold_in(grown[MEMBER], grown[BOOK], train, lam)
    bias_lam, bias = ref.choose_bias_lambda(train, val, split.n_users, split.n_items)
    mean = ref.global_mean(train)
    seconds['references'] = time.perf_counter() - t
    wd = lam / len(train.label)
    masks = {k: train_cols([dim - 1]) for k in grown}

    def last_obj(p):
        pred = 1.0 - np.einsum('ij,ij->i', np.asarray(p[MEMBER], np.float64)[train.user],
                               np.asarray(p[BOOK], np.float64)[train.item])
        err = pred - train.label
        return float(err @ err + lam * sum((np.asarray(p[k], np.float64)[:, -1] ** 2).sum()
                                           for k in (MEMBER, BOOK)))

    after_run = fit(split.n_users, split.n_items, dim, train, val, wd=wd,
                    halve_every=s['halve_every'], masks=masks, arg_params=grown,
                    epochs=s['new_epochs'], desc='stage 2/3 last dim (masked)',
                    track=last_obj, **common)
    after = after_run.params
    seconds['train_new_masked'] = after_run.seconds
    # The last-column problem is biconvex (u_k * b_k), so alternating from the init finds a
    # stationary point, not necessarily the best one: masked training has ended below it.
    # Alternating from the masked result as well can only lower its objective, so the better
    # of the two is a reference the masked result never beats.
    t = time.perf_counter()
    mu, mb, minfo = ref.last_column_fold_in(after[MEMBER], after[BOOK], train, lam)
    if minfo['objective'] < cinfo['objective']:
        cu, cb, cinfo = mu, mb, dict(minfo, start='masked result')
    else:
        cinfo = dict(cinfo, start='init')
    ceiling = {MEMBER: cu, BOOK: cb}
    seconds['references'] += time.perf_counter() - t
    wd_full, full_run, seconds['full_retrain'] = _select_wd(
        split.n_users, split.n_items, dim, train, val, RETRAIN_WDS,
        s['_retrain'], 'stage 3/3 full retrain')

    models = {'before': small, 'init': grown, 'masked': after, 'ceiling': ceiling,
              'full_retrain': full_run.params, 'bias_only': bias,
              'global_mean': lambda r: np.full(len(r.label), mean)}
    rm = {m: _rmse_of(p, test) for m, p in models.items()}
    obj = {'masked': last_obj(after), 'ceiling': last_obj(ceiling), 'init': last_obj(grown)}
    frozen = sum(frozen_changed(small[k], np.ascontiguousarray(after[k][:, :dim - 1]))
                 for k in small)
    report = {
        'mode': 'latent-split',
        'frozen_entries_changed': frozen,
        'frozen_entries': sum(v.size for v in small.values()),
        'rmse': rm,
        'gap': gap(obj, rm),
        'objective': obj,
        'choices': {'lambda': lam, 'masked_wd': wd, 'masked_epoch': after_run.epoch,
                    'ceiling_sweeps': cinfo['sweeps'], 'ceiling_start': cinfo['start'],
                    'old_wd': wd_small,
                    'old_epoch': small_run.epoch, 'full_retrain_wd': wd_full,
                    'full_retrain_epoch': full_run.epoch, 'bias_lambda': bias_lam},
        'validation': {'ceiling': rmse(ceiling, val), 'bias_only': _rmse_of(bias, val),
                       'global_mean': _rmse_of(models['global_mean'], val)},
        'carved': {'fit': len(train.label), 'validation': len(val.label)},
        'curves': {'old_model_validation': small_run.curve,
                   'masked_validation': after_run.curve,
                   'masked_objective': after_run.track,
                   'full_retrain_validation': full_run.curve},
        'seconds': seconds,
    }
    report['ok'] = frozen == 0
    report['_tables'] = {'old': small, 'init': grown, 'new': after, 'ceiling': ceiling}
    return report
