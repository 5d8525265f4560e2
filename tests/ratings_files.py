"""Ratings files for the demo's loader and CLI tests: MovieLens-format text, written to disk."""
import numpy as np


def write(tmp_path, text, name='u.data'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def movielens_lines(n_users=12, n_items=9, seed=0, sep='\t'):
    """Every user rates 6 items; users > 8 and items > 6 only appear late."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items + 1), size=6, replace=False):
            late = u > 8 or i > 6
            stamp = 10 ** 9 + (50_000 if late else 0) + int(rng.integers(0, 40_000))
            lines.append(sep.join(map(str, (u, i, int(rng.integers(1, 6)), stamp))))
    return '\n'.join(lines) + '\n'
