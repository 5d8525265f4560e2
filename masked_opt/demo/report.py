"""The demo's report over several seeds: every figure as mean +- sd, and its text form.

:func:`summarize` turns the per-seed reports of :func:`~masked_opt.demo.run.run_demo` into
one report (``--json`` prints it): ``summary`` maps each figure's dotted path (e.g.
``'rmse.masked'``, ``'gap.objective_percent'``, ``'breakdown.new user x new item.count'``)
to ``{'mean', 'sd', 'values'}`` (``sd`` with ``ddof=1``; ``values`` one per seed), and
``per_seed`` keeps the reports themselves. :func:`format_report` is the text
``masked-opt demo`` prints.
"""
import math

import numpy as np

from .data import PAIR_TYPES

__all__ = ['summarize', 'format_report', 'native_line', 'gap', 'few_ratings', 'MODEL_LABELS',
           'FEW_RATINGS']

#: Fewest ratings behind a figure before the text report flags it: the test ratings behind
#: each RMSE, and the masked phase's training ratings behind its objective. An RMSE over n
#: ratings has a relative standard error of about ``1 / sqrt(2 n)`` (normal errors): 10% at 50.
FEW_RATINGS = 50

#: How each model is named in the text report (``rmse`` keys of a per-seed report).
MODEL_LABELS = {
    'before': 'the model before the new column',
    'init': 'new rows at init',
    'masked': 'masked training (only the new rows train)',
    'ceiling': 'ceiling: ridge fold-in, old rows frozen',
    'full_retrain': 'full retrain of everything from scratch',
    'bias_only': 'floor: bias only, mu + b_u + b_i',
    'global_mean': 'floor: global mean',
}
_LATENT_LABELS = dict(MODEL_LABELS, init='new column at init',
                      masked='masked training (only the new column trains)',
                      ceiling='ceiling: best new column, other columns frozen')
_SKIP = ('curves', 'settings', 'data', 'seed', 'mode', 'ok', 'plot')


def gap(objective, rmse_of):
    """Masked training vs the ceiling: objective in percent of the ceiling's, and RMSE.

    ``objective_percent`` is ``100 * (masked - ceiling) / ceiling``. A ceiling whose objective
    is 0 fits the training ratings exactly (every rating equal, say): no relative gap exists,
    so the percent is None (0.0 when masked training is exact too), and ``objective``, the
    absolute difference, is the figure to read.

    Examples
    --------
    >>> from masked_opt.demo.report import gap
    >>> gap({'masked': 1.5, 'ceiling': 1.0}, {'masked': 0.9, 'ceiling': 0.8})['objective_percent']
    50.0
    >>> gap({'masked': 2e-6, 'ceiling': 0.0}, {'masked': 1e-4, 'ceiling': 0.0})['objective_percent']
    """
    diff = objective['masked'] - objective['ceiling']
    if objective['ceiling'] > 0:
        percent = 100.0 * diff / objective['ceiling']
    else:
        percent = 0.0 if diff == 0 else None
    masked, ceiling = rmse_of['masked'], rmse_of['ceiling']
    return {'objective_percent': percent, 'objective': diff,
            'rmse': None if masked is None or ceiling is None else masked - ceiling}


def _leaves(tree, prefix=''):
    for key, value in tree.items():
        if key in _SKIP or key.startswith('_'):
            continue
        path = prefix + str(key)
        if isinstance(value, dict):
            yield from _leaves(value, path + '.')
        elif isinstance(value, (int, float, type(None))) and not isinstance(value, bool):
            yield path, value


def summarize(reports):
    """One report from the per-seed reports (see the module documentation).

    Examples
    --------
    >>> from masked_opt.demo.report import summarize
    >>> r = summarize([{'mode': 'grow', 'ok': True, 'seed': s, 'settings': {}, 'data': {},
    ...                 'frozen_entries_changed': 0, 'rmse': {'masked': x}}
    ...                for s, x in ((0, 0.2), (1, 0.4))])
    >>> r['summary']['rmse.masked']['values'], round(r['summary']['rmse.masked']['sd'], 4)
    ([0.2, 0.4], 0.1414)
    """
    paths = {}
    for report in reports:
        for path, value in _leaves(report):
            paths.setdefault(path, []).append(value)
    summary = {}
    for path, values in paths.items():
        have = [v for v in values if v is not None and math.isfinite(v)]
        summary[path] = {'mean': float(np.mean(have)) if have else None,
                         'sd': float(np.std(have, ddof=1)) if len(have) > 1 else None,
                         'values': values}
    first = reports[0]
    return {'mode': first['mode'], 'seeds': [r['seed'] for r in reports],
            'settings': first['settings'], 'data': first['data'],
            'ok': all(r['ok'] for r in reports),
            'frozen_entries_changed': sum(r['frozen_entries_changed'] for r in reports),
            'few_ratings': [f for f in map(few_ratings, reports) if f is not None],
            'summary': summary, 'per_seed': reports}


