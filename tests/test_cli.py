"""``masked-opt demo`` on tiny settings: the JSON report over seeds, the text report, --data
(time split and ids held out at random), --plot, --mode latent-split, the frozen check's
verdict and exit code, and bad input (one line on stderr, exit code 2, no traceback)."""
import json
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from ratings_files import movielens_lines, write

import masked_opt.demo.run as demo_run
from masked_opt.cli import main
from masked_opt.demo.data import MIN_RATINGS
from masked_opt.demo.files import MAX_RATING
from masked_opt.demo.model import MEMBER
from masked_opt.demo.report import FEW_RATINGS

TINY = ['--users', '60', '--items', '40', '--new-users', '12', '--new-items', '8',
        '--per-user', '10', '--epochs', '6', '--new-epochs', '12', '--halve-every', '4',
        '--batch-size', '64', '--seeds', '2', '--no-progress']


def run(capsys, *args):
    code = main(['demo', *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args):
    code, out, err = run(capsys, *args, '--json')
    return code, json.loads(out)


def test_demo_grow_json_report(capsys):
    code, r = run_json(capsys, *TINY)
    assert code == 0 and r['ok'] is True and r['seeds'] == [0, 1]
    assert r['frozen_entries_changed'] == 0 and len(r['per_seed']) == 2
    m = r['summary']
    for key in ('init', 'masked', 'ceiling', 'full_retrain', 'bias_only', 'global_mean'):
        entry = m['rmse.' + key]
        assert len(entry['values']) == 2 and entry['mean'] == pytest.approx(
            np.mean(entry['values'])) and entry['sd'] == pytest.approx(
            np.std(entry['values'], ddof=1))
    for seed in r['per_seed']:
        assert seed['frozen_entries'] == (60 + 40) * 8
        assert seed['rmse_old_pairs']['before'] == seed['rmse_old_pairs']['after']
        assert seed['rmse']['masked'] < seed['rmse']['init']
        # The ceiling is the optimum of the masked phase's objective: nothing beats it there.
        assert seed['objective']['ceiling'] <= seed['objective']['masked'] * (1 + 1e-9)
        assert seed['gap']['objective_percent'] >= -1e-7
        c = seed['choices']
        assert c['masked_wd'] == pytest.approx(c['lambda'] / seed['carved']['new_fit'])
        assert 1 <= c['masked_epoch'] <= 12 and len(seed['curves']['masked_validation']) == 12
        counts = [seed['breakdown'][k]['count'] for k in seed['breakdown']]
        assert sum(counts) == seed['data']['new_test']
        assert seed['carved']['new_fit'] + seed['carved']['new_validation'] == seed['data'][
            'new_train']
        for when in ('at_init', 'after'):
            assert 0 <= seed['comparability'][when]['member']['ks_statistic'] <= 1
    assert r['settings']['init'] == 'mean_cov'
    _, again = run_json(capsys, *TINY)                # same seeds, same numbers
    assert [s['rmse'] for s in again['per_seed']] == [s['rmse'] for s in r['per_seed']]


def test_demo_text_report(capsys):
    code, out, err = run(capsys, *TINY, '--new-epochs', '2', '--epochs', '2', '--init', 'zeros')
    assert code == 0, err
    assert 'frozen entries changed (old rows, compared on the bits): 0 of 800, in each of 2 ' \
           'seeds  OK' in out
    for text in ('identical in every seed', 'ceiling: ridge fold-in, old rows frozen',
                 'floor: bias only, mu + b_u + b_i', 'floor: global mean',
                 'gap of masked training to the ceiling: objective', 'by pair type',
                 'new user x new item', 'new rows without a training rating',
                 'a description, not a quality score', 'chosen on validation (per seed)'):
        assert text in out, text
    assert 'best possible' not in out and 'Traceback' not in err
    assert re.search(r'masked training \(only the new rows train\) +[0-9.]+ \+- [0-9.]+', out)


def _inject_frozen_change(monkeypatch, old_value, new_value):
    """The old model's entry [0, 0] becomes ``old_value``; after the masked phase ``new_value``."""
    real_fit = demo_run.fit

    def fit(*args, masks=None, **kwargs):
        result = real_fit(*args, masks=masks, **kwargs)
        if kwargs.get('arg_params') is None and args[0] == 60:     # the old model (60 users)
            result.params[MEMBER][0, 0] = old_value
        elif masks is not None:                                    # the masked phase
            result.params[MEMBER][0, 0] = new_value
        return result
    monkeypatch.setattr(demo_run, 'fit', fit)


@pytest.mark.parametrize('old_value, new_value', [(0.0, -0.0), (0.5, 0.5000001)])
def test_a_changed_frozen_entry_fails_the_report_and_exits_1(capsys, monkeypatch, old_value,
                                                             new_value):
    # -0.0 == 0.0 as values, but not as bits: the check compares bits.
    _inject_frozen_change(monkeypatch, old_value, new_value)
    code, out, _ = run(capsys, *TINY, '--epochs', '2', '--new-epochs', '2')
    assert code == 1
    assert re.search(r'frozen entries changed \(old rows, compared on the bits\): 1, 1 of 800, '
                     r'in each of 2 seeds  FAILED \(seeds \[0, 1\]\)', out), out
    _inject_frozen_change(monkeypatch, old_value, new_value)
    code, r = run_json(capsys, *TINY, '--epochs', '2', '--new-epochs', '2')
    assert code == 1 and r['ok'] is False and r['frozen_entries_changed'] == 2


def test_demo_latent_split_json(capsys):
    code, r = run_json(capsys, *TINY, '--mode', 'latent-split', '--new-epochs', '6')
    assert code == 0 and r['ok'] is True and r['mode'] == 'latent-split'
    for seed in r['per_seed']:
        assert seed['frozen_entries_changed'] == 0 and seed['frozen_entries'] == (60 + 40) * 7
        assert seed['objective']['masked'] < seed['objective']['init']
        assert seed['objective']['ceiling'] <= seed['objective']['masked'] * (1 + 1e-9)


def test_demo_on_a_movielens_file(capsys, tmp_path):
    path = write(tmp_path, movielens_lines(n_users=40, n_items=30, seed=2))
    code, r = run_json(capsys, *TINY[10:], '--data', path, '--cutoff', '0.6')
    assert code == 0 and r['frozen_entries_changed'] == 0
    assert r['data']['new_users'] > 0 and r['data']['source'] == (
        'u.data (cut-off: 0.6 quantile of timestamps)')
    seed = r['per_seed'][0]
    assert seed['rmse_old_pairs']['before'] == seed['rmse_old_pairs']['after']


def test_demo_holds_out_whole_items_of_a_movielens_file(capsys, tmp_path):
    path = write(tmp_path, movielens_lines(n_users=40, n_items=30, seed=2))
    code, r = run_json(capsys, *TINY[10:], '--data', path, '--new-items', '0.2')
    assert code == 0
    assert r['data']['new_items'] == 6 and r['data']['new_users'] == 0
    counts = {k: v['count'] for k, v in r['per_seed'][0]['breakdown'].items()}
    assert counts['old user x new item'] == r['data']['new_test'] > 0


def test_time_split_report_says_when_item_growth_is_hardly_exercised(capsys, tmp_path):
    # Late ratings are new users x old items, and 4 ratings of one new item (as on MovieLens,
    # where a time split puts 37 of 3427 test ratings on new items): the report says so.
    rng = np.random.default_rng(0)
    lines = ['%d\t%d\t%d\t%d' % (u, i, rng.integers(1, 6), 1000 + u * 10 + i)
             for u in range(1, 41) for i in range(1, 11)]
    lines += ['%d\t11\t4\t%d' % (u, 5000 + u) for u in (1, 2, 3, 4)]
    path = write(tmp_path, '\n'.join(lines) + '\n')
    code, out, err = run(capsys, *TINY[10:], '--data', path, '--cutoff', '0.5')
    assert code == 0, err
    assert re.search(r'old user x new item +1 ', out), out
    assert re.search(r'note: only 1 of \d+ test ratings involve a new item: this split hardly '
                     r'exercises item growth \(with --data, --new-items 0.1 holds out 10% of '
                     r'the items at random\)', out), out


def _constant_file(tmp_path):
    # Implicit feedback: every rating is 1.
    lines = [line.split('\t') for line in movielens_lines(n_users=40, n_items=30).splitlines()]
    return write(tmp_path, ''.join('%s\t%s\t1\t%s\n' % (u, i, t) for u, i, _, t in lines))


def test_every_rating_equal_is_reported_not_a_zero_division(capsys, tmp_path):
    # The ceiling fits a constant file exactly (objective 0): a ZeroDivisionError before.
    path = _constant_file(tmp_path)
    code, out, err = run(capsys, *TINY[10:], '--data', path, '--new-items', '0.2')
    assert code == 0, err
    assert re.search(r'^  ceiling: ridge fold-in, old rows frozen +0\.0000 ', out, re.M), out
    assert re.search(r'^gap of masked training to the ceiling: objective n/a, RMSE \+[0-9.]+ .*'
                     r'\(in every seed the ceiling fits the training ratings exactly, objective '
                     r'0, as when every rating is equal: no relative gap exists; masked '
                     r"training's objective is [0-9.e-]+, [0-9.e-]+ above it\)$", out, re.M), out
    code, r = run_json(capsys, *TINY[10:], '--data', path, '--new-items', '0.2')
    assert code == 0 and r['summary']['gap.objective_percent']['values'] == [None, None]
    for seed in r['per_seed']:
        assert seed['objective']['ceiling'] == 0.0
        assert seed['gap']['objective'] == seed['objective']['masked'] > 0
    code, _, err = run(capsys, *TINY[10:], '--data', path, '--mode', 'latent-split')
    assert code == 0, err
    pytest.importorskip('matplotlib', reason='matplotlib is in the test extra')
    png = tmp_path / 'constant.png'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        code, out, err = run(capsys, *TINY[10:], '--data', path, '--new-items', '0.2', '--plot',
                             str(png))
    assert code == 0 and 'plot written to' in out, err
    # RMSEs of 0 on a log axis made matplotlib warn "non-positive xlim ... ignored".
    assert not [str(w.message) for w in caught if 'lim' in str(w.message)]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_figures_on_few_ratings_say_so(capsys, tmp_path):
    # 29 ratings: one new-pair test rating per seed; the report printed a gap of +2645.69% with
    # nothing to say how little stands behind it.
    lines = movielens_lines(n_users=5, n_items=9).splitlines()[:29]
    path = write(tmp_path, '\n'.join(lines) + '\n')
    code, out, err = run(capsys, *TINY[10:], '--data', path, '--new-items', '0.2')
    assert code == 0, err
    assert re.search(r'^note: these figures rest on few ratings \(seed 0: 1 test rating, \d+ '
                     r'training ratings? of the masked phase; seed 1: .*; the report flags fewer '
                     r'than 50\): an RMSE over n test ratings is uncertain by about 1/sqrt\(2n\) '
                     r'of itself \(71% at n = 1\), .* Use more ratings', out, re.M), out
    code, r = run_json(capsys, *TINY[10:], '--data', path, '--new-items', '0.2')
    assert [f['seed'] for f in r['few_ratings']] == [0, 1]
    assert r['few_ratings'][0]['test'] == r['per_seed'][0]['data']['new_test'] == 1
    # Enough ratings: no note.
    code, out, _ = run(capsys, *TINY, '--per-user', '20', '--epochs', '1', '--new-epochs', '1')
    assert code == 0 and 'note: these figures' not in out, out


def test_demo_plot(capsys, tmp_path):
    pytest.importorskip('matplotlib', reason='matplotlib is in the test extra; '
                        'pip install .[test]')
    for mode in ('grow', 'latent-split'):
        png = tmp_path / ('%s.png' % mode)
        code, out, _ = run(capsys, *TINY, '--epochs', '2', '--new-epochs', '2', '--mode', mode,
                           '--plot', str(png))
        assert code == 0 and 'plot written to' in out
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000


def test_plot_without_matplotlib_is_a_clear_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    code, out, err = run(capsys, *TINY, '--plot', str(tmp_path / 'x.png'))
    assert code == 2 and out == ''
    assert err.count('\n') == 1 and "pip install 'matplotlib>=" in err


def _bad_file(tmp_path, kind):
    lines = movielens_lines().splitlines()
    if kind == 'malformed':
        lines[4] = '3\t7\tfour\t881250949'
    elif kind == 'short':
        lines = lines[:5]
    elif kind == 'all_old':
        lines = ['%d\t%d\t3\t%d' % (k % 5, k % 4, k) for k in range(60)]
    elif kind == 'long_id':
        lines[6] = '12345678901234567890\t7\t4\t881250949'       # a 20-digit hashed id
    elif kind == 'huge_rating':
        lines[2] = '3\t7\t1e308\t881250949'
    return write(tmp_path, '\n'.join(lines) + '\n')


@pytest.mark.parametrize('args, message', [
    (['--data', '{tmp}/missing.data'], 'cannot read ratings file .*missing.data'),
    (['--data', 'malformed'], r'u.data:5: expected a finite number as rating'),
    (['--data', 'short'], 'holds 5 ratings; expected at least 20'),
    (['--data', 'long_id'], r'u.data:7: user id 12345678901234567890 does not fit a 64-bit'),
    (['--data', 'huge_rating', '--new-items', '0.2'], r'u.data:3: rating 1e308 is outside'),
    (['--data', 'all_old', '--cutoff', '0.9'], 'cutoff 0.9 leaves no new users and no new items'),
    (['--data', 'malformed', '--cutoff', '1.5'], 'u.data:5'),  # file errors come first
    (['--cutoff', '1.5', '--data', 'all_old'], 'strictly between 0 and 1'),
    (['--cutoff', '0.85'], '--cutoff 0.85: only applies with --data'),
    (['--data', 'all_old', '--users', '10'], '--users: only applies to synthetic data'),
    (['--data', 'all_old', '--new-items', '2'], r'--new-items: expected a share .*\[0, 1\)'),
    (['--data', 'all_old', '--new-items', '0.2', '--cutoff', '0.5'], 'choose one split'),
    (['--new-items', '0.5'], 'expected a whole number of new rows for synthetic data'),
    (['--new-items', 'x'], "expected a non-negative number, received 'x'"),
    (['--epochs', '0'], "--epochs: expected a positive int, received '0'"),
    (['--epochs', 'ten'], "--epochs: expected a positive int, received 'ten'"),
    (['--seeds', '0'], "--seeds: expected a positive int, received '0'"),
    (['--learning-rate', 'nan'], 'expected a positive float'),
    (['--learning-rate', 'inf'], "--learning-rate: expected a positive float, received 'inf'"),
    (['--retrain-learning-rate=-inf'], "expected a positive float, received '-inf'"),
    # Finite but diverging: a one-line error naming the phase (a traceback from the report or
    # from growing NaN rows before).
    (['--learning-rate', '1e30'], r'stage 2/3 new rows \(masked\): training diverged \(NaN or '
     r'Inf .* learning rate 1e\+30\); lower that phase\'s learning rate \(--learning-rate for '
     r'the masked phase'),
    (['--retrain-learning-rate', '1e30'], r'stage 1/3 old model \(wd 0\): training diverged'),
    (['--mode', 'latent-split', '--learning-rate', '1e30'], r'stage 2/3 last dim \(masked\): '
     r'training diverged'),
    (['--seed', '-1'], 'expected a non-negative integer'),
    (['--mode', 'bogus'], "invalid choice: 'bogus'"),
    (['--init', 'copy'], "invalid choice: 'copy'"),
    (['--frobnicate'], 'unrecognized arguments: --frobnicate'),
    (['--per-user', '50', '--items', '40'], '--per-user 50: expected at most --items 40'),
    (['--new-users', '0', '--new-items', '0'], 'nothing to grow'),
    (['--mode', 'latent-split', '--latent-dim', '1'], '--latent-dim 1: latent-split trains the '
     'last of at least 2'),
    (['--users', '3', '--items', '3', '--per-user', '1', '--new-users', '1', '--new-items',
      '0'], 'too small'),
    (['--plot', '{tmp}/no/such/dir/x.png'], 'does not exist'),
    (['--plot', '{tmp}/x.jpg'], 'ending in .png, .pdf or .svg'),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, args, message):
    fixed = []
    for a in args:
        if a in ('malformed', 'short', 'all_old', 'long_id', 'huge_rating'):
            a = _bad_file(tmp_path, a)
        fixed.append(a.replace('{tmp}', str(tmp_path)))
    if any('plot' in a for a in args):
        pytest.importorskip('matplotlib', reason='the plot checks run after the import check')
    code, out, err = run(capsys, *fixed, '--epochs', '1', '--new-epochs', '1', '--seeds', '1',
                         '--no-progress')
    assert code == 2, err
    assert out == ''
    assert err.count('\n') == 1 and err.startswith('masked-opt: error: '), err
    assert re.search(message, err), err


def test_boundaries_that_are_valid_input(capsys):
    # --seed 0 is a seed (not "missing"); --per-user equal to --items: every user rates every
    # item, the most the synthetic data allows.
    code, r = run_json(capsys, *TINY, '--seed', '0', '--seeds', '1', '--per-user', '40',
                       '--epochs', '1', '--new-epochs', '1')
    assert code == 0 and r['seeds'] == [0]
    assert r['data']['old_train'] + r['data']['old_test'] == 60 * 40


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as info:
        main(['demo', '--help'])
    out = capsys.readouterr().out
    assert info.value.code == 0 and '--new-items' in out and '--seeds' in out
    # The limits it states are the code's.
    flat = ' '.join(out.split())
    assert 'holds at least %d ratings' % MIN_RATINGS in flat
    assert 'ratings numbers within +-%s' % ('%g' % MAX_RATING).replace('e+0', 'e') in flat
    assert 'fewer than %d test ratings, or %d training ratings' % (FEW_RATINGS,
                                                                   FEW_RATINGS) in flat
    assert '``' not in out and ':func:' not in out and ':mod:' not in out


def test_no_subcommand_is_an_error(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith('masked-opt: error: ')


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    bad = subprocess.run([sys.executable, '-m', 'masked_opt', 'demo', '--data',
                          str(tmp_path / 'none.data')], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and 'Traceback' not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if 'MKLDNN' not in line] == [
        'masked-opt: error: cannot read ratings file %s: No such file or directory'
        % (tmp_path / 'none.data')]
    good = subprocess.run([sys.executable, '-m', 'masked_opt', 'demo', *TINY, '--epochs', '1',
                           '--new-epochs', '1', '--seeds', '1', '--json'], capture_output=True,
                          text=True, env=env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)['frozen_entries_changed'] == 0


def test_progress_bars_go_to_stderr(capsys):
    args = [a for a in TINY if a != '--no-progress']
    code, out, err = run(capsys, *args, '--epochs', '1', '--new-epochs', '1', '--seeds', '1',
                         '--json')
    assert code == 0
    assert json.loads(out)['ok'] is True  # stdout stays clean JSON
    assert 'new rows (masked)' in err
    assert np.isfinite(json.loads(out)['summary']['rmse.masked']['mean'])
