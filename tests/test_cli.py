"""``masked-opt demo`` on tiny settings: the JSON report, the text report, --data, --plot,
--mode latent-split, and bad input (one line on stderr, exit code 2, no traceback)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_data import movielens_lines, write

from masked_opt.cli import main

TINY = ['--users', '60', '--items', '40', '--new-users', '12', '--new-items', '8',
        '--per-user', '10', '--epochs', '6', '--new-epochs', '12', '--batch-size', '64',
        '--no-progress']


def run(capsys, *args):
    code = main(['demo', *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args):
    code, out, err = run(capsys, *args, '--json')
    return code, json.loads(out)


def test_demo_grow_json_report(capsys):
    code, r = run_json(capsys, *TINY)
    assert code == 0 and r['ok'] is True
    assert r['frozen_entries_changed'] == 0
    assert r['frozen_entries'] == (60 + 40) * 8
    assert r['new_entries'] == (12 + 8) * 8
    assert r['new_entries_changed'] == r['new_entries']  # every new entry trained
    rmse = r['rmse']
    assert rmse['old_pairs_before'] == rmse['old_pairs_after']
    assert rmse['new_pairs_after'] < rmse['new_pairs_init']
    assert rmse['new_pairs_full_retrain'] is not None
    assert len(r['curves']['new_pairs_masked']) == 12
    assert len(r['curves']['old_pairs_phase1']) == 6
    for phase in ('train_old', 'grow', 'train_new_masked', 'full_retrain', 'total'):
        assert r['seconds'][phase] >= 0
    for when in ('at_init', 'after'):
        for table in ('member', 'book'):
            c = r['comparability'][when][table]
            assert 0 <= c['ks_statistic'] <= 1 and c['new_norm_mean'] > 0
    assert r['data']['new_users'] == 12 and r['data']['source'] == 'synthetic (seed 0)'
    assert r['settings']['init'] == 'mean_cov'

    # Same seed, same numbers (wall times aside).
    _, again = run_json(capsys, *TINY)
    assert again['rmse'] == r['rmse'] and again['curves'] == r['curves']


def test_demo_text_report(capsys):
    code, out, err = run(capsys, *TINY, '--new-epochs', '2', '--epochs', '2', '--init', 'zeros')
    assert code == 0
    assert 'frozen entries changed (old rows, compared on the bits): 0 of 800  OK' in out
    assert 'RMSE old pairs: before' in out and '(identical)' in out
    assert 'RMSE new pairs: at init' in out and 'full retrain' in out
    assert 'wall time: train old' in out
    assert 'Traceback' not in err


def test_demo_latent_split_json(capsys):
    code, r = run_json(capsys, *TINY, '--mode', 'latent-split', '--new-epochs', '6')
    assert code == 0 and r['ok'] is True and r['mode'] == 'latent-split'
    assert r['frozen_entries_changed'] == 0 and r['frozen_entries'] == (60 + 40) * 7
    assert r['new_entries_changed'] == r['new_entries'] == 60 + 40
    assert r['rmse']['test_after'] < r['rmse']['test_init']


def test_demo_on_a_movielens_file(capsys, tmp_path):
    path = write(tmp_path, movielens_lines(n_users=40, n_items=30, seed=2))
    code, r = run_json(capsys, *TINY, '--data', path, '--cutoff', '0.6')
    assert code == 0 and r['frozen_entries_changed'] == 0
    assert r['data']['new_users'] > 0 and r['data']['source'].startswith('u.data')
    assert r['rmse']['old_pairs_before'] == r['rmse']['old_pairs_after']


def test_demo_plot(capsys, tmp_path):
    pytest.importorskip('matplotlib', reason='matplotlib is in the test extra; '
                        'pip install .[test]')
    png = tmp_path / 'demo.png'
    code, out, _ = run(capsys, *TINY, '--epochs', '2', '--new-epochs', '2', '--plot', str(png))
    assert code == 0 and 'plot written to' in out
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000


def test_plot_without_matplotlib_is_a_clear_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    code, out, err = run(capsys, *TINY, '--plot', str(tmp_path / 'x.png'))
    assert code == 2 and out == ''
    assert err.count('\n') == 1 and "pip install 'masked_opt[plot]'" in err


def _bad_file(tmp_path, kind):
    lines = movielens_lines().splitlines()
    if kind == 'malformed':
        lines[4] = '3\t7\tfour\t881250949'
    elif kind == 'short':
        lines = lines[:5]
    elif kind == 'all_old':
        lines = ['%d\t%d\t3\t%d' % (k % 5, k % 4, k) for k in range(60)]
    return write(tmp_path, '\n'.join(lines) + '\n')


@pytest.mark.parametrize('args, message', [
    (['--data', '{tmp}/missing.data'], 'cannot read ratings file .*missing.data'),
    (['--data', 'malformed'], r'u.data:5: expected a finite number as rating'),
    (['--data', 'short'], 'holds 5 ratings; expected at least 20'),
    (['--data', 'all_old', '--cutoff', '0.9'], 'no new users and no new items'),
    (['--data', 'malformed', '--cutoff', '1.5'], 'u.data:5'),  # file errors come first
    (['--cutoff', '1.5', '--data', 'all_old'], 'strictly between 0 and 1'),
    (['--epochs', '0'], "--epochs: expected a positive int, received '0'"),
    (['--epochs', 'ten'], "--epochs: expected a positive int, received 'ten'"),
    (['--learning-rate', 'nan'], 'expected a positive float'),
    (['--seed', '-1'], 'expected a non-negative integer'),
    (['--mode', 'bogus'], "invalid choice: 'bogus'"),
    (['--init', 'copy'], "invalid choice: 'copy'"),
    (['--frobnicate'], 'unrecognized arguments: --frobnicate'),
    (['--per-user', '50', '--items', '40'], '--per-user 50: expected at most --items 40'),
    (['--new-users', '0', '--new-items', '0'], 'nothing to grow'),
    (['--plot', '{tmp}/no/such/dir/x.png'], 'does not exist'),
    (['--plot', '{tmp}/x.jpg'], 'ending in .png, .pdf or .svg'),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, args, message):
    fixed = []
    for a in args:
        if a in ('malformed', 'short', 'all_old'):
            a = _bad_file(tmp_path, a)
        fixed.append(a.replace('{tmp}', str(tmp_path)))
    if any('plot' in a for a in args):
        pytest.importorskip('matplotlib', reason='the plot checks run after the import check')
    code, out, err = run(capsys, *fixed)
    assert code == 2, err
    assert out == ''
    assert err.count('\n') == 1 and err.startswith('masked-opt: error: '), err
    assert re.search(message, err), err


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
                           '--new-epochs', '1', '--json'], capture_output=True, text=True,
                          env=env)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)['frozen_entries_changed'] == 0


def test_progress_bars_go_to_stderr(capsys):
    args = [a for a in TINY if a != '--no-progress']
    code, out, err = run(capsys, *args, '--epochs', '1', '--new-epochs', '1', '--json')
    assert code == 0
    assert json.loads(out)['ok'] is True  # stdout stays clean JSON
    assert 'train new rows (masked)' in err
    assert np.isfinite(json.loads(out)['rmse']['new_pairs_after'])
