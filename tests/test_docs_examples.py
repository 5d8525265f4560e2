"""Every ```python block in docs/**/*.md and README.md runs, so an example that stops working
fails CI.

One test per page. The blocks of a page run in order in one fresh namespace (``__name__`` is
``'__main__'``), with the working directory set to a fresh temporary directory, so a page reads
like one script and may build on its earlier blocks. Tracebacks point at the Markdown file and
line, because each block is compiled with the page's path and padded to its line number.
A block written as an interactive session (lines starting with ``>>>``) runs as a doctest,
so its shown outputs are checked too.

A block that cannot run here (it needs a GPU, a cluster, a file the user has) is marked by an
HTML comment on the line right above its opening fence, with a reason::

    <!-- docs-example: skip (needs a dist kvstore with running servers) -->

A marker without a reason is an error, as is a marker that precedes no python block.
Blocks in other languages (``bash``, ``text``, ``json``, ...) are never run.
"""
import doctest
import os
import pathlib
import re

import pytest
from doc_blocks import python_blocks

ROOT = pathlib.Path(__file__).resolve().parent.parent


def example_pages():
    """README.md and docs/**/*.md (not the build) that hold at least one python block."""
    pages = [ROOT / 'README.md'] if (ROOT / 'README.md').exists() else []
    pages += sorted(p for p in (ROOT / 'docs').rglob('*.md') if '_build' not in p.parts)
    return [p for p in pages if re.search(r'^\s*(`{3,}|~{3,})\s*(python|py|python3)\b',
                                          p.read_text(encoding='utf-8'), re.M | re.I)]


def run_blocks(blocks, path):
    """Run ``python_blocks`` output in order in one fresh ``__main__`` namespace.

    Each block is compiled with ``path`` as its file name and padded with newlines so that a
    traceback names the Markdown line. Environment variables set by the page are undone.
    """
    namespace = {'__name__': '__main__', '__file__': str(path)}
    saved_environ = dict(os.environ)
    try:
        for first_line, code, _ in blocks:
            if code.lstrip().startswith('>>>'):
                _run_doctest(code, namespace, '%s:%d' % (path, first_line))
                continue
            source = '\n' * (first_line - 1) + code
            exec(compile(source, str(path), 'exec'), namespace)  # noqa: S102 - the point
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
    return namespace


def _run_doctest(code, namespace, where):
    """A block written as an interactive session (``>>>``) runs as a doctest: outputs count."""
    test = doctest.DocTestParser().get_doctest(code, namespace, where, where, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)   # DocTest ran in a copy; later blocks build on its names
    if runner.failures:
        raise AssertionError('%s: doctest-style example failed\n%s' % (where, ''.join(report)))


def _page_id(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize('page', example_pages(), ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text(encoding='utf-8'), _page_id(page))
    runnable = [b for b in blocks if b[2] is None]
    if not runnable:
        reasons = sorted({b[2] for b in blocks})
        pytest.skip('%s has no runnable python block%s' % (
            _page_id(page), (': skipped because ' + '; '.join(reasons)) if reasons else ''))
    monkeypatch.chdir(tmp_path)
    run_blocks(runnable, page)


def test_collector_finds_blocks_and_markers():
    text = ('# Title\n'
            '```python\n'
            'a = 1\n'
            '```\n'
            '```bash\n'
            'pip install x\n'
            '```\n'
            '<!-- docs-example: skip (needs a GPU) -->\n'
            '```python\n'
            'b = 2\n'
            '```\n'
            '````python\n'
            '```\n'
            'c = 3\n'
            '````\n'
            '1. In a list item:\n'
            '\n'
            '   ```python\n'
            '   if True:\n'
            '       d = 4\n'
            '   ```\n')
    assert python_blocks(text, 'p.md') == [(3, 'a = 1\n', None), (10, 'b = 2\n', 'needs a GPU'),
                                           (13, '```\nc = 3\n', None),
                                           (19, 'if True:\n    d = 4\n', None)]


@pytest.mark.parametrize('text', [
    '<!-- docs-example: skip -->\n```python\nx = 1\n```\n',
    '<!-- docs-example: skip (why) -->\n\nsome prose\n```python\nx = 1\n```\n',
    '<!-- docs-example: skip (why) -->\n```bash\nls\n```\n',
    'text\n<!-- docs-example: skip (why) -->\n',
])
def test_collector_rejects_bad_skip_markers(text):
    with pytest.raises(ValueError, match='docs-example skip marker'):
        python_blocks(text, 'p.md')


def test_interactive_blocks_run_as_doctests(tmp_path):
    page = tmp_path / 'session.md'
    good = '```python\n>>> x = 2\n>>> x * 3\n6\n```\n'
    namespace = run_blocks(python_blocks(good, 'session.md'), page)
    assert namespace['x'] == 2
    bad = '```python\n>>> 2 * 3\n7\n```\n'
    with pytest.raises(AssertionError, match='doctest-style example failed'):
        run_blocks(python_blocks(bad, 'session.md'), page)


def test_a_failing_example_fails_with_its_markdown_line(tmp_path):
    page = tmp_path / 'broken.md'
    page.write_text('# Broken\n\n```python\nx = 1\n```\n\n```python\nassert x == 1\n'
                    'raise RuntimeError("boom")\n```\n')
    with pytest.raises(RuntimeError, match='boom') as info:
        run_blocks(python_blocks(page.read_text(), 'broken.md'), page)
    assert info.traceback[-1].path == page
    assert info.traceback[-1].lineno + 1 == 9  # pytest's lineno is 0-based
