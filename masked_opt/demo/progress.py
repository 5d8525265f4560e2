"""One progress bar for the whole demo: which seed, which stage, and the time left in all.

The demo trains about ten times per seed (the old model and the full retrain once per ``wd``,
the masked phase once), over several seeds. One bar per training would reset ten times a seed
and say "3/3" with two thirds of the run still ahead, so :class:`Progress` counts every
batch of the whole run against the total planned up front
(:func:`~masked_opt.demo.run.planned_batches`), and its label names the seed and the stage:
``seed 2/3, stage 1/3 old model (wd 0.001)``. The time left is tqdm's estimate from the rate
so far over all the batches still to come.
"""
import sys

from tqdm import tqdm

__all__ = ['Progress']

_FORMAT = '{desc}: {percentage:3.0f}%|{bar}| {elapsed} so far, ~{remaining} left{postfix}'


class Progress:
    """A tqdm bar over ``total`` batches, labelled with the seed and the stage.

    Parameters
    ----------
    total : int
        Batches of the whole run.
    n_seeds : int
        Seeds in the run (for the ``seed i/n`` label).
    file : file-like
        Where the bar goes (default ``sys.stderr``).

    Examples
    --------
    >>> import io
    >>> from masked_opt.demo.progress import Progress
    >>> p = Progress(3, n_seeds=2, file=io.StringIO())
    >>> p.seed(0); p.stage('stage 1/3 old model (wd 0)'); p.update(); p.seed(1); p.update(2)
    >>> p.label, p.done, p.total
    ('seed 2/2, stage 1/3 old model (wd 0)', 3, 3)
    >>> p.close()
    """

    def __init__(self, total, n_seeds=1, *, file=None):
        self.total, self.n_seeds, self.done = int(total), int(n_seeds), 0
        self._seed, self._stage = 0, ''
        self._bar = tqdm(total=self.total, unit='batch', file=file or sys.stderr,
                         bar_format=_FORMAT, dynamic_ncols=True, leave=False)

    @property
    def label(self):
        """``'seed i/n, <stage>'``."""
        return 'seed %d/%d, %s' % (self._seed + 1, self.n_seeds, self._stage)

    def seed(self, index):
        """Start the seed at ``index`` (0-based) of the run."""
        self._seed = int(index)
        self._bar.set_description_str(self.label, refresh=False)

    def stage(self, text):
        """Name the stage now running (``'stage 1/3 old model (wd 0)'``)."""
        self._stage = text
        self._bar.set_description_str(self.label, refresh=False)
        self._bar.set_postfix_str('', refresh=True)

    def update(self, n=1):
        """``n`` more batches done."""
        self.done += n
        self._bar.update(n)

    def note(self, text):
        """A short note after the bar (the last validation RMSE)."""
        self._bar.set_postfix_str(text, refresh=False)

    def close(self):
        self._bar.close()
