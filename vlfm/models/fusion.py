"""Fusion modules: co-attention stacks (METER), bridge layers (BridgeTower) and merged attention.

A co-attention layer is a pair of BERT-style post-LN cross layers (``TransformerBlock`` with
``cross_attention``): the text layer attends to itself, then to the image tokens; the image layer
attends to itself, then to the text tokens. Both read the *inputs* of the layer (the other
modality's input, not its output), as in METER and BridgeTower. Without ``exchange`` the two stacks
are independent cross encoders (R2D2): every text layer attends to the stack's image *input* and every
image layer to its text input, so neither stream sees the other's cross-modal layers.

BridgeTower adds a bridge (link tower) before every cross-modal layer but the first:
``X̂_l = LN(T̃_l + X_{l-1})`` with ``T̃_l`` the projected output of uni-modal layer ``L - N + l``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from vlfm.losses import itm as itm_lib
from vlfm.models import heads, layers
from vlfm.models.tower_base import TransformerTower

Dtype = layers.Dtype
BRIDGES = ("none", "add", "scaled_add", "interpolate")


class _NormWeights(nn.Module):
    """The scale and bias of a LayerNorm over ``width`` features, created but not applied."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, width: int) -> dict:
        return {"scale": self.param("scale", layers.logical(nn.initializers.ones, ("embed",)), (width,),
                                    self.param_dtype),
                "bias": self.param("bias", layers.logical(nn.initializers.zeros, ("embed",)), (width,),
                                   self.param_dtype)}


def link(kind: str, weights: dict, x: jax.Array, h: jax.Array, eps: float, dtype: Dtype) -> jax.Array:
    """The bridge formula on explicit weights (so that a scanned stack can take them per layer)."""
    if kind == "add":
        y = x + h
    elif kind == "scaled_add":
        y = x * weights["scale"].astype(x.dtype) + h
    elif kind == "interpolate":
        b = weights["beta"].astype(x.dtype)
        y = x * (1 - b) + h * b
    else:
        raise ValueError(f"unknown bridge {kind!r}; valid: {', '.join(BRIDGES[1:])}")
    y32 = y.astype(jnp.float32)
    mean = y32.mean(-1, keepdims=True)
    var = jnp.square(y32 - mean).mean(-1, keepdims=True)
    out = (y32 - mean) * jax.lax.rsqrt(var + eps)
    return (out * weights["ln"]["scale"].astype(jnp.float32) + weights["ln"]["bias"].astype(jnp.float32)).astype(dtype)


class LinkTower(nn.Module):
    """Bridge layer: ``LN(x + h)`` (``add``), ``LN(s*x + h)`` (``scaled_add``, s init 1) or
    ``LN((1-b)*x + b*h)`` (``interpolate``, b init 0.5), with ``x`` the uni-modal input and ``h`` the
    previous cross-modal layer's output (HF ``BridgeTowerLinkTower``). ``weights`` gives the
    parameters as a dict, for the co-attention stack that feeds them to its layers."""

    kind: str = "add"
    ln_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        if self.kind not in BRIDGES[1:]:
            raise ValueError(f"unknown bridge {self.kind!r}; valid: {', '.join(BRIDGES[1:])}")
        self.ln = _NormWeights(self.param_dtype)
        if self.kind == "scaled_add":
            self.scale = self.param("scale", layers.logical(nn.initializers.constant(1.0), ()), (),
                                    self.param_dtype)
        if self.kind == "interpolate":
            self.beta = self.param("beta", layers.logical(nn.initializers.constant(0.5), ()), (), self.param_dtype)

    def weights(self, width: int) -> dict:
        w = {"ln": self.ln(width)}
        if self.kind == "scaled_add":
            w["scale"] = self.scale
        if self.kind == "interpolate":
            w["beta"] = self.beta
        return w

    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        return link(self.kind, self.weights(x.shape[-1]), x, h, self.ln_eps, self.dtype)


class FusionStack(nn.Module):
    """Fields shared by the fusion stacks: their post-LN (BERT-style) layers."""

    depth: int
    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-12
    act: str = "gelu"
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    init_std: float | None = 0.02
    implementation: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def block(self, **extra) -> dict:
        """``TransformerBlock`` fields of one post-LN layer."""
        return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm="post", ln_eps=self.ln_eps, act=self.act,
                    dropout_rate=self.dropout_rate, attn_dropout_rate=self.attn_dropout_rate,
                    implementation=self.implementation, init_std=self.init_std, dtype=self.dtype,
                    param_dtype=self.param_dtype, **extra)


