"""The python blocks of a Markdown page, as the docs-example tests run them (and the Horovod
tests read the distributed how-to's)."""
import re
import textwrap

FENCE = re.compile(r'^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$')
SKIP = re.compile(r'^\s*<!--\s*docs-example:\s*skip\b(?P<rest>.*?)-->\s*$')


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
