"""Docs coverage: the build fails when a public name has no entry in the API reference.

A *public name* is every name in ``masked_opt.__all__`` and in the ``__all__`` of each public
submodule (``masked_opt.<name>`` without a leading underscore). It counts as documented when the
Python domain holds an entry for it (from ``autofunction``/``autoclass``/``autosummary`` in
``docs/api.md``) under its own qualified name or under any other name bound to the same object
(``masked_opt.masks.Mask`` is documented by ``masked_opt.Mask``).

The check runs in Sphinx's ``env-check-consistency`` event, after every page was read, and
raises, so it fails ``sphinx-build`` with or without ``-W``. The functions here import no Sphinx,
so the tests can call them (``tests/test_docs_coverage.py``).
"""
import importlib
import pkgutil


def public_names(package_name):
    """Return ``{qualified name: object}`` for every public name of a package.

    Examples
    --------
    >>> names = public_names('masked_opt')
    >>> 'masked_opt.Masked' in names and 'masked_opt.masks.train_cols' in names
    True
    """
    package = importlib.import_module(package_name)
    modules = [package]
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith('_'):
            modules.append(importlib.import_module('%s.%s' % (package_name, info.name)))
    names = {}
    for module in modules:
        for name in getattr(module, '__all__', ()):
            names['%s.%s' % (module.__name__, name)] = getattr(module, name)
    return names


def _resolve(qualified):
    """The object a dotted name refers to, or None when it does not resolve."""
    parts = qualified.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def undocumented(package_name, documented):
    """Public names of ``package_name`` with no documented entry, sorted.

    Parameters
    ----------
    package_name : str
        The package to check, e.g. ``'masked_opt'``.
    documented : iterable of str
        Qualified names that the API reference documents (Sphinx's Python domain objects).

    Examples
    --------
    >>> missing = undocumented('masked_opt', ['masked_opt.Masked'])
    >>> 'masked_opt.Masked' in missing, 'masked_opt.train_cols' in missing
    (False, True)
    """
    documented = set(documented)
    documented_ids = {id(obj) for obj in map(_resolve, documented) if obj is not None}
    return sorted(name for name, obj in public_names(package_name).items()
                  if name not in documented and id(obj) not in documented_ids)


def _check(app, env):
    from sphinx.errors import ExtensionError

    documented = env.get_domain('py').objects
    missing = undocumented(app.config.doc_coverage_package, documented)
    if missing:
        raise ExtensionError(
            'docs coverage: %d public name(s) of %s are not documented in the API reference: %s. '
            'Add each to docs/api.md (an autosummary list and an autofunction/autoclass entry), '
            'or drop it from __all__ if it is not public.'
            % (len(missing), app.config.doc_coverage_package, ', '.join(missing)))


def setup(app):
    app.add_config_value('doc_coverage_package', 'masked_opt', 'env')
    app.connect('env-check-consistency', _check)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
