"""Video and audio evaluation: multi-view classification (clips and crops, averaged logits), multi-label
mAP, video-text retrieval and zero-shot video classification through the evaluators' ``input_key``,
and a video-text config evaluated end to end."""

import jax
import numpy as np
import pytest

from vlfm.data.pipeline import build_dataset, eval_arrays
from vlfm.evaluators import EVALUATORS
from vlfm.evaluators.classification import clip_views
from vlfm.evaluators.multilabel import average_precision, multilabel_metrics, roc_auc
from vlfm.evaluators.retrieval import recall_at_k, top1_attribute_agreement
from vlfm.evaluators.zeroshot import ensemble_class_embeddings, topk_accuracy

VIDEOS = dict(name="moving_shapes", num_examples=24, num_frames=8, image_size=16)


def test_clip_views_are_evenly_spaced_clips_and_crops_of_the_longer_side():
    video = np.arange(8)[None, :, None, None, None] * np.ones((1, 8, 6, 10, 1))  # frame index as the value
    video[..., 0] += np.arange(10)[None, None, None, :] * 100  # column index in the hundreds
    views = clip_views(video, 4, 3, 6, 3)
    assert len(views) == 9 and all(v.shape == (1, 4, 6, 6, 1) for v in views)
    assert [int(v[0, 0, 0, 0, 0]) % 100 for v in views[::3]] == [0, 2, 4]  # first frames of the 3 clips
    assert [int(v[0, 0, 0, 0, 0]) // 100 for v in views[:3]] == [0, 2, 4]  # first columns of the 3 crops
    assert [v.shape[1] for v in clip_views(video, None, 1, None, 1)] == [8]
    with pytest.raises(ValueError, match="does not fit"):
        clip_views(video, 9, 2, None, 1)


def test_multi_view_accuracy_averages_the_clips_logits():
    """3 clips of 4 of 8 frames start at frames 0, 2 and 4. A model that is wrong on the first two clips
    and right on the last, by margins that make the mean right, scores 1 averaged and 0 on the single
    (middle) view; random logits agree with the mean computed on the whole split at once."""
    data = dict(VIDEOS, view="video_label")
    arrays = eval_arrays(build_dataset(data, "validation"), 24)
    known = {arrays["video"][i, s:s + 4].tobytes(): (int(arrays["label"][i]), s) for i in range(24) for s in (0, 2, 4)}
    margins = {0: (1.0, 2.0), 2: (0.0, 1.0), 4: (3.0, 0.0)}  # clip start -> (right class, a wrong class)

    def rigged(p, b):
        out = np.zeros((len(b["video"]), 8))
        for row, clip in enumerate(b["video"]):
            label, start = known[np.ascontiguousarray(clip).tobytes()]
            out[row, label], out[row, (label + 1) % 8] = margins[start]
        return out

    evaluator = EVALUATORS.get("classification")
    got = dict(evaluator({"logits": rigged}, data=data, num_examples=24, batch_size=8, views=3,
                         view_frames=4).run(None))
    assert got == {"accuracy": 1.0, "single_view_accuracy": 0.0, "num_views": 3.0}
    w = np.random.default_rng(0).normal(size=(4 * 16 * 16 * 3, 8))
    logits = lambda p, b: b["video"].reshape(len(b["video"]), -1) @ w  # noqa: E731  (needs 4 frames)
    got = dict(evaluator({"logits": logits}, data=data, num_examples=24, batch_size=8, views=3,
                         view_frames=4).run(None))
    per_clip = [logits(None, {"video": arrays["video"][:, s:s + 4]}) for s in (0, 2, 4)]
    assert got["accuracy"] == pytest.approx(np.mean(np.argmax(np.mean(per_clip, 0), -1) == arrays["label"]))
    with pytest.raises(ValueError, match="views > 1 needs view_frames"):
        evaluator({"logits": logits}, data=data, views=2)


def test_average_precision_and_auc_by_hand_and_against_sklearn():
    # ranking: + - + - -  -> precisions at the hits 1/1 and 2/3: AP = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), np.array([1, 0, 1, 0, 0])) == pytest.approx(5 / 6)
    # a tie between a positive and a negative enters together: precision 1/2 at recall 1
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)
    assert roc_auc(np.array([0.9, 0.8, 0.7, 0.2, 0.1]), np.array([1, 0, 1, 0, 0])) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(60, 5)), 1)  # rounded: ties
    targets = rng.random((60, 5)) < 0.3
    targets[:, 4] = False  # a class without positives is left out
    m = multilabel_metrics(scores, targets)
    assert m["num_classes_scored"] == 4
    assert m["chance_map"] == pytest.approx(targets[:, :4].mean())
    metrics = pytest.importorskip("sklearn.metrics")
    assert m["map"] == pytest.approx(np.mean([metrics.average_precision_score(targets[:, c], scores[:, c])
                                              for c in range(4)]))
    assert m["mauc"] == pytest.approx(np.mean([metrics.roc_auc_score(targets[:, c], scores[:, c]) for c in range(4)]))


