import jax
import jax.numpy as jnp
import numpy as np

from vlfm.models.image_tokenizer import ImageTokenizer, fit_kmeans


def _images(seed=0, n=8):
    r = np.random.default_rng(seed)
    base = r.normal(size=(4, 4, 4, 3))
    return np.concatenate([base[r.integers(0, 4, size=n)] + 0.1 * r.normal(size=(n, 4, 4, 3))
                           for _ in range(1)]).reshape(n, 4, 4, 3).repeat(2, 1).repeat(2, 2)


def test_codes_shape_deterministic_and_fit_beats_random(tmp_path):
    imgs = _images()
    tok = fit_kmeans(imgs, 8, 4, iters=10)
    c1, c2 = tok(jnp.asarray(imgs)), tok(jnp.asarray(imgs))
    assert c1.shape == (8, 2, 2) and c1.dtype == jnp.int32
    np.testing.assert_array_equal(c1, c2)
    assert tok.codebook_size == 8
    rand = ImageTokenizer(jax.random.normal(jax.random.PRNGKey(1), tok.codebook.shape), 4)
    assert tok.quantisation_error(imgs) < rand.quantisation_error(imgs)
    tok.save(str(tmp_path / "t.npz"))
    back = ImageTokenizer.load(str(tmp_path / "t.npz"))
    np.testing.assert_array_equal(back(jnp.asarray(imgs)), c1)
