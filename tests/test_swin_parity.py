"""Swin image tower against HF ``SwinModel`` / ``SwinForImageClassification`` (tiny random configs, float32):
import, jitted forward, export back. Every HF weight is randomised (HF initialises the relative position
tables to zero), so the position bias and the shifted-window mask take part."""

import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from vlfm.models import build_model


def _check(name, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    print(f"{name}: max abs err {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def _randomise(torch, model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "relative_position_bias_table" in name else 0.2
            base = 1.0 if name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parity
def test_swin_matches_hf_and_round_trips(tmp_path):
    """Case 1 (SwinModel): grids 16 and 8 with window 4, so both stages shift their windows and the mask
    separates wrapped regions. Case 2 (SwinForImageClassification, absolute positions): grids 8 and 4,
    window 4, so the last stage is one unshifted window (HF's rule for a grid no larger than the window)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vlfm.convert.hf import load_hf, save_hf

    common = dict(image_size=32, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, drop_path_rate=0.0,
                  attn_implementation="eager")
    cases = (("model", transformers.SwinModel(transformers.SwinConfig(patch_size=2, **common)), True),
             ("classifier", transformers.SwinForImageClassification(transformers.SwinConfig(
                 patch_size=4, use_absolute_embeddings=True, num_labels=3, **common)), False))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = {"image": images.permute(0, 2, 3, 1).numpy()}
    for i, (name, model, scan) in enumerate(cases):
        _randomise(torch, model, seed=i)
        model.save_pretrained(tmp_path / name)
        cfg, params = load_hf(tmp_path / name, scan=scan)
        assert cfg["image"]["name"] == "swin" and cfg["image"]["scan"] == scan
        out = jax.jit(build_model(cfg).apply)({"params": params}, batch)
        with torch.no_grad():
            ref = model(pixel_values=images, output_hidden_states=True)
        if name == "model":
            _check("swin last_hidden_state", out["tokens"], ref.last_hidden_state)
            _check("swin pooler_output", out["pooled"], ref.pooler_output)
            assert out["tokens"].shape == (2, 64, 32)
        else:
            _check("swin classifier logits", out["logits"], ref.logits)
        # export: HF reads the vlfm params back to the same outputs
        save_hf(cfg, params, tmp_path / f"{name}_export")  # dispatches to vlfm.convert.hf_swin
        again = type(model).from_pretrained(tmp_path / f"{name}_export", attn_implementation="eager").eval()
        with torch.no_grad():
            want = ref.logits if name == "classifier" else ref.last_hidden_state
            got = again(pixel_values=images)
            got = got.logits if name == "classifier" else got.last_hidden_state
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)

    # A file of transformers 5's in-memory names (a state_dict saved as is) loads to the same params.
    state = {k: v.numpy() for k, v in cases[0][1].state_dict().items()}
    assert any(".attention.q_proj." in k for k in state)
    os.makedirs(tmp_path / "state_dict")
    safetensors.numpy.save_file(state, tmp_path / "state_dict" / "model.safetensors")
    (tmp_path / "state_dict" / "config.json").write_text((tmp_path / "model" / "config.json").read_text())
    _, from_state = load_hf(tmp_path / "state_dict", scan=True)
    _, from_file = load_hf(tmp_path / "model", scan=True)
    jax.tree.map(np.testing.assert_array_equal, from_state, from_file)
