"""Data commands.

    python -m vlfm.data train-sentencepiece --input corpus.txt [more.txt ...] --model_prefix out/spm \\
        --vocab_size 32000 [--model_type unigram|bpe] [--lowercase]
    python -m vlfm.data inspect --config configs/x.py [--split train] [--num 4]
    python -m vlfm.data vqa-vocab --annotations v2_mscoco_train2014_annotations.json [more.json] \\
        [--size 3129] [--field answers|multiple_choice_answer] --out answers.json

``train-sentencepiece`` writes ``<model_prefix>.model`` / ``.vocab`` (pad 0, unk 1, bos 2, eos 3,
``<mask>`` 4), loadable with ``tokenizer=dict(kind="sentencepiece", path=...)``. ``inspect`` prints the
shapes and dtypes of a few examples of a config's dataset and the bad-data counters. ``vqa-vocab``
writes the top answers of VQAv2 annotation files (normalised, most frequent first) as a JSON list: the
``answers`` file of the ``vqav2`` dataset and the classes of a VQA head.
"""

from __future__ import annotations

import argparse
import json
import sys

from absl import flags

from vlfm.data import build_dataset
from vlfm.data.pipeline import pipeline_stats
from vlfm.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
from vlfm.data.vqav2 import build_vocabulary
# An entry point, above every package: it reads a training config (the layering test exempts __main__ modules).
from vlfm.train.config import load_config


def _train_sentencepiece(args: argparse.Namespace) -> None:
    path = train_sentencepiece(args.input, args.model_prefix, args.vocab_size, model_type=args.model_type,
                               character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                               num_threads=args.num_threads, lowercase=args.lowercase)
    tok = SentencePieceTokenizer.from_file(path)
    print(json.dumps({"model": path, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "unk_id": tok.unk_id,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "mask_id": tok.mask_id}))


def _inspect(args: argparse.Namespace, overrides: list[str]) -> None:
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    config = load_config(args.config, overrides)
    bundle = build_dataset(config.data, args.split)
    it = iter(bundle.example_stream(seed=0, num_epochs=1, shuffle=False))
    for i in range(args.num):
        try:
            example = next(it)
        except StopIteration:
            break
        print(i, {k: (list(getattr(v, "shape", ())), str(getattr(v, "dtype", type(v).__name__)))
                  for k, v in example.items()})
    print(json.dumps(pipeline_stats(it.get_state())))
    it.close()


def _vqa_vocab(args: argparse.Namespace) -> None:
    answers = build_vocabulary(args.annotations, args.size, args.field)
    with open(args.out, "w") as f:
        json.dump(answers, f)
    print(json.dumps({"out": args.out, "answers": len(answers), "first": answers[:5]}))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlfm.data")
    sub = parser.add_subparsers(dest="command", required=True)
    spm = sub.add_parser("train-sentencepiece", help="train a SentencePiece model on text files")
    spm.add_argument("--input", nargs="+", required=True, help="text files, one sentence/document per line")
    spm.add_argument("--model_prefix", required=True)
    spm.add_argument("--vocab_size", type=int, required=True)
    spm.add_argument("--model_type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    spm.add_argument("--character_coverage", type=float, default=1.0)
    spm.add_argument("--max_sentences", type=int, default=2_000_000)
    spm.add_argument("--num_threads", type=int, default=2)
    spm.add_argument("--lowercase", action="store_true")
    ins = sub.add_parser("inspect", help="print a few examples of a config's dataset")
    ins.add_argument("--config", required=True)
    ins.add_argument("--split", default="train")
    ins.add_argument("--num", type=int, default=4)
    vocab = sub.add_parser("vqa-vocab", help="the top answers of VQAv2 annotation files, as a JSON list")
    vocab.add_argument("--annotations", nargs="+", required=True)
    vocab.add_argument("--size", type=int, default=3129)
    vocab.add_argument("--field", default="answers", choices=("answers", "multiple_choice_answer"))
    vocab.add_argument("--out", required=True)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("train-sentencepiece", "vqa-vocab"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        (_train_sentencepiece if args.command == "train-sentencepiece" else _vqa_vocab)(args)
    else:
        bad = [a for a in rest if not a.startswith("--config.")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        _inspect(args, [a[len("--config."):] for a in rest])


if __name__ == "__main__":
    main(sys.argv[1:])
