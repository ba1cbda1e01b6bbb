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
