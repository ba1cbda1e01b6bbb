"""Parity of FLAVA with HF transformers (tiny random config, eager attention, eval mode, float32): the
``FlavaModel`` states and each ``FlavaForPreTraining`` loss given the same masks and MIM labels,
imported through ``vlfm.convert.hf.load_hf`` (-> ``hf_flava``), and the export read back by HF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_convert import check, nhwc, reload, save
from vlfm.convert.hf import load_hf, save_hf
from vlfm.losses import LOSSES
from vlfm.models import build_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
CONFIG = dict(image_config=dict(TINY, image_size=32, patch_size=8, vocab_size=64),
              text_config=dict(TINY, vocab_size=99, max_position_embeddings=16),
              multimodal_config=dict(TINY, num_hidden_layers=1),
              image_codebook_config=dict(hidden_size=8, num_groups=4, num_blocks_per_group=1, vocab_size=64),
              hidden_size=32, projection_dim=16, init_codebook=False, attn_implementation="eager")


def _perturb(model):
    """Random values everywhere (HF zero-initialises biases, tokens and LayerNorm shifts)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.FlavaConfig(**CONFIG)
    root = tmp_path_factory.mktemp("flava")
    base = _perturb(transformers.FlavaModel(cfg))
    pre = _perturb(transformers.FlavaForPreTraining(cfg))
    return {"model": (base, save(base, root / "model")), "pretraining": (pre, save(pre, root / "pretraining"))}


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 97, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    masked_ids = ids.clone()
    mlm = torch.full_like(ids, -100)
    for row, col in ((0, 2), (1, 1), (1, 3), (2, 5)):
        mlm[row, col], masked_ids[row, col] = ids[row, col], 3
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    patches = torch.zeros(3, 16, dtype=torch.bool)
    patches[0, [1, 2, 5]] = patches[1, [0, 15]] = patches[2, [7, 8, 9, 10]] = True
    codes = torch.randint(0, 64, (3, 16), generator=g)
    return dict(ids=ids, mask=mask, masked_ids=masked_ids, mlm=mlm, pixels=pixels, patches=patches, codes=codes)


def _losses(outputs, batch, names):
    out = {}
    for name, kwargs in names.items():
        out[name] = float(LOSSES.get(kwargs.pop("fn", name))(outputs, batch, **kwargs)[0])
    return out


