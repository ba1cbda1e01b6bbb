"""Video and audio towers: tubelets and spectrogram patches against HF ViViT and AST (tiny random
configs, float32), and a tubelet model started from an image model by kernel inflation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlfm.core.tree import merge_params, strip_boxes
from vlfm.models import build_model
from vlfm.models.video import inflate_kernel

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def _check(name, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    print(f"{name}: max abs err {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("how", ["central", "average"])
def test_an_inflated_image_model_sees_a_still_video_as_its_image(how):
    """A tubelet kernel inflated from a patch kernel, on a video of one frame repeated, gives the image
    model's tokens: the tubelet order (time, row, column) and the inflation agree."""
    image_cfg = dict(name="vit", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, scan=False)
    image_model = build_model(dict(name="image_classifier", image=image_cfg))
    video_model = build_model(dict(name="image_classifier", input_key="video",
                                   image=dict(image_cfg, name="video_vit", tubelet_size=4)))
    image = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params = strip_boxes(image_model.init(jax.random.key(1), {"image": image})["params"])
    video = jnp.repeat(image[:, None], 4, axis=1)
    if how == "central":  # as init_from does it: renamed, then inflated
        fresh = strip_boxes(jax.eval_shape(lambda: video_model.init(jax.random.key(2), {"video": video}))["params"])
        fresh = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), fresh)
        video_params, report = merge_params(fresh, params, rename=[("patch_embed/proj/", "tubelet_embed/")],
                                            inflate=[r".*/tubelet_embed/kernel"])
        assert not report["fresh"] and not report["unused"]
        tower = video_params["image_tower"]
    else:
        tower = dict(params["image_tower"])
        patch = tower.pop("patch_embed")["proj"]
        tower["tubelet_embed"] = {"kernel": inflate_kernel(patch["kernel"], 4, how), "bias": patch["bias"]}
    got = video_model.apply({"params": {"image_tower": tower}}, {"video": video})["tokens"]
    want = image_model.apply({"params": params}, {"image": image})["tokens"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible into tubelets"):
        video_model.apply({"params": {"image_tower": tower}}, {"video": video[:, :3]})


@pytest.mark.parity
def test_vivit_and_ast_parity():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vlfm.convert.hf import load_hf

    torch.manual_seed(0)
    vivit = transformers.VivitModel(transformers.VivitConfig(
        image_size=16, num_frames=4, tubelet_size=[2, 8, 8], attn_implementation="eager", **TINY)).eval()
    ast = transformers.ASTModel(transformers.ASTConfig(
        max_length=40, num_mel_bins=36, frequency_stride=10, time_stride=10, attn_implementation="eager",
        **TINY)).eval()
    video = torch.randn(2, 4, 3, 16, 16)
    audio = torch.randn(2, 40, 36)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, model, batch, hf_input in (("vivit", vivit, {"video": video.permute(0, 1, 3, 4, 2).numpy()},
                                              {"pixel_values": video}),
                                             ("ast", ast, {"audio": audio.numpy()}, {"input_values": audio})):
            model.save_pretrained(f"{tmp}/{name}")
            for scan in ((True, False) if name == "vivit" else (True,)):
                cfg, params = load_hf(f"{tmp}/{name}", scan=scan)
                out = build_model(cfg).apply({"params": params}, batch)
                with torch.no_grad():
                    ref = model(**hf_input)
                _check(f"{name} scan={scan} last_hidden_state", out["tokens"], ref.last_hidden_state)
                _check(f"{name} scan={scan} pooler_output", out["pooled"], ref.pooler_output)
