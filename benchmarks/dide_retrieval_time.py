"""Retrieval inference time of a DiDE dual-encoder student against its fusion teacher; prints JSON.

    python benchmarks/dide_retrieval_time.py [--num_examples 500] [--teacher_texts 20] [--repeats 3]

Scores every (image, text) pair of the first ``--num_examples`` held-out ``shapes_snli_ve`` examples
with the models of ``configs/dide_tiny.py`` (student) and its ViLT teacher (random weights: the time
does not depend on them). The teacher runs one fused pass per pair (its classifier logits as the
score), so it is timed on all images against the first ``--teacher_texts`` texts and its full time
extrapolated linearly in the number of texts (``teacher_s``, measured: ``teacher_measured_s``). The
student encodes each image and text once and scores all pairs either by the dot product of its
contrastive embeddings (``student_dot_s``) or through its interaction head on the cached pooled vectors
(``student_interaction_s``). Each variant is compiled and run once before timing, then the median of
``--repeats`` runs is reported.

Measured 2026-12-06 on a 2-core CPU shared with other jobs (load about 14), ``python
benchmarks/dide_retrieval_time.py --num_examples 500 --teacher_texts 10 --repeats 3``: teacher 22.3 s
for 500 x 10 pairs, so about 1,116 s for all 500 x 500; student 1.85 s with embedding dot products
(604x faster), 4.40 s through the interaction head on every pair (253x faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlfm.data.builtin_tasks import shapes_snli_ve
from vlfm.models import build_model
from vlfm.train.config import load_config_file


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_examples", type=int, default=500)
    parser.add_argument("--teacher_texts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500, help="pairs per teacher / interaction-head call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    here = os.path.join(os.path.dirname(__file__), "..", "configs")
    cfg = load_config_file(os.path.join(here, "dide_tiny.py"))
    teacher_cfg = dict(cfg.teachers.vilt.model.to_dict(), attention_layers=(), attention_outputs=("probs",))
    student_cfg = dict(cfg.model.to_dict(), distill_attention=False)
    n, k = args.num_examples, min(args.teacher_texts, args.num_examples)
    bundle = shapes_snli_ve("validation", num_examples=n)
    rows = [bundle.examples[i] for i in range(n)]
    data = {key: jnp.asarray(np.stack([r[key] for r in rows])) for key in ("image", "text", "text_mask")}
    teacher, student = build_model(teacher_cfg), build_model(student_cfg)
    one = {key: v[:2] for key, v in data.items()}
    tp = jax.jit(teacher.init)(jax.random.key(0), one)["params"]
    sp = jax.jit(student.init)(jax.random.key(1), one)["params"]

    @jax.jit
    def teacher_pairs(images, ids, mask):
        return teacher.apply({"params": tp}, {"image": images, "text": ids, "text_mask": mask})["logits"][:, 0]

    def teacher_scores():  # all images against the first k texts, one fused pass per pair
        img = jnp.repeat(data["image"], k, axis=0)
        ids, mask = jnp.tile(data["text"][:k], (n, 1)), jnp.tile(data["text_mask"][:k], (n, 1))
        out = [teacher_pairs(img[s:s + args.batch], ids[s:s + args.batch], mask[s:s + args.batch])
               for s in range(0, n * k, args.batch)]
        return jnp.concatenate(out)

    encode = jax.jit(lambda b: student.apply({"params": sp}, b))

    def student_dot():
        out = encode(data)
        return out["image_embed"] @ out["text_embed"].T

    @jax.jit
    def interaction(u, v):
        return student.apply({"params": sp}, [(u, v)], method=lambda m, p: m.cls_head(p))[:, 0]

    def student_interaction():
        out = encode(data)
        u, v = out["image_pooled"], out["text_pooled"]
        uu, vv = jnp.repeat(u, n, axis=0), jnp.tile(v, (n, 1))
        return jnp.concatenate([interaction(uu[s:s + args.batch], vv[s:s + args.batch])
                                for s in range(0, n * n, args.batch)])

    measured = _median_time(teacher_scores, args.repeats)
    result = dict(
        date=datetime.date.today().isoformat(), device=str(jax.devices()[0]), num_examples=n, teacher_texts=k,
        teacher_measured_s=measured, teacher_s=measured * n / k,
        student_dot_s=_median_time(student_dot, args.repeats),
        student_interaction_s=_median_time(student_interaction, args.repeats))
    result["speedup_dot"] = result["teacher_s"] / result["student_dot_s"]
    result["speedup_interaction"] = result["teacher_s"] / result["student_interaction_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