def test_flava_parity(hf, inputs):
    """One import of FlavaForPreTraining: the states of its FlavaModel, then each pretraining loss."""
    pretraining, path = hf["pretraining"]
    model = pretraining.flava
    config, params = load_hf(path, scan=False)
    assert all(config[k] for k in ("mim", "mlm", "mmm", "itm"))
    vlfm = build_model(config)
    encode = jax.jit(lambda p, b: vlfm.apply({"params": p}, b, method=type(vlfm).encode))
    for masked in (True, False):  # an all-False mask leaves every patch as it is
        with torch.no_grad():
            want = model(input_ids=inputs["ids"], attention_mask=inputs["mask"], pixel_values=inputs["pixels"],
                         bool_masked_pos=inputs["patches"] if masked else None)
        patches = inputs["patches"].numpy() if masked else np.zeros((3, 16), bool)
        batch = dict(image=nhwc(inputs["pixels"]), text=inputs["ids"].numpy(), text_mask=inputs["mask"].numpy(),
                     image_mask=patches)
        got = encode(params, {k: jnp.asarray(v) for k, v in batch.items()})
        real = np.concatenate([np.ones((3, 18), bool), inputs["mask"].numpy().astype(bool)], axis=1)
        check("image tokens", got["image_tokens"], want.image_output.last_hidden_state)
        check("image pooled", got["image_pooled"], want.image_output.pooler_output)
        check("text tokens", got["text_tokens"], want.text_output.last_hidden_state,
              inputs["mask"].numpy().astype(bool))
        check("text pooled", got["text_pooled"], want.text_output.pooler_output)
        check("mm tokens", got["mm_tokens"], want.multimodal_output.last_hidden_state, real)
        check("mm pooled", got["mm_pooled"], want.multimodal_output.pooler_output)
    with torch.no_grad():  # the contrastive embeddings: projections of the normalised [CLS] tokens (unmasked pass)
        want_image = model.image_projection(want.image_output.last_hidden_state[:, 0]).numpy()
        want_text = model.text_projection(want.text_output.last_hidden_state[:, 0]).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    check("image embed", got["image_embed"], unit(want_image))
    check("text embed", got["text_embed"], unit(want_text))

    model, i = pretraining, inputs  # each loss of FlavaForPreTraining given the same masks and MIM labels
    targets = np.where(i["mlm"].numpy() == -100, -1, i["mlm"].numpy())
    image, codes, patches = nhwc(i["pixels"]), i["codes"].numpy(), i["patches"].numpy()
    fn = jax.jit(lambda p, b: vlfm.apply({"params": p}, b, train=True,
                                         rngs={"sampling": jax.random.key(0), "dropout": jax.random.key(1)}))
    apply = lambda batch: fn(params, {k: jnp.asarray(v) for k, v in batch.items()})  # noqa: E731
    with torch.no_grad():
        want = model(input_ids=i["ids"], input_ids_masked=i["masked_ids"], attention_mask=i["mask"],
                     pixel_values=i["pixels"], bool_masked_pos=i["patches"], mim_labels=i["codes"].clone(),
                     mlm_labels=i["mlm"].clone(), itm_labels=torch.ones(3, dtype=torch.long), return_loss=True)
    pair = dict(image=image, text=i["ids"].numpy(), text_mask=i["mask"].numpy(), mlm_text=i["masked_ids"].numpy(),
                mlm_targets=targets, image_mask=patches, mim_targets=codes, itm_image_index=np.arange(3))
    got = _losses(apply(pair), pair, {
        "itm": {}, "global_contrastive": dict(fn="softmax_contrastive"),
        "mmm_image": dict(fn="masked_xent", logits_key="mmm_image_logits", target_key="mmm_image_targets"),
        "mmm_text": dict(fn="masked_xent", logits_key="mmm_text_logits", target_key="mmm_text_targets")})
    for name, value in got.items():
        check(name, value, float(getattr(want.loss_info, name)))
    with torch.no_grad():  # image alone: MIM
        want_mim = model(pixel_values=i["pixels"], bool_masked_pos=i["patches"], mim_labels=i["codes"].clone(),
                         return_loss=True).loss_info.mim
        want_mlm = model(input_ids_masked=i["masked_ids"], attention_mask=i["mask"], mlm_labels=i["mlm"].clone(),
                         return_loss=True).loss_info.mlm
    images = dict(image=image, image_mask=patches, mim_targets=codes)
    check("mim", _losses(apply(images), images, {"mim": dict(fn="masked_xent", logits_key="mim_logits",
                                                              target_key="mim_targets")})["mim"], float(want_mim))
    texts = dict(text=i["masked_ids"].numpy(), text_mask=i["mask"].numpy(), mlm_targets=targets)
    check("mlm", _losses(apply(texts), texts, {"masked_xent": {}})["masked_xent"], float(want_mlm))


@pytest.mark.parametrize("which", ["model", "pretraining"])
def test_flava_export_round_trip(hf, which, tmp_path):
    model, path = hf[which]
    config, params = load_hf(path, scan=False)
    save_hf(config, params, tmp_path / "out")
    cls = transformers.FlavaForPreTraining if which == "pretraining" else transformers.FlavaModel
    back = reload(cls, tmp_path / "out")
    want = model.state_dict()
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), want[key].numpy(), err_msg=key)


def test_dalle_codebook_imports_as_a_tokenizer(tmp_path):
    """FLAVA's dVAE layout (HF FlavaImageCodebook) -> vlfm's frozen tokenizer: logits and codes match."""
    from vlfm.models.dvae import DvaeTokenizer
    from vlfm.models.image_tokenizer import ImageTokenizer

    torch.manual_seed(0)
    config = dict(hidden_size=8, num_groups=4, num_blocks_per_group=2, vocab_size=64)
    codebook = _perturb(transformers.FlavaImageCodebook(transformers.FlavaImageCodebookConfig(**config)))
    tensors = {k: v.numpy() for k, v in codebook.state_dict().items()}
    tok = DvaeTokenizer.from_hf(tensors, config, image_size=32, patch_size=8)
    tok.save(str(tmp_path / "dvae.npz"))
    tok = ImageTokenizer.load(str(tmp_path / "dvae.npz"))
    assert isinstance(tok, DvaeTokenizer) and tok.codebook_size == 64 and tok.input_size == 32
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = codebook(0.8 * pixels + 0.1)  # map_pixels, as HF's processor prepares codebook pixels
    # logits of the mapped pixels, and the codes of the images in [0, 1] (pixel_mean 0, pixel_std 1)
    got, codes = jax.jit(lambda x: (tok.logits(0.8 * x + 0.1), tok(x)))(jnp.asarray(nhwc(pixels)))
    check("dvae logits", got, nhwc(want))
    np.testing.assert_array_equal(np.asarray(codes), want.argmax(1).numpy())