def _ms(summary, path, digits=4, sign=False):
    entry = summary.get(path)
    if entry is None or entry['mean'] is None:
        return 'n/a'
    fmt = '%+.*f' if sign else '%.*f'
    text = fmt % (digits, entry['mean'])
    if entry['sd'] is not None:
        text += ' +- %.*f' % (digits, entry['sd'])
    return text


def _values(summary, path, fmt='%g'):
    return ', '.join('n/a' if v is None else fmt % v for v in summary[path]['values'])


def native_line(native):
    """The header's update-path line for ``report['native']`` (``{'loaded', 'reason'}``).

    Examples
    --------
    >>> from masked_opt.demo.report import native_line
    >>> native_line({'loaded': False, 'reason': 'no file x.so'}).split(': ', 1)[1]
    "masked_opt's native operators are not loaded: no file x.so"
    """
    if native['loaded']:
        return "masked_opt's native operators (masked-opt info says more)"
    return ("the pure MXNet path (same bits, slower): masked_opt's native operators are not "
            'loaded: %s' % native['reason'])


def format_report(report):
    """The report of :func:`summarize` as text lines (``masked-opt demo`` without ``--json``).

    Examples
    --------
    >>> from masked_opt.demo import format_report, run_seeds
    >>> from masked_opt.demo.synthetic import synthetic_split
    >>> r = run_seeds(lambda seed: synthetic_split(30, 20, 5, 4, per_user=5, seed=seed),
    ...               seeds=[0], epochs=1, new_epochs=1)
    >>> print(format_report(r)[5])
    frozen entries changed (old rows, compared on the bits): 0 of 400, in each of 1 seed  OK
    """
    s, d, m = report['settings'], report['data'], report['summary']
    grow = report['mode'] == 'grow'
    seeds = report['seeds']
    lines = ['masked-opt demo: %s on %s; %d seed%s (%s), every figure mean +- sd over seeds' % (
        'vocabulary growth' if grow else 'latent split', d['source'].split(' (seed')[0],
        len(seeds), '' if len(seeds) == 1 else 's', ', '.join(map(str, seeds)))]
    lines.append('  users %d old + %d new, items %d old + %d new, latent dim %d, batch %d'
                 % (d['old_users'], d['new_users'], d['old_items'], d['new_items'],
                    s['latent_dim'], s['batch_size']))
    lines.append('  Adam; masked phase: lr %g halved every %d epochs, %d epochs; old model and '
                 'full retrain: lr %g halved every %d epochs, %d epochs'
                 % (s['learning_rate'], s['halve_every'], s['new_epochs'],
                    s['retrain_learning_rate'], s['retrain_halve_every'], s['epochs']))
    if grow:
        lines.append('  ratings (seed %d): old train %d (%d of them for validation), old test '
                     '%d; new-pair train %d (%d for validation), new-pair test %d'
                     % (seeds[0], d['old_train'], report['per_seed'][0]['carved']
                        ['old_validation'], d['old_test'], d['new_train'],
                        report['per_seed'][0]['carved']['new_validation'], d['new_test']))
    else:
        lines.append('  ratings (seed %d): train %d (%d of them for validation), test %d'
                     % (seeds[0], d['old_train'] + d['new_train'],
                        report['per_seed'][0]['carved']['validation'],
                        d['old_test'] + d['new_test']))
    native = report.get('native')
    if native is not None:
        lines.append('  update path: %s' % native_line(native))
    per_seed = report['per_seed'][0]
    what = 'old rows' if grow else 'first %d columns' % (s['latent_dim'] - 1)
    bad = [r['seed'] for r in report['per_seed'] if r['frozen_entries_changed']]
    lines.append('frozen entries changed (%s, compared on the bits): %s of %d, in each of %d '
                 'seed%s  %s' % (what, _values(m, 'frozen_entries_changed', '%d') if bad else 0,
                                 per_seed['frozen_entries'], len(seeds),
                                 '' if len(seeds) == 1 else 's',
                                 'FAILED (seeds %s)' % bad if bad else 'OK'))
    if grow:
        same = all(r['rmse_old_pairs']['before'] == r['rmse_old_pairs']['after']
                   for r in report['per_seed'])
        lines.append('RMSE of old pairs (old test): %s before and after growth (%s); full '
                     'retrain %s' % (_ms(m, 'rmse_old_pairs.before'),
                                     'identical in every seed' if same else 'CHANGED',
                                     _ms(m, 'rmse_old_pairs.full_retrain')))
    lines.append('chosen on validation (per seed): masked phase lambda %s (wd = lambda / N '
                 'train: %s), epoch %s; full retrain wd %s, epoch %s; old model wd %s, epoch %s'
                 % (_values(m, 'choices.lambda'), _values(m, 'choices.masked_wd', '%.2g'),
                    _values(m, 'choices.masked_epoch', '%d'),
                    _values(m, 'choices.full_retrain_wd'),
                    _values(m, 'choices.full_retrain_epoch', '%d'), _values(m, 'choices.old_wd'),
                    _values(m, 'choices.old_epoch', '%d')))
    where = 'new-pair test ratings' if grow else 'test ratings'
    lines.append('RMSE on the %s (used once, at the end):' % where)
    for key in ('before', 'init', 'masked', 'ceiling', 'full_retrain', 'bias_only',
                'global_mean'):
        if 'rmse.' + key in m:
            label = (MODEL_LABELS if grow else _LATENT_LABELS)[key] + (
                ' (%s)' % s['init'] if key == 'init' and grow else '')
            lines.append('  %-50s %s' % (label, _ms(m, 'rmse.' + key)))
    lines.append('gap of masked training to the ceiling: %s' % _gap_text(report))
    few = report.get('few_ratings')
    if few:
        lines.append(_few_ratings_note(few))
    if grow:
        lines += _grow_details(report)
    else:
        lines.append('the ceiling: the new column of both tables alternated to a stationary point '
                     'of the masked objective (biconvex in the two columns), once from the init '
                     'and once from the masked result; the better one (per seed: from %s)'
                     % ', '.join(str(r['choices'].get('ceiling_start'))
                                 for r in report['per_seed']))
    t = m
    lines.append('wall time per seed: old model %s s, grow %s s, ceiling and floors %s s, '
                 'masked phase %s s, full retrain %s s, total %s s' % (
                     _ms(t, 'seconds.train_old', 1), _ms(t, 'seconds.grow', 2),
                     _ms(t, 'seconds.references', 2), _ms(t, 'seconds.train_new_masked', 1),
                     _ms(t, 'seconds.full_retrain', 1), _ms(t, 'seconds.total', 1))
                 + '; whole run %.0f s' % sum(v for v in t['seconds.total']['values'] if v))
    return lines


