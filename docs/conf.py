"""Sphinx configuration for the masked_opt documentation.

Build it with ``tox -e docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``):
warnings are errors. Pages are MyST Markdown; the API reference comes from the numpydoc
docstrings through autodoc/autosummary; ``_ext/doc_coverage.py`` fails the build when a public
name is missing from the API reference. The code examples of the pages are not run here but by
``tests/test_docs_examples.py`` in the test suite.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '_ext'))
# Document the checkout, also when the package is not installed into the docs environment.
sys.path.insert(0, os.path.dirname(HERE))

import masked_opt  # noqa: E402

project = 'masked_opt'
author = 'masked_opt contributors'
copyright = '2026, masked_opt contributors'  # noqa: A001 - Sphinx's name
release = masked_opt.__version__
version = release

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'numpydoc',
    'doc_coverage',
]
source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', '_ext', 'Thumbs.db', '.DS_Store']

myst_heading_anchors = 3
myst_enable_extensions = ['deflist']

autodoc_member_order = 'bysource'
autosummary_generate = False
# numpydoc would otherwise add member tables pointing at stub pages this site does not build.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = 'alabaster'
html_theme_options = {'description': 'Train only part of an MXNet parameter, exactly.'}
html_static_path = []

# Pages that other parts of the project add later. Each appears in the index toctree as soon as
# its file exists; until then the line is dropped, so the build never names a missing page.
OPTIONAL_PAGES = ('benchmarks',)


def _drop_missing_optional_pages(app, docname, source):
    if docname != root_doc:
        return
    lines = source[0].split('\n')
    keep = [line for line in lines
            if line.strip() not in OPTIONAL_PAGES
            or os.path.exists(os.path.join(app.srcdir, line.strip() + '.md'))]
    source[0] = '\n'.join(keep)


def setup(app):
    app.connect('source-read', _drop_missing_optional_pages)