def test_multilabel_map_evaluator_on_builtin_sounds_and_multi_hot_targets():
    data = dict(name="sounds", num_examples=24, view="audio_label", num_mel_bins=16, num_frames=16)
    arrays = eval_arrays(build_dataset(data, "validation"), 24)
    w = np.random.default_rng(1).normal(size=(16 * 16, 12))
    scores = lambda p, b: b["audio"].reshape(len(b["audio"]), -1) @ w  # noqa: E731
    got = dict(EVALUATORS.get("multilabel_map")({"logits": scores}, data=data, num_examples=24,
                                                batch_size=8).run(None))
    want = multilabel_metrics(scores(None, arrays), np.eye(12, dtype=bool)[arrays["label"]])
    assert got == pytest.approx(want)
    with pytest.raises(KeyError, match="no targets 'tags'"):
        list(EVALUATORS.get("multilabel_map")({"logits": scores}, data=data, num_examples=8, targets="tags").run(None))


def test_video_text_retrieval_and_zero_shot_read_the_videos():
    """Streamed with input_key="video" equals the metrics computed on the whole split at once."""
    data = dict(VIDEOS, view="video_caption")
    arrays = eval_arrays(build_dataset(data, "validation"), 24)
    rng = np.random.default_rng(2)
    wv, wt = rng.normal(size=(8 * 16 * 16 * 3, 6)), rng.normal(size=(40, 6))
    fns = {"encode_image": lambda p, b: b["video"].reshape(len(b["video"]), -1) @ wv,
           "encode_text": lambda p, b: wt[b["text"]].sum(1)}
    got = dict(EVALUATORS.get("retrieval")(fns, data=data, num_examples=24, batch_size=8, input_key="video").run(None))
    sim = fns["encode_image"](None, arrays) @ fns["encode_text"](None, arrays).T
    assert got["i2t_r5"] == recall_at_k(sim)["r5"] and got["t2i_r1"] == recall_at_k(sim.T)["r1"]
    with pytest.raises(KeyError, match="no 'image' in the evaluation batch"):
        list(EVALUATORS.get("retrieval")(fns, data=data, num_examples=8).run(None))
    keyed = dict(EVALUATORS.get("retrieval")(fns, data=data, num_examples=24, batch_size=8, input_key="video",
                                             attribute_keys=("color", "direction")).run(None))
    assert (keyed["t2i_top1_color"], keyed["chance_top1_color"]) == top1_attribute_agreement(sim, arrays["color"])
    with pytest.raises(KeyError, match="attribute_keys: no 'size'"):
        list(EVALUATORS.get("retrieval")(fns, data=data, num_examples=8, input_key="video",
                                         attribute_keys=("size",)).run(None))
    zs = dict(EVALUATORS.get("clip_zeroshot")(fns, data=data, num_examples=24, batch_size=8, input_key="video",
                                              view="video_label", class_names="data", templates="data").run(None))
    bundle = build_dataset(dict(data, view="video_label"), "validation")
    prompts = bundle.info["tokenizer"].encode_batch([p for c in bundle.info["class_prompts"] for p in c],
                                                   bundle.info["max_len"])["ids"]
    classes = ensemble_class_embeddings(fns["encode_text"](None, {"text": prompts}).reshape(8, 2, 6))
    zi = fns["encode_image"](None, arrays)
    logits = zi / np.linalg.norm(zi, axis=-1, keepdims=True) @ classes.T
    assert zs["accuracy"] == pytest.approx(topk_accuracy(logits, arrays["label"], 1))
    assert zs["num_classes"] == 8 and zs["num_templates"] == 2


