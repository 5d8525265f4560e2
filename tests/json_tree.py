"""Walking a JSON tree (dicts and lists), for the fuzzers that corrupt manifests."""


def spots(node, path=()):
    """Every (path of a container, key in it) of a JSON tree, parents before children.

    >>> list(spots({'a': [1, {'b': 2}]}))
    [((), 'a'), (('a',), 0), (('a',), 1), (('a', 1), 'b')]
    """
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for key, value in items:
        yield path, key
        yield from spots(value, path + (key,))


def at(node, path):
    """The container at ``path`` (a tuple of keys) of a JSON tree."""
    for key in path:
        node = node[key]
    return node