class CoAttentionLayer(nn.Module):
    """One co-attention layer as a stack layer: carry ``(text, image)``, per-layer inputs (with a
    bridge) ``{"text", "image"}`` uni-modal layers, ``{"text_link", "image_link"}`` bridge weights and
    ``first`` (layer 0 takes no bridge), broadcast ``{"text_mask"}``."""

    block: Any  # TransformerBlock fields of both sides
    bridge: str = "none"
    bridge_ln_eps: float = 1e-5
    exchange: bool = True
    return_attention: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, drop_path_rate, xs, broadcast):
        x, y = carry
        dtype = self.block.get("dtype", jnp.float32)
        if self.bridge != "none":
            bridged = lambda side, h: link(self.bridge, xs[f"{side}_link"], xs[side], h,  # noqa: E731
                                           self.bridge_ln_eps, dtype)
            x = jnp.where(xs["first"], x, bridged("text", x))
            y = jnp.where(xs["first"], y, bridged("image", y))
        block = dict(self.block, deterministic=self.deterministic, return_attention=self.return_attention)
        text_mask = broadcast["text_mask"]
        text_context, image_context = (x, y) if self.exchange else (broadcast["text_input"], broadcast["image_input"])
        tx = layers.TransformerBlock(name="text_layer", **block)(x, drop_path_rate, key_mask=text_mask,
                                                                 context=image_context)
        ty = layers.TransformerBlock(name="image_layer", **block)(y, drop_path_rate, context=text_context,
                                                                   context_mask=text_mask)
        if self.return_attention:
            (tx, text_probs), (ty, image_probs) = tx, ty
            return (tx, ty), {"text_probs": text_probs, "image_probs": image_probs}
        return (tx, ty), {}


class CoAttentionFusion(FusionStack):
    """``depth`` co-attention layers over text ``[B, Lt, D]`` and image ``[B, Li, D]`` tokens.

    With a ``bridge``, the inputs carry one sequence per layer (``[B, depth, L, D]``): layer ``l``
    gets ``bridge(inputs[:, l], output of layer l-1)``; without one, they are ``[B, 1, L, D]`` (METER
    uses only the last uni-modal layer). ``input_norm`` puts a LayerNorm on the first layer's inputs
    (BridgeTower's ``cross_modal_{text,image}_layernorm``). Text padding is ``text_mask [B, Lt]``;
    images are never padded. The layers run on the shared stack (``scan``, ``remat``,
    ``drop_path_rate``; parameters ``encoder/layers/{text,image}_layer`` scanned,
    ``encoder/layer_{i}/...`` unrolled); the bridges keep their own parameters (``{text,image}_link_{i}``)
    and reach the layers as per-layer inputs. The self-attention probabilities of
    ``attention_layers`` are sown into the ``attention`` collection (``encoder/text_probs``,
    ``encoder/image_probs``). ``exchange=False`` makes the two stacks independent cross encoders over
    each other's (fixed) inputs (R2D2). Returns the text and image outputs of the last layer.
    """

    bridge: str = "none"
    bridge_ln_eps: float = 1e-5
    input_norm: bool = False
    exchange: bool = True  # False: independent cross encoders over each other's inputs (R2D2)
    drop_path_rate: float = 0.0
    scan: bool = True
    remat: str = "none"
    attention_layers: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, text: jax.Array, image: jax.Array, text_mask: jax.Array | None, *,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        if self.bridge not in BRIDGES:
            raise ValueError(f"unknown bridge {self.bridge!r}; valid: {', '.join(BRIDGES)}")
        need = self.depth if self.bridge != "none" else 1
        if text.shape[1] != need or image.shape[1] != need:
            raise ValueError(f"co-attention with bridge={self.bridge!r} takes {need} input layers per modality, "
                             f"got text {text.shape[1]} and image {image.shape[1]}")
        norm = lambda name: layers.layer_norm(self.bridge_ln_eps, self.dtype, self.param_dtype, name=name)  # noqa: E731
        x, y = text[:, 0], image[:, 0]
        if self.input_norm:
            x, y = norm("text_ln")(x), norm("image_ln")(y)
        if not self.exchange and self.bridge != "none":
            raise ValueError("independent cross encoders (exchange=False) take no bridge layers")
        bridged = self.bridge != "none" and self.depth > 1
        xs = None
        if bridged:
            xs = {"text": jnp.swapaxes(text, 0, 1), "image": jnp.swapaxes(image, 0, 1),
                  "first": jnp.arange(self.depth) == 0}
            for side, tokens in (("text", x), ("image", y)):
                weights = [LinkTower(self.bridge, self.bridge_ln_eps, self.dtype, self.param_dtype,
                                     name=f"{side}_link_{i}").weights(tokens.shape[-1]) for i in range(1, self.depth)]
                weights = [weights[0]] + weights  # layer 0 takes no bridge: a placeholder it never uses
                xs[f"{side}_link"] = jax.tree.map(lambda *w: jnp.stack(w), *weights)
        layer = dict(block=self.block(cross_attention=True), bridge=self.bridge if bridged else "none",
                     bridge_ln_eps=self.bridge_ln_eps, exchange=self.exchange)
        stack = layers.Stack((layers.Segment(self.depth, layer, CoAttentionLayer),), self.drop_path_rate, self.scan,
                             self.remat, attention_layers=tuple(self.attention_layers), name="encoder")
        broadcast = {"text_mask": text_mask}
        if not self.exchange:
            broadcast.update(text_input=x, image_input=y)
        return stack((x, y), xs, broadcast, train=train)


