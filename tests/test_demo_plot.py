"""The demo's picture is drawn from the report's numbers: the gap curves, the kept epochs, the
RMSE dots and the verdict on the frozen entries are read back from the figure's Axes."""
import json

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from masked_opt.cli import main
from masked_opt.demo import plot, readme


def _report(changed=(0, 0), mode='grow'):
    rng = np.random.default_rng(3)
    per_seed = []
    for seed, bits in zip((4, 5), changed, strict=True):
        best = 100.0 + seed
        track = list(best * (1 + 10.0 ** -np.linspace(1, 3 + seed, 12)))
        track[7] = best * 0.9999999            # a gap below 0: drawn on the floor
        rm = {k: float(rng.uniform(0.1, 1.5)) for k, _ in plot.MODELS if k != 'before'}
        per_seed.append({
            'seed': seed, 'frozen_entries_changed': bits, 'frozen_entries': 640,
            'objective': {'init': best * 40, 'ceiling': best, 'masked': track[9]},
            'curves': {'masked_objective': track},
            'choices': {'masked_epoch': 10},
            'gap': {'objective_percent': 100 * (track[9] - best) / best},
            'rmse': rm, 'rmse_old_pairs': {'before': 0.3, 'after': 0.3}})
    gaps = [r['rmse']['masked'] - r['rmse']['ceiling'] for r in per_seed]
    return {'mode': mode, 'seeds': [4, 5], 'per_seed': per_seed,
            'settings': {'latent_dim': 8}, 'data': {'source': 'synthetic'},
            'summary': {'gap.rmse': {'mean': float(np.mean(gaps))}}}


def test_the_gap_panel_is_the_report_objective_over_epochs():
    report = _report()
    fig = plot.figure(report)
    left, right = fig.axes
    assert left.get_yscale() == 'log' and right.get_xscale() == 'log'
    lines = [ln for ln in left.get_lines() if len(ln.get_xdata()) > 2]   # not the 1% line
    assert len(lines) == 2                                        # one per seed
    for line, r in zip(lines, report['per_seed'], strict=True):
        best = r['objective']['ceiling']
        expect = 100 * (np.array([r['objective']['init']] + r['curves']['masked_objective'])
                        - best) / best
        np.testing.assert_allclose(line.get_ydata(), np.maximum(expect, plot.FLOOR_PERCENT))
        assert list(line.get_xdata()) == list(range(13))          # epoch 0 = init, then 1..12
    dots = [ln for ln in left.get_lines() if len(ln.get_xdata()) == 1]
    assert [(d.get_xdata()[0], d.get_ydata()[0]) for d in dots] == [
        (10, max(r['gap']['objective_percent'], plot.FLOOR_PERCENT)) for r in report['per_seed']]
    assert any('%+.2f%% at epoch 10' % report['per_seed'][0]['gap']['objective_percent']
               in t.get_text() for t in left.get_legend().get_texts())


def test_the_rmse_panel_shows_every_model_and_seed():
    report = _report()
    fig = plot.figure(report)
    right = fig.axes[1]
    labels = [t.get_text() for t in right.get_yticklabels()]
    assert labels[:3] == ['new rows at init', 'masked training', 'ceiling (best possible)']
    for dots, r in zip(right.collections, report['per_seed'], strict=True):
        xs = dots.get_offsets()[:, 0]
        assert list(xs) == [r['rmse'][k] for k, _ in plot.MODELS if k != 'before']


@pytest.mark.parametrize('changed, word, colour', [((0, 0), 'untouched', 'tab:green'),
                                                    ((0, 3), 'CHANGED', 'tab:red')])
def test_the_verdict_on_the_frozen_entries(changed, word, colour):
    fig = plot.figure(_report(changed))
    verdict = [t for t in fig.texts if 'frozen entries' in t.get_text()]
    assert len(verdict) == 1
    text = verdict[0].get_text()
    assert text.startswith('Old rows %s: %d, %d of 640 frozen entries changed their bits '
                           '(seeds 4, 5)' % ((word,) + changed))
    assert verdict[0].get_color() == colour or to_rgba(verdict[0].get_color()) == to_rgba(colour)


def test_a_real_run_writes_the_numbers_it_drew(capsys, tmp_path):
    png = tmp_path / 'p.png'
    args = ['demo', '--users', '30', '--items', '20', '--new-users', '5', '--new-items', '4',
            '--per-user', '6', '--epochs', '2', '--new-epochs', '4', '--seeds', '2',
            '--no-progress', '--json', '--plot', str(png)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    numbers = readme.drawn(png)
    assert numbers['rmse']['masked'] == report['summary']['rmse.masked']['values']
    assert numbers['gap_objective_percent'] == report['summary']['gap.objective_percent'][
        'values']
    for r in report['per_seed']:   # the curve's kept epoch is the reported gap
        epochs, gap = plot.gap_curve(r)
        assert gap[r['choices']['masked_epoch']] == pytest.approx(
            max(r['gap']['objective_percent'], plot.FLOOR_PERCENT), rel=1e-12)
