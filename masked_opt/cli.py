"""Command line: ``masked-opt demo`` (also ``python -m masked_opt demo``).

This is the short stop-gap example: train the forum's matrix-factorisation model with
Module.fit, freezing all but the new book rows and all but the last latent dimension of the
member table, and check the frozen entries on the bits.
"""
import argparse
import sys

import mxnet as mx
import numpy as np

import masked_opt as mo


def _forum_mf(n_users, n_items, latent_dim):
    y_true = mx.symbol.Variable('label')
    user = mx.symbol.Embedding(name='member_embedding', data=mx.symbol.Variable('member'),
                               input_dim=n_users, output_dim=latent_dim)
    book = mx.symbol.Embedding(name='book_embedding', data=mx.symbol.Variable('book'),
                               input_dim=n_items, output_dim=latent_dim)
    dot = 1 - mx.symbol.Flatten(mx.symbol.sum_axis(user * book, axis=1))
    return mx.symbol.LinearRegressionOutput(data=dot, label=y_true)


def quick_demo(n_users=200, n_old_items=150, n_new_items=50, latent_dim=8, seed=0):
    """Train new book rows and the last member column; return changed-entry counts."""
    rng = np.random.RandomState(seed)
    n_items = n_old_items + n_new_items
    n = 5000
    data = {'member': rng.randint(0, n_users, n), 'book': rng.randint(0, n_items, n)}
    it = mx.io.NDArrayIter(data, {'label': rng.rand(n)}, batch_size=100)
    mod = mx.mod.Module(_forum_mf(n_users, n_items, latent_dim), data_names=['member', 'book'],
                        label_names=['label'])
    mod.bind(it.provide_data, it.provide_label)
    mx.random.seed(seed)
    mod.init_params(mx.init.Normal(0.1))
    before = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}
    mod.fit(it, num_epoch=2, optimizer='masked',
            optimizer_params={'base': 'adam', 'learning_rate': 0.01, 'wd': 1e-4, 'masks': {
                'book_embedding_weight': mo.train_rows_from(n_old_items),
                'member_embedding_weight': mo.train_cols([latent_dim - 1])}})
    after = {k: v.asnumpy() for k, v in mod.get_params()[0].items()}

    def changed(a, b):
        return int(np.count_nonzero(a.view(np.uint32) != b.view(np.uint32)))
    book0, book1 = before['book_embedding_weight'], after['book_embedding_weight']
    mem0, mem1 = before['member_embedding_weight'], after['member_embedding_weight']
    return {'frozen_book_rows_changed': changed(book0[:n_old_items], book1[:n_old_items]),
            'new_book_entries_changed': changed(book0[n_old_items:], book1[n_old_items:]),
            'frozen_member_cols_changed': changed(mem0[:, :-1], mem1[:, :-1]),
            'last_member_col_changed': changed(mem0[:, -1:], mem1[:, -1:])}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='masked-opt', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('demo', help='train the forum model with masks and check frozen bits')
    parser.parse_args(argv)
    report = quick_demo()
    for key, value in report.items():
        print('%-28s %d' % (key, value))
    ok = report['frozen_book_rows_changed'] == 0 and report['frozen_member_cols_changed'] == 0
    print('frozen entries bit-identical:', 'yes' if ok else 'NO')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
