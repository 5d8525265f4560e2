"""The demo's progress: one bar over the whole run whose total is what the run trains, labelled
with seed and stage, and no MXNet log line inside it."""
import os
import subprocess
import sys

import masked_opt.demo as demo
from masked_opt.demo.progress import Progress
from masked_opt.demo.synthetic import synthetic_split

SETTINGS = dict(epochs=2, new_epochs=3, batch_size=32)


class Recording(Progress):
    made = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = []
        Recording.made.append(self)

    def stage(self, text):
        super().stage(text)
        self.labels.append(self.label)


def _run(monkeypatch, mode):
    Recording.made = []
    monkeypatch.setattr(demo, 'Progress', Recording)
    return demo.run_seeds(lambda s: synthetic_split(30, 20, 5, 4, per_user=6, seed=s),
                          seeds=[3, 4], mode=mode, progress=True, **SETTINGS)


def test_one_bar_whose_total_is_every_batch_trained(monkeypatch):
    for mode in ('grow', 'latent-split'):
        _run(monkeypatch, mode)
        (bar,) = Recording.made
        assert bar.total > 0 and bar.done == bar.total, (mode, bar.done, bar.total)


def test_the_label_names_seed_and_stage(monkeypatch):
    _run(monkeypatch, 'grow')
    (bar,) = Recording.made
    wds = ['(wd 0)', '(wd 0.0001)', '(wd 0.001)']
    per_seed = (['stage 1/3 old model %s' % w for w in wds] + ['stage 2/3 new rows (masked)']
                + ['stage 3/3 full retrain %s' % w for w in wds])
    assert bar.labels == ['seed %d/2, %s' % (i, s) for i in (1, 2) for s in per_seed]


def test_no_mxnet_log_line_lands_in_the_bar():
    env = {k: v for k, v in os.environ.items() if k != 'MXNET_SUBGRAPH_VERBOSE'}
    out = subprocess.run(
        [sys.executable, '-m', 'masked_opt', 'demo', '--users', '30', '--items', '20',
         '--new-users', '5', '--new-items', '4', '--per-user', '6', '--epochs', '1',
         '--new-epochs', '1', '--seeds', '1'], env=env, capture_output=True, text=True,
        timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'seed 1/1, stage 3/3 full retrain' in out.stderr
    assert 'Subgraph backend' not in out.stderr, out.stderr[-500:]
