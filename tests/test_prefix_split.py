import jax
import jax.numpy as jnp
import numpy as np

from vlfm.data.prefix import split_prefix


def test_split_prefix_reassembles_and_is_nonempty():
    toks = jnp.array([[5, 6, 7, 8, 0, 0], [9, 3, 0, 0, 0, 0], [4, 0, 0, 0, 0, 0]], jnp.int32)
    for s in range(5):
        p, q = split_prefix(jax.random.PRNGKey(s), toks)
        for row, pr, su in zip(np.asarray(toks), np.asarray(p), np.asarray(q)):
            n = (row != 0).sum()
            got = np.concatenate([pr[pr != 0], su[su != 0]])
            np.testing.assert_array_equal(got, row[:n])
            if n >= 2:
                assert (pr != 0).sum() >= 1 and (su != 0).sum() >= 1


def test_split_image_rows():
    from vlfm.data.prefix import split_image_rows
    codes = jnp.arange(2 * 3 * 2, dtype=jnp.int32).reshape(2, 3, 2)
    vis, dec_in, tgt = split_image_rows(codes, 1, offset=100, bos_id=7)
    assert vis.shape == (2, 6) and vis[:, :2].all() and not vis[:, 2:].any()
    np.testing.assert_array_equal(tgt[0], [102, 103, 104, 105])
    np.testing.assert_array_equal(dec_in[0], [7, 102, 103, 104])
