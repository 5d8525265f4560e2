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
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FENCE = re.compile(r'^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$')
SKIP = re.compile(r'^\s*<!--\s*docs-example:\s*skip\b(?P<rest>.*?)-->\s*$')


def example_pages():
    """README.md and docs/**/*.md (not the build) that hold at least one python block."""
    pages = [ROOT / 'README.md'] if (ROOT / 'README.md').exists() else []
    pages += sorted(p for p in (ROOT / 'docs').rglob('*.md') if '_build' not in p.parts)
    return [p for p in pages if re.search(r'^\s*(`{3,}|~{3,})\s*(python|py|python3)\b',
                                          p.read_text(encoding='utf-8'), re.M | re.I)]


def python_blocks(text, where):
    """Return ``[(first_line, code, skip_reason)]`` for each python fence of a Markdown text.

    ``first_line`` is the 1-based line number of the block's first code line; ``skip_reason`` is
    None for blocks that run.

    >>> python_blocks('x\\n```python\\na = 1\\n```\\n', 'page.md')
    [(3, 'a = 1\\n', None)]
    """
    lines = text.splitlines(keepends=True)
    blocks, i, pending = [], 0, None
    while i < len(lines):
        line = lines[i]
        skip = SKIP.match(line)
        if skip:
            reason = skip.group('rest').strip().strip('()').strip(' :-\u2014')
            if not reason:
                raise ValueError('%s:%d: a docs-example skip marker needs a reason, e.g. '
                                 '<!-- docs-example: skip (needs a GPU) -->' % (where, i + 1))
            pending = (i + 1, reason)
            i += 1
            continue
        opening = FENCE.match(line.rstrip('\n'))
        if not opening:
            if line.strip() and pending:
                raise ValueError('%s:%d: a docs-example skip marker must be the line right above '
                                 'a ```python fence' % (where, pending[0]))
            i += 1
            continue
        fence, info = opening.group('fence'), opening.group('info').strip()
        language = info.split()[0].lower() if info else ''
        start, j = i + 1, i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            j += 1
        if language in ('python', 'py', 'python3'):
            # Fences inside list items are indented: dedent their code.
            code = textwrap.dedent(''.join(lines[start:j]))
            blocks.append((start + 1, code, pending and pending[1]))
        elif pending:
            raise ValueError('%s:%d: a docs-example skip marker precedes a %r block; only python '
                             'blocks run, so remove the marker' % (where, pending[0], language))
        pending = None
        i = j + 1
    if pending:
        raise ValueError('%s:%d: a docs-example skip marker at the end of the page marks nothing'
                         % (where, pending[0]))
    return blocks


def _closes(line, fence):
    """True for a closing fence: the opening's character, at least as many, nothing else."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


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
