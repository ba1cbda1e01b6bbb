"""CoCa against open-clip-torch 3.3.0 in float32 on two small random configurations: open_clip's pooler
(ViT wider than the embedding, GELU) and the paper's parallel poolers (QuickGELU; also the corrected CLS
mask, which open_clip 3.3.0 has as a ``TextTransformer`` attribute but not in its configs). The open_clip
weights are imported into vlfm; image and text embeddings, caption logits, the loss (contrastive + 2 x
caption cross-entropy) and greedy generation agree; the export loads back into open_clip unchanged, also
through ``open_clip.create_model("local-dir:...")``."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.parity

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vlfm.convert.open_clip import (coca_config_from_open_clip, coca_config_to_open_clip,  # noqa: E402
                                    coca_from_open_clip, coca_to_open_clip, load_open_clip, save_open_clip)
from vlfm.losses import LOSSES  # noqa: E402
from vlfm.models import build_model  # noqa: E402
from vlfm.models.decoding import GenerateConfig, generate  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
SOT, EOS_UNUSED, PAD = 1, 63, 0
CONFIGS = {
    "open_clip_pooler": dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=2, head_width=16, mlp_ratio=2.0,
                        attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=9, output_tokens=True),
        text_cfg=dict(context_length=12, vocab_size=64, width=32, heads=4, layers=2, embed_cls=True,
                      output_tokens=True),
        multimodal_cfg=dict(context_length=12, vocab_size=64, width=32, heads=4, layers=2, attn_pooler_heads=4)),
    "paper_poolers": dict(
        embed_dim=32, quick_gelu=True,
        vision_cfg=dict(image_size=32, patch_size=16, width=32, layers=1, head_width=8, mlp_ratio=3.0,
                        attentional_pool="parallel", attn_pooler_heads=2, attn_pooler_queries=6, output_tokens=True),
        text_cfg=dict(context_length=10, vocab_size=64, width=32, heads=2, layers=1, embed_cls=True,
                      output_tokens=True),
        multimodal_cfg=dict(context_length=10, vocab_size=64, width=32, heads=2, layers=2, attn_pooler_heads=2)),
}


def _patch_generation(monkeypatch):
    """open_clip 3.3.0 imports BeamSearchScorer, which transformers 5 dropped, and then disables
    ``generate``; its greedy/top-k path needs only the logits processors, which transformers 5 has."""
    import transformers

    import open_clip.coca_model as cm

    for name in ("LogitsProcessorList", "TopKLogitsWarper", "TopPLogitsWarper", "RepetitionPenaltyLogitsProcessor",
                 "MinLengthLogitsProcessor", "MaxLengthCriteria", "StoppingCriteriaList"):
        monkeypatch.setattr(cm, name, getattr(transformers, name), raising=False)
    monkeypatch.setattr(cm, "GENERATION_TYPES", {"top_k": transformers.TopKLogitsWarper,
                                                 "top_p": transformers.TopPLogitsWarper, "beam_search": "beam_search"})
    monkeypatch.setattr(cm, "_has_transformers", True)


def _reference(cfg: dict):
    torch.manual_seed(0)
    model = open_clip.CoCa(**cfg).eval()
    with torch.no_grad():
        # open_clip never initialises the decoder's output projection (torch.empty); a zero pad column keeps
        # greedy decoding off the pad id, which open_clip's generate would take for the end of a caption.
        proj = model.text_decoder.text_projection
        torch.nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
        proj[:, PAD] = 0.0
    return model


def _inputs(cfg: dict):
    rng = np.random.default_rng(1)
    size, length = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    images = rng.normal(size=(4, 3, size, size)).astype(np.float32)
    text = np.zeros((4, length), np.int64)
    for row, n in enumerate((length, 5, 3, length - 2)):  # full rows and padded ones
        text[row, :n] = np.concatenate([[SOT], rng.integers(3, 60, size=n - 2), [2]])
    return images, text


def _greedy_reference(model, images, seq_len: int, eos: int) -> np.ndarray:
    """open_clip greedy (top-1) tokens after SOT, padded to ``seq_len - 1`` columns with the pad id."""
    out = model.generate(images, seq_len=seq_len, generation_type="top_k", top_k=1, min_seq_len=0,
                         sot_token_id=SOT, eos_token_id=eos, pad_token_id=PAD).numpy()[:, 1:]
    return np.pad(out, ((0, 0), (0, seq_len - 1 - out.shape[1])), constant_values=PAD)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_coca_matches_open_clip(name, tmp_path, monkeypatch):
    cfg = CONFIGS[name]
    ref = _reference(cfg)
    images, text = _inputs(cfg)
    with torch.no_grad():
        want = ref(torch.from_numpy(images), torch.from_numpy(text))
        clip_loss, caption_loss = open_clip.loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)(
            want["image_features"].reshape(4, -1), want["text_features"], want["logits"], want["labels"],
            want["logit_scale"])
    state = {k: v.numpy() for k, v in ref.state_dict().items()}

    model_config = coca_config_from_open_clip(cfg)
    params = coca_from_open_clip(state, model_config)
    model = build_model(model_config)
    batch = {"image": jnp.asarray(images.transpose(0, 2, 3, 1)), "text": jnp.asarray(text, jnp.int32)}
    out = jax.jit(model.apply)({"params": params}, batch)

    np.testing.assert_allclose(out["image_embed"], want["image_features"].reshape(4, -1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["text_embed"], want["text_features"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["caption_logits"], want["logits"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(out["caption_labels"], want["labels"])
    contrastive, _ = LOSSES.get("softmax_contrastive")(out, batch)
    caption, _ = LOSSES.get("caption_ce")(out, batch)
    np.testing.assert_allclose(float(contrastive) + 2.0 * float(caption), float(clip_loss + caption_loss),
                               rtol=RTOL)
    np.testing.assert_allclose(2.0 * float(caption), float(caption_loss), rtol=RTOL)

    # Greedy generation: the same token ids as open_clip's generate (top-1), EOS handling included. The
    # EOS is a token that open_clip's greedy run first emits in row 0 after a few steps, so that row stops
    # early while others go on.
    _patch_generation(monkeypatch)
    seq_len = cfg["text_cfg"]["context_length"]
    free = _greedy_reference(ref, torch.from_numpy(images), seq_len, EOS_UNUSED)[0]
    stop = next(k for k in range(1, seq_len - 2) if free[k] not in free[:k])
    eos = int(free[stop])
    want_tokens = _greedy_reference(ref, torch.from_numpy(images), seq_len, eos)
    got = generate(model, params, {"image": batch["image"]},
                   GenerateConfig(max_length=seq_len - 1, bos_id=SOT, eos_id=eos, pad_id=PAD))
    got_tokens = np.asarray(got["tokens"])
    # open_clip forces EOS into the last position; vlfm stops at max_length with the model's own choice.
    np.testing.assert_array_equal(got_tokens[:, :-1], want_tokens[:, :-1])
    assert set(want_tokens[:, -1]) <= {eos, PAD}
    assert got_tokens[0, stop] == eos and (got_tokens[0, stop + 1:] == PAD).all() and got["lengths"][0] == stop + 1
    assert (got["lengths"] > stop + 1).any()  # some row goes on after row 0 stopped

    # Export: open_clip loads vlfm's params and the config vlfm writes, tensor for tensor.
    exported = coca_to_open_clip(model_config, params)
    assert coca_config_to_open_clip(model_config)["vision_cfg"]["attentional_pool"] == \
        cfg["vision_cfg"]["attentional_pool"]
    save_open_clip(model_config, params, tmp_path)
    loaded = open_clip.create_model(f"local-dir:{tmp_path}").eval()
    loaded_state = loaded.state_dict()
    assert sorted(exported) == sorted(k for k in state if not k.endswith("attn_mask"))
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
        np.testing.assert_array_equal(loaded_state[key].numpy(), state[key], err_msg=key)
    round_config, round_params = load_open_clip(tmp_path)
    assert round_config == model_config
    jax.tree.map(np.testing.assert_array_equal, round_params, params)
    if name == "open_clip_pooler":  # the command line: open_clip dir -> vlfm params export -> open_clip dir
        from vlfm.convert.__main__ import main

        assert main(["import", str(tmp_path), str(tmp_path / "vlfm")]) == 0
        assert main(["export", str(tmp_path / "vlfm" / "params"), str(tmp_path / "vlfm" / "model_config.json"),
                     str(tmp_path / "back"), "--open-clip"]) == 0
        back_config, back_params = load_open_clip(tmp_path / "back")
        assert back_config == model_config
        jax.tree.map(np.testing.assert_array_equal, back_params, params)

    if name == "paper_poolers":  # the corrected CLS mask: the CLS sees itself and every real token
        ref.text.correct_cls_mask = True
        with torch.no_grad():
            want_text = ref.encode_text(torch.from_numpy(text)).numpy()
        corrected = build_model(dict(model_config, text=dict(model_config["text"], legacy_cls_mask=False)))
        got_text = corrected.apply({"params": params}, batch["text"], method="encode_text")
        np.testing.assert_allclose(got_text, want_text, rtol=RTOL, atol=ATOL)
        assert np.abs(np.asarray(got_text) - np.asarray(out["text_embed"])).max() > 1e-3  # padded rows differ