def _gap_text(report):
    """The gap line after its label; seeds whose ceiling fits exactly have no percent."""
    m, seeds = report['summary'], report['seeds']
    percent = m['gap.objective_percent']['values']
    within = sum(v is not None and v <= 1.0 for v in percent)
    exact = [(seed, r['gap'].get('objective')) for seed, r, v in
             zip(seeds, report['per_seed'], percent, strict=True) if v is None]
    if len(exact) == len(seeds):
        text = 'objective n/a'
    else:
        text = 'objective %s%% (within 1%% in %d of %d seeds%s)' % (
            _ms(m, 'gap.objective_percent', 2, True), within, len(seeds),
            '; n/a in seed%s %s' % ('' if len(exact) == 1 else 's',
                                    ', '.join(str(seed) for seed, _ in exact)) if exact else '')
    text += ', RMSE %s' % _ms(m, 'gap.rmse', 4, True)
    if exact:
        text += (' (%s the ceiling fits the training ratings exactly, objective 0, as when every '
                 'rating is equal: no relative gap exists; masked training\'s objective is %s '
                 'above it)' % ('in every seed' if len(exact) == len(seeds) else
                                'in seed%s %s' % ('' if len(exact) == 1 else 's',
                                                  ', '.join(str(seed) for seed, _ in exact)),
                                ', '.join('n/a' if d is None else '%.3g' % d for _, d in exact)))
    return text


