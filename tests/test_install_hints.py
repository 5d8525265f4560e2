"""Install pins and install hints: pip resolves at once, and no hint breaks the environment.

mxnet 1.9.1 needs numpy < 1.24. A dependency left open lets pip pick a release that needs a
newer numpy and backtrack (scipy: six releases, three 35 MB wheels), and a hint such as a bare
``pip install matplotlib`` upgrades numpy and breaks ``import mxnet``. So every dependency has
an upper bound, and every ``pip install`` written in the README, the docs, the package's
messages and the CI script names masked_opt's dependencies with exactly pyproject's pins.
"""
import pathlib
import re
import shlex
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text(encoding='utf-8'))['project']
_PIP = re.compile(r'pip install((?:\\\n|[^`\n#"])*)')


def _requirements():
    reqs = [Requirement(r) for r in PYPROJECT['dependencies']]
    for extra in PYPROJECT['optional-dependencies'].values():
        reqs += [Requirement(r) for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


PINS = _requirements()


def _hint_files():
    files = [ROOT / 'README.md', ROOT / '.ci' / 'run']
    files += sorted((ROOT / 'docs').rglob('*.md'))
    files += sorted((ROOT / 'masked_opt').rglob('*.py'))
    return [f for f in files if f.is_file() and '_build' not in f.parts]


def _commands(text):
    """The package arguments of every ``pip install`` in ``text``."""
    for match in _PIP.finditer(text):
        args = re.split(r'&&|;|\||\s\(', match.group(1).replace('\\\n', ' '))[0]
        try:
            words = shlex.split(args)
        except ValueError:      # an unbalanced quote in prose: take the words as they are
            words = args.split()
        yield [w.strip('`.,;:()') if not w.startswith('.') else w for w in words
               if not w.startswith('-') and not w.startswith('.') and '/' not in w
               and w.strip('`.,;:()') and not w.strip('`.,;:()').isupper()]


def test_every_dependency_has_an_upper_bound():
    for name, req in PINS.items():
        assert any(s.operator in ('<', '<=', '==', '~=') for s in req.specifier), (
            '%s is not capped in pyproject.toml: a new release may need numpy >= 1.24 and make '
            'pip backtrack; cap it below the first release that does' % name)


def test_numpy_sensitive_caps_are_the_verified_ones():
    # The releases pip picks first under these caps were checked in a fresh venv
    # (pip install --dry-run --report): scipy 1.15.3, matplotlib 3.10.9 and contourpy 1.3.2
    # accept numpy 1.23.5; scipy 1.16, matplotlib 3.11 and contourpy 1.3.3 need numpy >= 1.25.
    assert str(PINS['numpy'].specifier) == '<1.24'
    for name, first_bad in (('scipy', '1.16'), ('matplotlib', '3.11'), ('contourpy', '1.3.3')):
        spec = PINS[name].specifier
        assert first_bad not in spec and not spec.contains(first_bad + '.0'), name


@pytest.mark.parametrize('path', _hint_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_install_hints_keep_the_pins(path):
    text = path.read_text(encoding='utf-8')
    for words in _commands(text):
        names = set()
        for word in words:
            try:
                req = Requirement(word)
            except Exception:
                continue
            name = canonicalize_name(req.name)
            names.add(name)
            if name in PINS and name != 'mxnet':
                assert req.specifier == PINS[name].specifier, (
                    '%s: `pip install %s` without pyproject\'s pin %r: it may bring a numpy '
                    'that breaks import mxnet' % (path.name, word, str(PINS[name].specifier)))
        if 'matplotlib' in names:   # its contourpy would otherwise need numpy >= 1.25
            assert 'contourpy' in names, '%s: matplotlib without contourpy\'s cap' % path.name


def test_the_plot_hint_names_the_pins(tmp_path, monkeypatch):
    from masked_opt.demo.plot import PlotError, check_target
    monkeypatch.setitem(sys.modules, 'matplotlib', None)   # import matplotlib -> ImportError
    with pytest.raises(PlotError) as info:
        check_target(str(tmp_path / 'p.png'))
    words = list(_commands(str(info.value)))
    assert words, info.value
    named = {canonicalize_name(Requirement(w).name): Requirement(w) for w in words[0]}
    for name in ('matplotlib', 'contourpy'):
        assert named[name].specifier == PINS[name].specifier, info.value


def test_a_bare_hint_is_caught():
    assert list(_commands("run `pip install matplotlib` first")) == [['matplotlib']]
    words = list(_commands("pip install mxnet-cu112==1.9.1 'numpy<1.24' \\\n    'tqdm>=4.60,<5'"))
    assert words == [['mxnet-cu112==1.9.1', 'numpy<1.24', 'tqdm>=4.60,<5']]
