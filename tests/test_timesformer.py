"""Divided space-time attention (TimeSformer) in the video tower: which tokens each half of a layer
mixes, images as one-frame clips, and parity with HF ``TimesformerModel`` (tiny random configs,
float32, jitted forward)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vlfm.core.tree import strip_boxes
from vlfm.models import build_model

TOWER = dict(name="video_vit", image_size=16, patch_size=8, tubelet_size=1, width=16, depth=1, num_heads=2, mlp_dim=32,
             attention_type="divided", pos_embedding="space_time", num_frames=3, final_norm=False, scan=False)


def _zeroed(params, *names):
    """``params`` with the output projection of the named attention zeroed: that half of the layer adds
    nothing, so the other half's mixing shows alone."""
    flat = traverse_util.flatten_dict(params, sep="/")
    flat = {k: (np.zeros_like(v) if any(f"/{n}/" in k for n in names) else v) for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def tiny():
    """One tiny divided-attention model, its parameters and a jitted forward (one compile per shape)."""
    model = build_model(dict(name="image_classifier", input_key="video", image=TOWER))
    video = jax.random.normal(jax.random.key(0), (1, 3, 16, 16, 3))
    shapes = strip_boxes(jax.eval_shape(model.init, jax.random.key(1), {"video": video})["params"])
    rng = np.random.default_rng(1)  # random values of the right shapes: no compiled init (it costs seconds)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.3, a.shape).astype(a.dtype), shapes)
    apply = jax.jit(lambda p, v: model.apply({"params": p}, {"video": v})["tokens"])
    return model, params, apply, video


def test_time_mixes_positions_across_frames_and_space_mixes_a_frame(tiny):
    _, params, apply, video = tiny
    poked = video.at[:, 0, :8, :8].add(1.0)  # frame 0, patch 0 (top left)
    # tokens: class, then (frame, patch) in time-major order: frame t patch n is 1 + 4 t + n
    changed = lambda p: np.abs(np.asarray(apply(p, poked) - apply(p, video)))[0].max(-1) > 1e-6  # noqa: E731
    # Space alone (temporal branch and temporal dense zeroed): frame 0's tokens and the class token move.
    only_space = changed(_zeroed(params, "temporal_dense"))
    assert only_space.tolist() == [True] + [True] * 4 + [False] * 8
    # Time alone (spatial attention zeroed): patch 0 of every frame moves, nothing else (the class token
    # neither: the spatial branch is its only input).
    only_time = changed(_zeroed(params, "attn/out"))
    assert only_time.tolist() == [False] + [n == 0 for _ in range(3) for n in range(4)]
    # Both: one layer spreads the poke everywhere.
    assert changed(params).all()


def test_an_image_is_a_one_frame_clip_and_reads_the_first_time_position(tiny):
    model, params, apply, video = tiny
    image = apply(params, video[:, 0])
    assert image.shape == (1, 5, 16)
    np.testing.assert_array_equal(image, apply(params, video[:, :1]))
    with pytest.raises(ValueError, match="longer than the temporal position table"):
        jax.eval_shape(apply, params, jnp.concatenate([video, video], 1))
    bad = dict(name="image_classifier", input_key="video", image=dict(TOWER, attention_type="factorised"))
    with pytest.raises(ValueError, match="valid: joint, divided"):
        jax.eval_shape(build_model(bad).init, jax.random.key(1), {"video": video})


def test_with_tubelets_an_image_is_a_static_clip_of_one_tubelet():
    """With tubelets of 2 frames an image is the clip of 2 copies of it, with joint and divided attention."""
    rng = np.random.default_rng(2)
    image = jnp.asarray(rng.normal(size=(1, 16, 16, 3)), jnp.float32)
    for attention in ("joint", "divided"):
        model = build_model(dict(name="image_classifier", input_key="video",
                                 image=dict(TOWER, tubelet_size=2, num_frames=4, attention_type=attention)))
        shapes = strip_boxes(jax.eval_shape(model.init, jax.random.key(1), {"video": image})["params"])
        params = jax.tree.map(lambda a: rng.normal(0.0, 0.3, a.shape).astype(a.dtype), shapes)
        apply = jax.jit(lambda p, v: model.apply({"params": p}, {"video": v})["tokens"])  # noqa: B023
        tokens = apply(params, image)
        assert tokens.shape == (1, 5, 16)
        np.testing.assert_array_equal(tokens, apply(params, jnp.stack([image, image], axis=1)))


@pytest.mark.parity
def test_timesformer_parity():
    """HF ``TimesformerModel`` (divided, and joint space-time attention) imported with
    ``python -m vlfm.convert``'s loader: ``last_hidden_state`` within rtol 1e-4 of the jitted vlfm
    forward (divided scanned, joint unrolled); HF's (space, time) token order permuted to vlfm's
    (time, space)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import tempfile

    from vlfm.convert.hf import load_hf

    b, t, size, patch, width = 2, 4, 16, 8, 32
    n = (size // patch) ** 2
    video = torch.randn(b, t, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        for attention, scan in (("divided_space_time", True), ("joint_space_time", False)):
            torch.manual_seed(0)
            hf = transformers.TimesformerModel(transformers.TimesformerConfig(
                image_size=size, patch_size=patch, num_frames=t, hidden_size=width, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=37, attention_type=attention)).eval()
            with torch.no_grad():  # HF zero-initialises the time table; random values test it
                hf.embeddings.time_embeddings.normal_()
                hf.embeddings.cls_token.normal_()
            hf.save_pretrained(f"{tmp}/{attention}")
            cfg, params = load_hf(f"{tmp}/{attention}", scan=scan)
            assert cfg["image"]["attention_type"] == attention.split("_")[0]
            model = build_model(cfg)
            got = jax.jit(lambda p, v: model.apply({"params": p}, {"video": v})["tokens"])(
                params, video.permute(0, 1, 3, 4, 2).numpy())
            with torch.no_grad():
                want = hf(pixel_values=video).last_hidden_state.numpy()
            want = np.concatenate([want[:, :1], want[:, 1:].reshape(b, n, t, width).transpose(0, 2, 1, 3)
                                   .reshape(b, t * n, width)], axis=1)
            print(f"{attention} scan={scan}: max abs err {np.abs(np.asarray(got) - want).max():.2e}")
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=f"{attention} {scan}")


@pytest.mark.parity
def test_timesformer_space_only_parity():
    """HF ``TimesformerForVideoClassification`` with ``attention_type="space_only"`` (every frame alone,
    no temporal table) imported: the patch tokens equal HF's per-frame ``last_hidden_state`` within
    rtol 1e-4; the class token and the logits equal HF's final norm and classifier applied to the
    frames' averaged pre-norm class tokens (TimeSformer's clip prediction; HF predicts per frame)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import tempfile

    from vlfm.convert.hf import load_hf

    b, t, size, patch, width = 2, 3, 16, 8, 32
    n = (size // patch) ** 2
    video = torch.randn(b, t, 3, size, size)
    torch.manual_seed(0)
    hf = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(
        image_size=size, patch_size=patch, num_frames=t, hidden_size=width, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, attention_type="space_only", num_labels=5)).eval()
    with torch.no_grad():
        hf.timesformer.embeddings.cls_token.normal_()
        hf.classifier.bias.normal_()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        cfg, params = load_hf(tmp, scan=True)
    assert cfg["image"]["attention_type"] == "space_only" and cfg["image"]["pos_embedding"] == "space"
    assert "time_embed" not in params["image_tower"]
    model = build_model(cfg)
    apply = jax.jit(lambda p, v: model.apply({"params": p}, {"video": v}))
    clip = video.permute(0, 1, 3, 4, 2).numpy()
    out = apply(params, clip)
    with torch.no_grad():
        hidden = hf.timesformer(pixel_values=video, output_hidden_states=True)
        clip_cls = hf.timesformer.layernorm(hidden.hidden_states[-1][:, 0].reshape(b, t, width).mean(1))
        want_logits = hf.classifier(clip_cls).numpy()
    want = np.concatenate([clip_cls.numpy()[:, None], hidden.last_hidden_state[:, 1:].reshape(b, t * n, width).numpy()],
                          axis=1)
    got = np.asarray(out["tokens"])
    print(f"space_only: max abs err tokens {np.abs(got - want).max():.2e}, "
          f"logits {np.abs(np.asarray(out['logits']) - want_logits).max():.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["logits"]), want_logits, rtol=1e-4, atol=1e-5)
    # Each frame is on its own: changing frame 2 leaves frame 0's patch tokens as they were.
    poked = apply(params, clip + np.eye(t, dtype=np.float32)[None, :, None, None, None, 2])["tokens"]
    moved = np.abs(got - np.asarray(poked))[0].max(-1) > 1e-6
    assert moved.tolist() == [True] + [False] * (2 * n) + [True] * n