def few_ratings(per_seed):
    """The counts behind a per-seed report's figures, when one is below :data:`FEW_RATINGS`.

    ``test``: the test ratings behind every RMSE; ``fit``: the training ratings of the masked
    phase behind its objective and the gap. Returns ``{'seed', 'test', 'fit'}``, or None when
    both are ample (or the report does not hold them).

    Examples
    --------
    >>> from masked_opt.demo.report import few_ratings
    >>> few_ratings({'mode': 'grow', 'seed': 0, 'data': {'new_test': 1},
    ...              'carved': {'new_fit': 2}})
    {'seed': 0, 'test': 1, 'fit': 2}
    """
    d, carved = per_seed.get('data', {}), per_seed.get('carved', {})
    if per_seed['mode'] == 'grow':
        test, fit = d.get('new_test'), carved.get('new_fit')
    else:
        test, fit = d.get('old_test', 0) + d.get('new_test', 0), carved.get('fit')
    if test is None or fit is None or min(test, fit) >= FEW_RATINGS:   # counts unknown or ample
        return None
    return {'seed': per_seed['seed'], 'test': test, 'fit': fit}


def _few_ratings_note(few):
    counts = '; '.join('seed %d: %d test rating%s, %d training rating%s of the masked phase'
                       % (f['seed'], f['test'], '' if f['test'] == 1 else 's', f['fit'],
                          '' if f['fit'] == 1 else 's') for f in few)
    n = min(f['test'] for f in few)
    return ('note: these figures rest on few ratings (%s; the report flags fewer than %d): an '
            'RMSE over n test ratings is uncertain by about 1/sqrt(2n) of itself (%.0f%% at n = '
            '%d), and a ceiling fitted to a handful of training ratings is nearly exact, so the '
            'objective gap can take any size. Use more ratings (a larger --data file, or more '
            '--users and --per-user)' % (counts, FEW_RATINGS, 100 / math.sqrt(2 * max(n, 1)),
                                          max(n, 1)))


def _grow_details(report):
    m = report['summary']
    lines = ['by pair type (test ratings, mean per seed; RMSE masked / ceiling / full retrain / '
             'bias only):']
    total = sum(m['breakdown.%s.count' % k]['mean'] for k in PAIR_TYPES)
    for kind in PAIR_TYPES:
        p = 'breakdown.%s.' % kind
        if not any(m[p + 'count']['values']):
            continue                      # e.g. no new users at all: nothing to break down
        lines.append('  %-20s %5.0f   %s / %s / %s / %s' % (
            kind, m[p + 'count']['mean'], _ms(m, p + 'rmse.masked', 3),
            _ms(m, p + 'rmse.ceiling', 3), _ms(m, p + 'rmse.full_retrain', 3),
            _ms(m, p + 'rmse.bias_only', 3)))
    items = sum(m['breakdown.%s.count' % k]['mean'] for k in PAIR_TYPES[::2])
    users = sum(m['breakdown.%s.count' % k]['mean'] for k in PAIR_TYPES[1:])
    for share, what, flag in ((items, 'item', '--new-items'), (users, 'user', '--new-users')):
        grown = report['data']['new_%ss' % what] > 0     # a table nobody asked to grow: no note
        if grown and total and share < 0.05 * total and report['data']['noise'] is None:
            lines.append('  note: only %.0f of %.0f test ratings involve a new %s: this split '
                         'hardly exercises %s growth (with --data, %s 0.1 holds out 10%% of '
                         'the %ss at random)' % (share, total, what, what, flag, what))
    un = 'unrated_new_rows.'
    lines.append('new rows without a training rating: %s users, %s items (%s test ratings '
                 'touch them; masked RMSE there %s). No rating, no gradient from the data: '
                 'weight decay pulls such a row towards 0 (the ceiling\'s optimum, predicting '
                 'the mean label); with wd = 0 it would stay at its initial value'
                 % (_ms(m, un + 'users', 1), _ms(m, un + 'items', 1),
                    _ms(m, un + 'test_ratings', 1), _ms(m, un + 'rmse_masked', 3)))
    lines.append('how the new rows look next to the old ones (a description, not a quality '
                 'score: row norms mean +- sd within a table, averaged over seeds; KS = '
                 'Kolmogorov-Smirnov distance between the old and new norm distributions):')
    for when in ('at_init', 'after'):
        for table in ('member', 'book'):
            p = 'comparability.%s.%s.' % (when, table)
            if p + 'ks_statistic' not in m:
                continue
            lines.append('  %-14s %-6s old %.3f +- %.3f   new %.3f +- %.3f   KS %s' % (
                'at init' if when == 'at_init' else 'after masked', table,
                m[p + 'old_norm_mean']['mean'], m[p + 'old_norm_std']['mean'],
                m[p + 'new_norm_mean']['mean'], m[p + 'new_norm_std']['mean'],
                _ms(m, p + 'ks_statistic', 3)))
    return lines