class MergedFusion(FusionStack):
    """Merged attention (METER's alternative, ViLT-like): one post-LN self-attention stack over
    ``[text; image]``, split back into the two parts."""

    scan: bool = True
    remat: str = "none"
    drop_path_rate: float = 0.0
    attention_layers: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, text: jax.Array, image: jax.Array, text_mask: jax.Array | None, *,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        x, y = text[:, -1], image[:, -1]
        lt = x.shape[1]
        if text_mask is None:
            text_mask = jnp.ones(x.shape[:2], bool)
        mask = jnp.concatenate([text_mask.astype(bool), jnp.ones(y.shape[:2], bool)], axis=1)
        out = layers.Encoder(self.depth, self.block(), self.drop_path_rate, self.scan, self.remat,
                             attention_layers=tuple(self.attention_layers), name="encoder")(
            jnp.concatenate([x, y], axis=1), key_mask=mask, train=train)
        return out[:, :lt], out[:, lt:]


# ----------------------------------------------------------------------------------------------------
# What ViLT, METER and BridgeTower share: objectives and task heads around encode / fuse.

ITM_MODES = ("none", "random", "hard")


def take_rows(tree: Any, index: jax.Array) -> Any:
    """Rows ``index`` of every array in ``tree`` (batch-major); under a mesh XLA gathers across shards."""
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), tree)


