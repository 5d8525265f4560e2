"""The docs-coverage check (docs/_ext/doc_coverage.py) finds undocumented public names.

The check itself runs inside the Sphinx build (``tox -e docs``, a step of ``.ci/run``) and fails
it; these tests make sure it can fail: a missing name is reported, a re-exported name counts as
documented through its other name, and a new public submodule is picked up.
"""
import doctest
import importlib.util
import pathlib
import sys

import pytest

EXT = pathlib.Path(__file__).resolve().parent.parent / 'docs' / '_ext' / 'doc_coverage.py'


@pytest.fixture(scope='module')
def coverage():
    spec = importlib.util.spec_from_file_location('doc_coverage', EXT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_public_names_cover_package_and_submodules(coverage):
    import masked_opt
    names = coverage.public_names('masked_opt')
    assert {'masked_opt.' + n for n in masked_opt.__all__} <= set(names)
    assert 'masked_opt.masks.train_rows_from' in names
    assert not any(part.startswith('_') for n in names for part in n.split('.'))


def test_missing_name_is_reported_and_alias_counts(coverage):
    everything = list(coverage.public_names('masked_opt'))
    assert coverage.undocumented('masked_opt', everything) == []
    without_mask = [n for n in everything if n not in ('masked_opt.Mask', 'masked_opt.masks.Mask')]
    assert coverage.undocumented('masked_opt', without_mask) == ['masked_opt.Mask',
                                                                 'masked_opt.masks.Mask']
    # Documenting masked_opt.Mask documents masked_opt.masks.Mask (the same object).
    assert coverage.undocumented('masked_opt', without_mask + ['masked_opt.Mask']) == []


def test_new_public_submodule_is_checked(coverage, tmp_path, monkeypatch):
    package = tmp_path / 'toypkg'
    package.mkdir()
    (package / '__init__.py').write_text("__all__ = ['top']\n\ndef top():\n    pass\n")
    (package / 'extra.py').write_text("__all__ = ['helper']\n\ndef helper():\n    pass\n")
    (package / '_private.py').write_text("__all__ = ['hidden']\n\nhidden = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert coverage.undocumented('toypkg', ['toypkg.top']) == ['toypkg.extra.helper']
        assert coverage.undocumented('toypkg', ['toypkg.top', 'toypkg.extra.helper']) == []
    finally:
        for name in [m for m in sys.modules if m == 'toypkg' or m.startswith('toypkg.')]:
            del sys.modules[name]


def test_extension_docstring_examples(coverage):
    result = doctest.testmod(coverage)
    assert result.attempted > 0 and result.failed == 0
