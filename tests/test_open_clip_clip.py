"""CLIP against open-clip-torch 3.3.0 in float32: an open_clip CLIP imports into a vlfm dual encoder with
the same embeddings, and a vlfm dual encoder exports to a directory open_clip loads
(``create_model("local-dir:...")``) with the same embeddings and temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax.numpy as jnp  # noqa: E402

from vlfm.convert.open_clip import clip_config_to_open_clip, load_open_clip, save_open_clip  # noqa: E402
from vlfm.models import build_model  # noqa: E402

CFG = dict(embed_dim=16, quick_gelu=True,
           vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=8, mlp_ratio=2.0),
           text_cfg=dict(context_length=8, vocab_size=64, width=24, heads=4, layers=2))


def _inputs():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    text = np.zeros((3, 8), np.int64)
    for row, n in enumerate((8, 5, 3)):  # the end token (63) is the largest id: argmax pooling finds it
        text[row, :n] = np.concatenate([[1], rng.integers(3, 60, size=n - 2), [63]])
    return images, text


def _open_clip_embeddings(model, images, text):
    with torch.no_grad():
        return (model.encode_image(torch.from_numpy(images), normalize=True).numpy(),
                model.encode_text(torch.from_numpy(text), normalize=True).numpy())


def _vlfm_embeddings(model_config, params, images, text):
    out = build_model(model_config).apply({"params": params}, {
        "image": jnp.asarray(images.transpose(0, 2, 3, 1)), "text": jnp.asarray(text, jnp.int32),
        "text_mask": jnp.asarray(text > 0, jnp.int32)})
    return np.asarray(out["image_embed"]), np.asarray(out["text_embed"])


def test_open_clip_clip_round_trip(tmp_path):
    torch.manual_seed(0)
    reference = open_clip.CLIP(**CFG).eval()
    with torch.no_grad():
        reference.logit_scale.fill_(math.log(150.0))  # above vlfm's cap of 100: the export carries the cap
    images, text = _inputs()
    want = _open_clip_embeddings(reference, images, text)
    # open_clip's own layout on disk, read by vlfm
    save = {k: v.numpy() for k, v in reference.state_dict().items()}
    import json

    import safetensors.numpy

    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG}))
    safetensors.numpy.save_file(save, str(tmp_path / "oc" / "open_clip_model.safetensors"))
    model_config, params = load_open_clip(str(tmp_path / "oc"))
    assert model_config["name"] == "dual_encoder" and model_config["text"]["pool"] == "argmax"
    got = _vlfm_embeddings(model_config, params, images, text)
    for name, g, w in zip(("image", "text"), got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
    # vlfm -> open_clip: the directory open_clip opens itself
    save_open_clip(model_config, params, str(tmp_path / "export"))
    again = open_clip.create_model(f"local-dir:{tmp_path / 'export'}").eval()
    for name, g, w in zip(("image", "text"), _open_clip_embeddings(again, images, text), want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
    assert float(again.logit_scale.detach()) == pytest.approx(math.log(100.0))
    assert (tmp_path / "export" / "vlfm_export.json").exists()


def test_settings_without_an_open_clip_equivalent_are_named():
    model_config = dict(name="dual_encoder", embed_dim=16,
                        image=dict(name="vit", image_size=32, patch_size=8, width=32, depth=1, num_heads=4,
                                   mlp_dim=64, pre_norm=False, patch_bias=True, ln_eps=1e-5),
                        text=dict(name="text_transformer", vocab_size=64, max_len=8, width=24, depth=1,
                                  num_heads=4, mlp_dim=48, pool="mean", ln_eps=1e-5))
    with pytest.raises(ValueError, match=r"image.pre_norm=False \(True\); image.patch_bias=True \(False\).*"
                                         r"text.pool='mean'"):
        clip_config_to_open_clip(model_config)


def test_evaluate_reads_an_open_clip_directory(tmp_path):
    """``python -m vlfm.evaluate --open_clip DIR``: the same metrics as the same weights given as a params
    export."""
    from vlfm.core.checkpoint import export_params
    from vlfm.evaluate import evaluate, weights_source
    from vlfm.train.config import base_config

    torch.manual_seed(1)
    reference = open_clip.CLIP(**CFG).eval()
    import json

    import safetensors.numpy

    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": CFG}))
    safetensors.numpy.save_file({k: v.numpy() for k, v in reference.state_dict().items()},
                                str(tmp_path / "oc" / "open_clip_model.safetensors"))
    model_config, params = load_open_clip(str(tmp_path / "oc"))
    export_params(params, str(tmp_path / "params"))
    config = base_config()
    config.model = model_config
    config.data = dict(name="shapes", num_examples=64, image_size=32, max_len=8, batch_size=16, train_split="train")
    config.losses = dict(softmax_contrastive=dict())
    config.evals = dict(retrieval=dict(type="retrieval", split="validation", num_examples=32, batch_size=16))
    assert weights_source("open_clip", str(tmp_path / "oc")) == {"open_clip": str(tmp_path / "oc")}
    from_open_clip = evaluate(config, {"open_clip": str(tmp_path / "oc")})
    from_params = evaluate(config, {"params": str(tmp_path / "params")})
    timing = {k for k in from_params if k.endswith("/seconds")}
    assert {k: v for k, v in from_open_clip.items() if k not in timing} == \
        {k: v for k, v in from_params.items() if k not in timing}
    assert "eval/retrieval/i2t_r1" in from_open_clip
