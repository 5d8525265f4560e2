"""The runnable demo behind ``masked-opt demo``: training, references and the report.

The forum's job end to end on the forum's unmodified matrix-factorisation model: train it on
the old users and items, grow both tables with the users and items that arrived later
(:func:`~masked_opt.grow_params`), train only the new rows with the ``'masked'`` optimizer,
and judge the result against

- the **ceiling**: the optimum of the masked phase's own objective with the old rows frozen
  (ridge fold-in per new row, alternating when new users rate new items;
  :mod:`masked_opt.demo.reference`);
- the **floors**: the global mean and a regularised bias-only model ``mu + b_u + b_i``;
- a **full retrain** from scratch on all the ratings;

with ``wd`` and epochs chosen on validation ratings carved from the training ratings (the
test ratings are used once, at the end), over several seeds (mean +- sd).

Modules: :mod:`~masked_opt.demo.data` (ratings and splits), :mod:`~masked_opt.demo.synthetic`
and :mod:`~masked_opt.demo.files` (where ratings come from), :mod:`~masked_opt.demo.model`
(the model, one ``Module.fit``),
:mod:`~masked_opt.demo.reference` (ceiling and floors, numpy), :mod:`~masked_opt.demo.run`
(the protocol), :mod:`~masked_opt.demo.report` (summary over seeds, text),
:mod:`~masked_opt.demo.plot` (``--plot``), :mod:`~masked_opt.demo.readme` (the README block).
"""
from .. import native
from .model import forum_mf, rmse
from .progress import Progress
from .report import format_report, summarize
from .run import DEMO_DEFAULTS, frozen_changed, planned_batches, run_demo

__all__ = ['run_demo', 'run_seeds', 'summarize', 'format_report', 'forum_mf', 'rmse',
           'frozen_changed', 'DEMO_DEFAULTS']


def run_seeds(make_split, seeds=(0, 1, 2), *, mode='grow', progress=False, **settings):
    """Run the demo once per seed (data, initialisation and training all seeded) and summarize.

    Parameters
    ----------
    make_split : callable
        ``make_split(seed)`` returns the :class:`~masked_opt.demo.data.Split` of that seed.
    seeds : sequence of int
        One run each.
    mode, settings
        As for :func:`run_demo`.
    progress : bool
        One bar on stderr for the whole run: seed, stage and the time left in all.

    Returns
    -------
    dict
        :func:`summarize` of the per-seed reports; the tables of each seed stay under
        ``'_tables'`` of each per-seed report (not JSON).

    Examples
    --------
    >>> from masked_opt.demo.synthetic import synthetic_split
    >>> from masked_opt.demo import run_seeds
    >>> r = run_seeds(lambda s: synthetic_split(30, 20, 5, 4, per_user=5, seed=s), seeds=[0, 1],
    ...               epochs=1, new_epochs=1)
    >>> r['seeds'], r['ok'], len(r['summary']['rmse.masked']['values'])
    ([0, 1], True, 2)
    """
    seeds = list(seeds)
    splits = [make_split(seed) for seed in seeds]
    bar = None
    if progress:    # one bar for the whole run, its total planned up front
        bar = Progress(sum(planned_batches(split, mode=mode, seed=seed, **settings)
                           for split, seed in zip(splits, seeds, strict=True)), len(seeds))
    reports = []
    try:
        for index, (split, seed) in enumerate(zip(splits, seeds, strict=True)):
            if bar is not None:
                bar.seed(index)
            reports.append(run_demo(split, mode=mode, seed=seed, progress=bar or False,
                                    **settings))
    finally:
        if bar is not None:
            bar.close()
    report = summarize(reports)
    # After the runs: the first step that would use the native operators has tried to load them
    st = native.status()
    report['native'] = {'loaded': st.loaded, 'reason': st.reason}
    return report
