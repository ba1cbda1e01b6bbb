"""DaVinci: a prefix-LM encoder-decoder over one vocabulary of words and image codes (Diao et al. 2023).

An encoder reads ``[image patch tokens; prefix text]`` bidirectionally; a decoder, causal with
cross-attention to the encoder states, generates what follows the prefix. One word embedding table is
shared by the encoder's text input, the decoder's input and the decoder's output logits; its vocabulary
is the text vocabulary, then the image codes of a frozen tokenizer (offset by ``text_vocab_size``), then
``IMG_BOS`` (the decoder's first token when it paints).

Objectives, each a model method that a task's ``forward.method`` picks:

- ``prefix_lm``: on image-caption pairs the caption is cut at a uniform random token (``split_prefix``,
  ``sampling`` stream); the encoder sees the image and the prefix, the decoder generates the suffix.
  A batch without ``image`` is text-only prefix LM (the encoder sees the prefix alone);
- ``prefix_image``: a random number of top rows of the image stays visible (the encoder's patch mask),
  the encoder sees them and the whole caption, and the decoder generates the codes of the remaining
  rows, each at its raster position. Codes come from the frozen tokenizer under ``stop_gradient``; the
  tokenizer is a constant, never a parameter.

Both return ``{prefix}_logits`` and ``{prefix}_labels`` (pad = 0 where nothing is predicted) for
``caption_ce``. The decoder writes one modality at a time: a context says which (``modality``: 0 text,
1 image codes), and ``decode_logits`` gives the ids of the other modality (and IMG_BOS) a logit of
``-1e9``, in training as in generation, so a caption never contains an image code and a painting never
a word. Without a ``sampling`` stream (evaluation) the cut is deterministic: the whole caption
is the suffix, and ``pim_eval_rows`` rows stay visible.

The generation contract (``vlfm.models.decoding``): ``generation_context`` encodes ``image`` and an
optional ``prefix`` (text ids without BOS, right-padded) for writing text, or, given ``visible_rows``,
the top rows of ``image`` and the caption ``text`` for painting the remaining rows' codes
(``paint_config``); ``decode_logits`` runs the decoder, with a KV cache when ``decode=True``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlfm.data.prefix import split_prefix
from vlfm.models import layers
from vlfm.models.decoding import GenerateConfig
from vlfm.models.image_tokenizer import ImageTokenizer, resolve_tokenizer
from vlfm.models.registry import MODELS

Array = jax.Array
TEXT, IMAGE = 0, 1  # what the decoder writes (a context's ``modality``)
MASKED = -1.0e9  # the logit of an id outside the modality being written (finite: no NaN in log-softmax)


@MODELS.register("davinci")
class DaVinci(nn.Module):
    """Prefix-LM encoder-decoder with tied word/image-code embeddings (see the module docstring).

    ``tokenizer`` is ``"kmeans"`` (a codebook of ``image_vocab_size`` codes fitted on
    ``tokenizer_fit_images`` built-in training images at build time, cached on disk) or the path of an
    ``.npz`` codebook (``ImageTokenizer.load``). Its patch grid must be the ViT patch grid.
    """

    image_size: int = 256
    patch_size: int = 16
    text_vocab_size: int = 30522
    image_vocab_size: int = 1024
    width: int = 768
    encoder_depth: int = 6
    decoder_depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 3072
    max_text_len: int = 256
    max_decode_len: int = 257
    norm: str = "post"
    ln_eps: float = 1e-12
    act: str = "gelu"
    dropout_rate: float = 0.1
    attn_dropout_rate: float = 0.1
    init_std: float | None = 0.02
    pad_id: int = 0
    bos_id: int = 2
    tokenizer: str = "kmeans"
    tokenizer_fit_images: int = 2000
    tokenizer_normalise: bool = False
    pim_eval_rows: int | None = None
    scan: bool = True
    remat: str = "none"
    attention: str = "xla"
    decode: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def vocab_size(self) -> int:
        """Text tokens, image codes, IMG_BOS."""
        return self.text_vocab_size + self.image_vocab_size + 1

    @property
    def img_bos_id(self) -> int:
        return self.text_vocab_size + self.image_vocab_size

    @property
    def max_decode_length(self) -> int:
        return self.max_decode_len

    @property
    def grid(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        return self.image_size // self.patch_size

    def setup(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {self.norm!r}")
        dtype, pdtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
        std = 0.02 if self.init_std is None else self.init_std
        self.embed = layers.TokenEmbed(self.vocab_size, self.width, init_std=std, dtype=dtype, param_dtype=pdtype,
                                       name="word_embed")
        self.patch_embed = layers.PatchEmbed(self.patch_size, self.width, init_std=self.init_std, dtype=dtype,
                                             param_dtype=pdtype, name="patch_embed")
        self.image_pos = layers.PosEmbed(self.grid ** 2, self.width, init_std=std, param_dtype=pdtype,
                                         name="image_pos_embed")
        self.text_pos = layers.PosEmbed(self.max_text_len, self.width, init_std=std, param_dtype=pdtype,
                                        name="text_pos_embed")
        self.types = layers.PosEmbed(2, self.width, init_std=std, axis_name="types", param_dtype=pdtype,
                                     name="type_embed")
        self.decoder_pos = layers.PosEmbed(self.max_decode_len, self.width, init_std=std, param_dtype=pdtype,
                                           name="decoder_pos_embed")
        ln = functools.partial(layers.layer_norm, self.ln_eps, dtype, pdtype)
        self.encoder_ln = ln(name="encoder_ln")  # post-LN: on the embeddings (BERT); pre-LN: on the output
        self.decoder_ln = ln(name="decoder_ln")
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm=self.norm, ln_eps=self.ln_eps,
                     act=self.act, dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                     implementation=self.attention, init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        self.encoder = layers.Encoder(self.encoder_depth, block, scan=self.scan, remat=self.remat, name="encoder")
        self.decoder = layers.Encoder(self.decoder_depth, dict(block, causal=True, cross_attention=True,
                                                               decode=self.decode),
                                      scan=self.scan, remat=self.remat, name="decoder")
        self.lm_transform = layers.Proj((self.width,), ("embed", "proj"), init_std=self.init_std, dtype=dtype,
                                        param_dtype=pdtype, name="lm_transform")
        self.lm_ln = ln(name="lm_ln")
        self.lm_bias = self.param("lm_bias", layers.logical(nn.initializers.zeros, ("vocab",)), (self.vocab_size,),
                                  pdtype)
        self.dropout = nn.Dropout(self.dropout_rate)

    # ------------------------------------------------------------------------------------------------
    # Shared pieces

    def image_tokenizer(self) -> ImageTokenizer:
        """The frozen tokenizer (built once per process and cached; a constant, not a parameter)."""
        tok = resolve_tokenizer(self.tokenizer, codebook_size=self.image_vocab_size, patch_size=self.patch_size,
                                image_size=self.image_size, fit_images=self.tokenizer_fit_images,
                                normalise=self.tokenizer_normalise)
        if tok.codebook_size != self.image_vocab_size or tok.patch_size != self.patch_size:
            raise ValueError(f"image tokenizer {self.tokenizer!r} has {tok.codebook_size} codes of {tok.patch_size}px "
                             f"patches; the model expects image_vocab_size={self.image_vocab_size} and "
                             f"patch_size={self.patch_size}")
        return tok

    def encode(self, image: Array | None, text: Array, *, visible: Array | None = None, modality: int = TEXT,
               offset: Array | int = 0, train: bool = False) -> dict:
        """The decoder's context: encoder ``states`` over ``[image patches; text]``, their key ``mask``
        (False: padding or a hidden patch), the ``modality`` [B] the decoder writes and the ``offset`` [B]
        of its first position (a painting starts at the raster index of its first hidden code)."""
        dtype = jnp.dtype(self.dtype)
        types = self.types()
        if text.shape[1] > self.max_text_len:
            text = text[:, :self.max_text_len]  # over-long text is truncated, as the data pipeline does
        x = self.embed(text) + self.text_pos()[:text.shape[1]].astype(dtype)[None] + types[1].astype(dtype)
        mask = text != self.pad_id
        if image is not None:
            patches, _ = self.patch_embed(image.astype(dtype))
            patches = patches + self.image_pos().astype(dtype)[None] + types[0].astype(dtype)
            if visible is None:
                visible = jnp.ones(patches.shape[:2], bool)
            x = jnp.concatenate([patches, x], axis=1)
            mask = jnp.concatenate([visible, mask], axis=1)
        x = nn.with_logical_constraint(x, layers.EMBED_AXES)
        if self.norm == "post":
            x = self.encoder_ln(x)
        x = self.dropout(x, deterministic=not train)
        h = self.encoder(x, key_mask=mask, train=train)
        if self.norm == "pre":
            h = self.encoder_ln(h)
        b = x.shape[0]
        return {"states": h, "mask": mask, "modality": jnp.full((b,), modality, jnp.int32),
                "offset": jnp.broadcast_to(jnp.asarray(offset, jnp.int32), (b,))}

    def decode_logits(self, tokens: Array, context: dict, *, positions: Array | None = None,
                      train: bool = False) -> Array:
        """Decoder logits ``[B, L, vocab]`` (float32) over the shared vocabulary (generation contract)."""
        dtype = jnp.dtype(self.dtype)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        positions = positions + context["offset"][:, None]  # beyond the table only after a painting's last code
        x = self.embed(tokens) + jnp.take(self.decoder_pos(), positions, axis=0, mode="clip").astype(dtype)
        if self.norm == "post":
            x = self.decoder_ln(x)
        x = self.dropout(x, deterministic=not train)
        h = self.decoder(x, context=context["states"], context_mask=context["mask"], train=train)
        if self.norm == "pre":
            h = self.decoder_ln(h)
        h = self.lm_ln(layers.activation(self.act)(self.lm_transform(h)))
        logits = (self.embed.attend(h) + self.lm_bias.astype(h.dtype)).astype(jnp.float32)
        ids = jnp.arange(self.vocab_size)
        is_text = ids < self.text_vocab_size
        is_code = jnp.logical_and(ids >= self.text_vocab_size, ids < self.img_bos_id)
        allowed = jnp.where((context["modality"] == IMAGE)[:, None], is_code[None], is_text[None])
        return jnp.where(allowed[:, None, :], logits, MASKED)

    def generation_context(self, batch: dict, *, train: bool = False) -> dict:
        """Encoder states for writing text after ``[image; BOS, prefix]``: ``image`` [B, H, W, 3] and/or
        ``prefix`` (text ids without BOS, right-padded; absent or all pad = captioning from the image).

        With ``visible_rows`` int [B] it paints instead: the encoder sees those top rows of ``image`` (absent:
        no image, rows 0) and the whole ``text`` (BOS ... EOS), and the decoder writes the codes of the
        remaining rows in raster order (``paint_config`` gives the decoding options)."""
        if "visible_rows" in batch:
            return self._painting_context(batch, train=train)
        image, prefix = batch.get("image"), batch.get("prefix")
        if image is None and prefix is None:
            raise ValueError(f"generation_context needs 'image' and/or 'prefix'; the batch has {', '.join(batch)}")
        b = (image if image is not None else prefix).shape[0]
        bos = jnp.full((b, 1), self.bos_id, jnp.int32)
        text = bos if prefix is None else jnp.concatenate([bos, jnp.asarray(prefix, jnp.int32)], axis=1)
        return self.encode(image, text, train=train)

    def _painting_context(self, batch: dict, *, train: bool) -> dict:
        text = jnp.asarray(batch["text"], jnp.int32)
        g = self.grid
        rows = jnp.asarray(batch["visible_rows"], jnp.int32).reshape(text.shape[0])
        image = batch.get("image")
        if image is None:  # text to image: nothing is visible, whatever rows says
            image, rows = jnp.zeros((text.shape[0], self.image_size, self.image_size, 3)), jnp.zeros_like(rows)
        visible = jnp.repeat(jnp.arange(g)[None] < rows[:, None], g, axis=1)
        return self.encode(image, text, visible=visible, modality=IMAGE, offset=rows * g, train=train)

    # ------------------------------------------------------------------------------------------------
    # Objectives

    def prefix_lm(self, batch: dict, *, train: bool = False) -> dict:
        """Prefix LM: ``text`` [B, L] (BOS ... EOS, pad) cut at a random token; the decoder predicts the
        suffix after BOS. With ``image`` the encoder sees it too (pairs), else the text alone."""
        text = jnp.asarray(batch["text"], jnp.int32)
        if self.has_rng("sampling"):
            prefix, suffix = split_prefix(self.make_rng("sampling"), text, self.pad_id)
        else:  # evaluation: everything after BOS is the suffix (captioning)
            prefix = jnp.where(jnp.arange(text.shape[1])[None] < 1, text, self.pad_id)
            suffix = jnp.concatenate([text[:, 1:], jnp.full_like(text[:, :1], self.pad_id)], axis=1)
        context = self.encode(batch.get("image"), prefix, train=train)
        labels = suffix[:, :self.max_decode_len]
        inputs = jnp.concatenate([jnp.full_like(labels[:, :1], self.bos_id), labels[:, :-1]], axis=1)
        logits = self.decode_logits(inputs, context, train=train)
        return {"caption_logits": logits, "caption_labels": labels}

    def prefix_image(self, batch: dict, *, train: bool = False) -> dict:
        """Prefix image modelling: the encoder sees the top rows and the whole caption; the decoder
        predicts the codes of the remaining rows (labels 0 after the last code)."""
        image = batch["image"]
        g = self.grid
        n = g * g
        if n > self.max_decode_len:
            raise ValueError(f"prefix image modelling needs max_decode_len >= {n} (the code grid), "
                             f"got {self.max_decode_len}")
        codes = self.image_tokenizer()(image).reshape(image.shape[0], -1)  # stop_gradient inside
        if codes.shape[1] != n:
            raise ValueError(f"the tokenizer gives {codes.shape[1]} codes per image, the model {n} patches")
        codes = jax.lax.stop_gradient(codes) + self.text_vocab_size
        b = image.shape[0]
        if self.has_rng("sampling"):
            keep = jax.random.randint(self.make_rng("sampling"), (b,), 0, g)
        else:
            rows = g // 2 if self.pim_eval_rows is None else self.pim_eval_rows
            keep = jnp.full((b,), rows, jnp.int32)
        start = keep * g  # first hidden code
        index = start[:, None] + jnp.arange(n)[None]
        real = index < n
        labels = jnp.where(real, jnp.take_along_axis(codes, jnp.minimum(index, n - 1), axis=1), self.pad_id)
        inputs = jnp.concatenate([jnp.full((b, 1), self.img_bos_id, jnp.int32), labels[:, :-1]], axis=1)
        inputs = jnp.where(real, inputs, self.pad_id)
        visible = jnp.repeat(jnp.arange(g)[None] < keep[:, None], g, axis=1)
        # Each token sits at the raster index of the code it predicts: the context's offset is the first.
        context = self.encode(image, jnp.asarray(batch["text"], jnp.int32), visible=visible, modality=IMAGE,
                              offset=start, train=train)
        logits = self.decode_logits(inputs, context, train=train)
        return {"image_logits": logits, "image_labels": labels}

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        """Prefix LM (the default objective)."""
        return self.prefix_lm(batch, train=train)

    PREDICT = {
        "caption_tokens": lambda m, b: _predicted(m.prefix_lm(b), "caption"),
        "image_tokens": lambda m, b: _predicted(m.prefix_image(b), "image"),
    }


def _predicted(outputs: dict, kind: str) -> dict:
    """Teacher-forced argmax ids and the labels (pad where nothing is predicted), for the
    ``token_accuracy`` evaluator: [B, L] ints instead of [B, L, vocab] logits."""
    return {"predicted": jnp.argmax(outputs[f"{kind}_logits"], -1).astype(jnp.int32),
            "labels": outputs[f"{kind}_labels"]}


def paint_config(model: DaVinci, visible_rows: int) -> GenerateConfig:
    """Greedy decoding options that paint the ``grid - visible_rows`` hidden rows of codes after IMG_BOS
    (``generate(model, params, {"image", "text", "visible_rows"}, paint_config(model, rows))``; the codes
    are ``tokens - text_vocab_size`` in raster order). No EOS ends a painting: its id is IMG_BOS, which a
    painting never writes."""
    n = (model.grid - visible_rows) * model.grid
    return GenerateConfig(method="greedy", max_length=n, bos_id=model.img_bos_id, eos_id=model.img_bos_id,
                          pad_id=model.pad_id, max_positions=max(n + 1, 2))
