"""The README's demo output, the numbers of ``docs/howto/grow.md`` and the docs' picture,
generated, never pasted.

``python -m masked_opt.demo.readme`` runs ``masked-opt demo --plot`` with its defaults and
rewrites the generated blocks in place, each between ``<!-- generated: NAME -->`` and
``<!-- end generated: NAME -->``, and the picture :data:`FIGURE` (a PNG that carries the
numbers it was drawn from). ``--check`` only compares and exits 1 when a block or the picture
is stale.
The wall-time and update-path lines are shown but never compared (they depend on the
machine); ``tests/test_readme_block.py`` runs the check.
"""
import contextlib
import io
import json
import os
import pathlib
import re
import sys
import tempfile

__all__ = ['demo_output', 'blocks', 'replace_block', 'stale_blocks', 'stale_figure', 'drawn',
           'ROOT', 'PAGES', 'FIGURE']

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The files holding generated blocks, by block name.
PAGES = {'demo-output': 'README.md', 'demo-time': 'README.md',
         'grow-numbers': 'docs/howto/grow.md'}
#: The demo's picture (``--plot``) from the same run, shown in the docs and the README.
FIGURE = 'docs/img/demo.png'
#: Lines that depend on the machine, shown but never compared: wall times, and whether the
#: native operators were built here.
_MACHINE = re.compile(r'^(wall time[^:]*|  update path|How long):.*$', re.M)


def demo_output(argv=('demo', '--no-progress'), plot=None):
    """Run ``masked-opt`` with ``argv`` (and ``--plot plot``); return ``(exit code, text)``.

    The text is what the demo prints, less the line that names the plot file.
    """
    from ..cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv) + (['--plot', str(plot)] if plot else []))
    text = out.getvalue()
    if plot:
        text = text.replace('plot written to %s\n' % plot, '')
    return code, text


def drawn(path):
    """The numbers a PNG of ``masked-opt demo --plot`` was drawn from (its Description)."""
    from PIL import Image
    with Image.open(path) as image:
        return json.loads(image.text['Description'])


def _rounded(tree, digits=4):
    if isinstance(tree, dict):
        return {k: _rounded(v, digits) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rounded(v, digits) for v in tree]
    return round(tree, digits) if isinstance(tree, float) else tree


def stale_figure(new_png, root=ROOT):
    """Whether the docs' picture was drawn from other numbers than ``new_png`` (4 digits)."""
    old = root / FIGURE
    return not old.exists() or _rounded(drawn(old)) != _rounded(drawn(new_png))


def _numbers_table(text):
    """The grow how-to's table, read off the demo's text report."""
    def row(label):
        match = re.search(r'^  %s +(.+)$' % re.escape(label), text, re.M)
        return match.group(1) if match else 'n/a'
    ks = re.findall(r'^  (at init|after masked) +member .*KS (.+)$', text, re.M)
    gap = re.search(r'^gap of masked training to the ceiling: (.+)$', text, re.M)
    lines = ['| | new-pair test RMSE (mean +- sd, 3 seeds) |', '|---|---|']
    for label in ('new rows at init (mean_cov)', 'masked training (only the new rows train)',
                  'ceiling: ridge fold-in, old rows frozen',
                  'full retrain of everything from scratch', 'floor: bias only, mu + b_u + b_i',
                  'floor: global mean'):
        lines.append('| %s | %s |' % (label, row(label)))
    lines.append('')
    lines.append('Gap of masked training to the ceiling: %s. KS distance between old and new '
                 'member-row norms: %s.' % (gap.group(1) if gap else 'n/a', '; '.join(
                     '%s %s' % (when, value) for when, value in ks)))
    return '\n'.join(lines)


def _how_long(text):
    """The README's line on how long the demo takes, read off its wall-time line."""
    whole = re.search(r'^wall time per seed:.* total ([\d.]+)[^;]*; whole run (\d+) s$', text,
                      re.M)
    seeds = re.search(r'^masked-opt demo: .*; (\d+) seeds? ', text, re.M)
    if not (whole and seeds):
        return 'How long: see the wall-time line at the end of the output below.'
    from .run import RETRAIN_WDS
    trainings = 2 * len(RETRAIN_WDS) + 1      # old model and full retrain per wd, masked phase
    # The machine it ran on: a busy one (other work on the cores) takes several times longer.
    cores, load = os.cpu_count(), os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    where = '%s cores%s' % (cores, '' if load is None else ', load average %.1f' % load)
    return ('How long: the default run (%s seeds, %d trainings each) took %s s when the output '
            'below was generated (%s); `masked-opt demo --seeds 1` gives a quick look in about '
            'a third of that (%.0f s). The progress bar shows the seed, the stage and the time '
            'left.' % (seeds.group(1), trainings, whole.group(2), where, float(whole.group(1))))


def blocks(text):
    """The generated blocks for a demo report ``text``: ``{name: block body}``."""
    return {'demo-output': '```text\n%s\n```' % text.rstrip('\n'),
            'demo-time': _how_long(text), 'grow-numbers': _numbers_table(text)}


def _markers(name):
    return '<!-- generated: %s -->\n' % name, '<!-- end generated: %s -->' % name


def replace_block(page, name, body):
    """``page`` with the block ``name`` replaced by ``body``; ValueError when it has none.

    Examples
    --------
    >>> from masked_opt.demo.readme import replace_block
    >>> page = 'a\\n<!-- generated: x -->\\nold\\n<!-- end generated: x -->\\nb\\n'
    >>> print(replace_block(page, 'x', 'new'))
    a
    <!-- generated: x -->
    new
    <!-- end generated: x -->
    b
    <BLANKLINE>
    """
    start, end = _markers(name)
    if start not in page or end not in page:
        raise ValueError('expected the markers %r and %r in the page; add them around the '
                         'block to generate' % (start.strip(), end))
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + body + '\n' + end + tail


def _comparable(text):
    return _MACHINE.sub(r'\1: (not compared)', text)


def stale_blocks(text, root=ROOT):
    """Names of the generated blocks whose page differs from ``text``'s (timings aside)."""
    stale = []
    for name, body in blocks(text).items():
        page = (root / PAGES[name]).read_text(encoding='utf-8')
        if _comparable(replace_block(page, name, body)) != _comparable(page):
            stale.append(name)
    return stale


def main(argv=None):
    """``python -m masked_opt.demo.readme [--check]``: rewrite (or check) the blocks."""
    argv = sys.argv[1:] if argv is None else argv
    check = '--check' in argv
    with tempfile.TemporaryDirectory() as tmp:
        png = pathlib.Path(tmp) / 'demo.png'
        code, text = demo_output(plot=png)
        if code != 0:
            print('the demo exited with %d; not touching the pages' % code, file=sys.stderr)
            return code
        if check:
            stale = ['%s block of %s' % (name, PAGES[name]) for name in stale_blocks(text)]
            stale += [FIGURE] if stale_figure(png) else []
            for what in stale:
                print('stale: the %s; run python -m masked_opt.demo.readme' % what,
                      file=sys.stderr)
            return 1 if stale else 0
        (ROOT / FIGURE).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / FIGURE).write_bytes(png.read_bytes())
        print('wrote %s' % FIGURE)
    for name, body in blocks(text).items():
        path = ROOT / PAGES[name]
        path.write_text(replace_block(path.read_text(encoding='utf-8'), name, body),
                        encoding='utf-8')
        print('wrote the %s block of %s' % (name, PAGES[name]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