class FusionModel(TransformerTower):
    """Base of the fusion models. Subclasses define ``encode_text``, ``encode_image`` (batch-major
    dicts, so negatives are gathered by row) and ``fuse`` (-> ``text_tokens``, ``image_tokens``,
    ``text_mask``, ``image_mask``, ``pooled``); this class runs the objectives and heads.

    ``__call__(batch, train)`` returns, for what the config enables:

    - ``mlm``: ``mlm_logits`` over the text positions of the masked pass (``batch["mlm_text"]``, or
      ``text`` when absent) fused with the paired image;
    - ``itm`` (``random`` or ``hard``): ``itm_logits``, ``itm_labels`` and the fused tokens/masks of
      the pairs (``itm_text_tokens`` ... for word-patch alignment). Pairs are built in training only;
      at evaluation every pair is the batch's own (label 1). The draws may be given, then they build the
      pairs in any mode: ``batch["itm_image_index"]`` (random) or ``batch["itm_neg_image"]``/``["itm_neg_text"]``
      (hard; the hard draws are also outputs, so a momentum model can score the student's pairs);
    - ``vqa_answers``: ``vqa_logits``; ``num_classes``: ``logits`` for one (image, text) pair (visual
      entailment); ``pair_classes``: ``logits`` for (``image``, ``image2``, ``text``) (NLVR2: the two
      images get modality types 1 and 2 and the two pooled vectors are concatenated).

    At evaluation the outputs also hold ``pooled``, ``text_tokens`` and ``image_tokens`` of the
    batch's own pairs.
    """

    mlm: bool = False
    itm: str = "none"
    vqa_answers: int = 0
    num_classes: int = 0
    pair_classes: int = 0
    head_ln_eps: float = 1e-5

    # Functions of (module, batch) that evaluators may call, by name.
    PREDICT = {
        "itm_score": lambda m, b: m.itm_score(b),
        "vqa_logits": lambda m, b: m(b)["vqa_logits"],
        "logits": lambda m, b: m(b)["logits"],
        "mlm_logits": lambda m, b: m(b)["mlm_logits"],
        "joint_attention": lambda m, b: m.joint_attention(b),
    }

    def setup_heads(self) -> None:
        if self.itm not in ITM_MODES:
            raise ValueError(f"unknown itm mode {self.itm!r}; valid: {', '.join(ITM_MODES)}")
        dtype, pdtype = self.dtypes
        common = dict(init_std=self.init_std, dtype=dtype, param_dtype=pdtype)
        if self.mlm:
            self.mlm_head = heads.MlmHead(self.text_vocab_size(), self.act, self.ln_eps, **common)
        if self.itm != "none":
            self.itm_head = layers.Proj((2,), ("embed", "classes"), **common)
        classifier = lambda n: heads.ClassifierHead(2 * self.width, n, self.head_ln_eps, **common)  # noqa: E731
        if self.vqa_answers:
            self.vqa_head = classifier(self.vqa_answers)
        if self.num_classes:
            self.cls_head = classifier(self.num_classes)
        if self.pair_classes:
            self.pair_head = classifier(self.pair_classes)

    def text_vocab_size(self) -> int:
        raise NotImplementedError

    def contrastive_outputs(self, text: dict, image: dict, train: bool = False) -> dict:
        """``image_embed``, ``text_embed``, ``logit_scale`` for models with a contrastive head, else {}
        (``train``: for a head that runs layers of its own, VLMo's uni-modal passes)."""
        del text, image, train
        return {}

    def itm_pairs(self, batch: dict, outputs: dict, batch_size: int,
                  train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(text index, image index, label) of the ITM pairs. Draws given in the batch build the pairs in
        any mode (a momentum model scores the pairs its student drew); else training draws, eval pairs
        each row with itself."""
        rows = jnp.arange(batch_size, dtype=jnp.int32)
        if self.itm == "random" and "itm_image_index" in batch:
            image_idx = batch["itm_image_index"].astype(jnp.int32)
            return rows, image_idx, (image_idx == rows).astype(jnp.int32)
        if self.itm == "hard" and "itm_neg_image" in batch:
            return itm_lib.hard_negative_pairs(batch["itm_neg_image"].astype(jnp.int32),
                                               batch["itm_neg_text"].astype(jnp.int32))
        if not train:
            return rows, rows, jnp.ones((batch_size,), jnp.int32)
        if self.itm == "random":
            image_idx, labels = itm_lib.random_negatives(self.make_rng("sampling"), batch_size)
            return rows, image_idx, labels
        if "image_embed" not in outputs:
            raise ValueError("itm='hard' samples negatives from contrastive similarities: set contrastive_dim")
        neg_image, neg_text = itm_lib.hard_negatives(self.make_rng("sampling"), outputs["image_embed"],
                                                     outputs["text_embed"], outputs["logit_scale"])
        return itm_lib.hard_negative_pairs(neg_image.astype(jnp.int32), neg_text.astype(jnp.int32))

    def __call__(self, batch: dict, *, train: bool = False) -> dict:
        image = self.encode_image(batch["image"], train)
        text = self.encode_text(batch["text"], batch.get("text_mask"), train)
        out = dict(self.contrastive_outputs(text, image, train))
        cache = {}

        def plain() -> dict:  # the batch's own pairs, fused once however many heads read them
            if "fused" not in cache:
                cache["fused"] = self.fuse(text, image, 1, train)
            return cache["fused"]

        if self.mlm:
            masked = self.encode_text(batch["mlm_text"], batch.get("text_mask"), train) if "mlm_text" in batch \
                else text
            out["mlm_logits"] = self.mlm_head(self.fuse(masked, image, 1, train)["text_tokens"])
        if self.itm != "none":
            b = batch["text"].shape[0]
            text_idx, image_idx, labels = self.itm_pairs(batch, out, b, train)
            drawn = train or "itm_image_index" in batch or "itm_neg_image" in batch
            pairs = self.fuse(take_rows(text, text_idx), take_rows(image, image_idx), 1, train) if drawn else plain()
            out.update(self.itm_outputs(pairs), itm_labels=labels,
                       **{f"itm_{k}": pairs[k] for k in ("text_tokens", "image_tokens", "text_mask", "image_mask")})
            if self.itm == "hard" and text_idx.shape[0] == 3 * b:  # the draws, for a momentum model to score
                out.update(itm_neg_image=image_idx[b:2 * b], itm_neg_text=text_idx[2 * b:])
        if self.vqa_answers:
            out["vqa_logits"] = self.vqa_head(plain()["pooled"])
        if self.num_classes:
            out["logits"] = self.cls_head(plain()["pooled"])
        if self.pair_classes:
            second = self.fuse(text, self.encode_image(batch["image2"], train), 2, train)
            out["logits"] = self.pair_head(jnp.concatenate([plain()["pooled"], second["pooled"]], axis=-1))
        if not train:
            out.update({k: plain()[k] for k in ("pooled", "text_tokens", "image_tokens")})
        return out

    def joint_attention(self, batch: dict) -> dict:
        """The self-attention of every fused layer over the joint ``[text; image]`` sequence of the
        batch's own pairs, for analysis (the ``inter_modality_flow`` evaluator).

        Returns ``probs [B, depth, T, T]`` (float32, averaged over heads; row = query, column = key) and
        ``modality [B, T]`` (int32: 0 text, 1 image, -1 text padding). The fused pass runs again in a
        copy of the model that sows every layer's probabilities, with these parameters, so the model's
        own ``attention_layers`` and outputs are untouched. Co-attention fusion (METER's default,
        BridgeTower) has no joint self-attention: it fails, naming the sown parts it found.
        """
        probe = self.clone(parent=None, attention_layers=tuple(range(self.depth)), attention_outputs=("probs",))

        def fused(m, b):
            text = m.encode_text(b["text"], b.get("text_mask"), False)
            out = m.fuse(text, m.encode_image(b["image"], False), 1, False)
            return out["text_mask"], out["image_mask"]

        (text_mask, image_mask), state = probe.apply({"params": self.variables["params"]}, batch, method=fused,
                                                     mutable=["attention"])
        sown = traverse_util.flatten_dict(dict(state.get("attention", {})), sep="/")
        joint = [v for k, v in sown.items() if k.split("/")[-1] == "probs"]
        if len(joint) != 1 or len(joint[0]) != 1:
            raise ValueError(f"{type(self).__name__}: joint_attention needs one fused self-attention stack over "
                             f"[text; image]; the fused pass sowed {sorted(sown) or 'nothing'} (under co-attention the "
                             "rollout's cross-modal share is fixed by the residual weight: "
                             "vlfm.evaluators.flow.co_attention_imf)")
        probs = joint[0][0]  # [depth, B, H, T, T]
        length = text_mask.shape[1] + image_mask.shape[1]
        if probs.shape[-1] != length:
            raise ValueError(f"joint attention over {probs.shape[-1]} tokens, but the pair has {length}")
        modality = jnp.concatenate([jnp.where(text_mask, 0, -1), jnp.where(image_mask, 1, -1)], axis=1)
        return {"probs": jnp.swapaxes(probs.astype(jnp.float32).mean(axis=2), 0, 1),
                "modality": modality.astype(jnp.int32)}

    def itm_outputs(self, fused: dict) -> dict:
        """ITM logits ``[N, 2]`` of fused pairs: ``itm_logits`` (a model with more ITM heads adds its own)."""
        return {"itm_logits": self.itm_head(fused["pooled"]).astype(jnp.float32)}

    def itm_scores(self, batch: dict) -> dict:
        """Each ITM head's match score ``logit(match) - logit(no match)`` of every (image, text) row."""
        image = self.encode_image(batch["image"], False)
        text = self.encode_text(batch["text"], batch.get("text_mask"), False)
        return {k: v[:, 1] - v[:, 0] for k, v in self.itm_outputs(self.fuse(text, image, 1, False)).items()}

    def itm_score(self, batch: dict) -> jax.Array:
        """Match score of each (image, text) row, for re-ranking: the mean of the ITM heads' log-odds."""
        scores = list(self.itm_scores(batch).values())
        return sum(scores[1:], scores[0]) / len(scores)