def test_the_video_text_config_evaluates_its_dual_encoder_on_videos():
    """configs/timesformer_clip_tiny.py (shrunk): the dual encoder takes the video tower, and its
    retrieval and zero-shot evaluators run on the model's predict functions."""
    from vlfm.core.sharding import make_mesh
    from vlfm.core.tree import strip_boxes
    from vlfm.models import build_model
    from vlfm.train.config import load_config
    from vlfm.train.evaluation import build_evaluators, make_predict_fns

    c = load_config("configs/timesformer_clip_tiny.py")
    c.model.image.update(width=16, depth=1, num_heads=2, mlp_dim=32, scan=False)
    c.model.text.update(width=16, depth=1, num_heads=2, mlp_dim=32, scan=False)
    c.data.update(image_size=16, num_examples=16)
    for name in c.evals:
        c.evals[name].update(num_examples=16, batch_size=16)
    model = build_model(c.model)
    batch = eval_arrays(build_dataset(dict(c.data), "validation"), 1)
    batch = {k: batch[k] for k in ("video", "text", "text_mask")}
    shapes = strip_boxes(jax.eval_shape(model.init, jax.random.key(0), batch)["params"])
    rng = np.random.default_rng(0)  # random values of the right shapes: no compiled init (it costs seconds)
    params = jax.tree.map(lambda a: rng.normal(0.0, 0.1, a.shape).astype(a.dtype), shapes)
    assert params["image_tower"]["encoder"]["layer_0"]["temporal_attn"]["query"]["kernel"].shape == (16, 2, 8)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])  # one device: one small compile per function
    evaluators = build_evaluators(c, make_predict_fns(model, mesh))
    metrics = {f"{n}/{k}": v for n, (ev, _) in evaluators.items() for k, v in ev.run(params)}
    assert metrics["retrieval/chance_r1"] == 1 / 16 and 0 <= metrics["retrieval/i2t_r10"] <= 1
    assert {f"retrieval/t2i_top1_{k}" for k in ("color", "shape", "direction")} <= set(metrics)  # attribute_keys
    assert metrics["zeroshot/num_classes"] == 8 and 0 <= metrics["zeroshot/accuracy"] <= 1


def test_top1_attribute_agreement_counts_the_captions_whose_best_image_shares_the_value():
    values = np.array([0, 0, 1, 2])  # images 0 and 1 share a value
    sim = np.array([[0.9, 0.8, 0.0, 0.0],  # images x captions: caption 1's best image is image 0 (same value)
                    [0.1, 0.2, 0.0, 0.0],
                    [0.0, 0.0, 0.1, 0.9],  # caption 3's best image is image 2 (another value)
                    [0.0, 0.0, 0.0, 0.5]])
    agreement, chance = top1_attribute_agreement(sim, values)
    assert agreement == 0.75  # captions 0, 1, 2 agree; caption 3 does not
    assert chance == pytest.approx((1 / 3 + 1 / 3 + 0 + 0) / 4)  # the other images sharing each value
    with pytest.raises(ValueError, match="not images x captions"):
        top1_attribute_agreement(sim[:3], values)
