"""Data commands.

    python -m vlfm.data train-sentencepiece --input corpus.txt [more.txt ...] --model_prefix out/spm \\
        --vocab_size 32000 [--model_type unigram|bpe] [--lowercase]
    python -m vlfm.data vqa-vocab --annotations v2_mscoco_train2014_annotations.json [more.json] \\
        [--size 3129] [--field answers|multiple_choice_answer] --out answers.json

``train-sentencepiece`` writes ``<model_prefix>.model`` / ``.vocab`` (pad 0, unk 1, bos 2, eos 3,
``<mask>`` 4), loadable with ``tokenizer=dict(kind="sentencepiece", path=...)``. ``vqa-vocab``
writes the top answers of VQAv2 annotation files (normalised, most frequent first) as a JSON list: the
``answers`` file of the ``vqav2`` dataset and the classes of a VQA head.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlfm.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
from vlfm.data.vqav2 import build_vocabulary


def _train_sentencepiece(args: argparse.Namespace) -> None:
    path = train_sentencepiece(args.input, args.model_prefix, args.vocab_size, model_type=args.model_type,
                               character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                               num_threads=args.num_threads, lowercase=args.lowercase)
    tok = SentencePieceTokenizer.from_file(path)
    print(json.dumps({"model": path, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "unk_id": tok.unk_id,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "mask_id": tok.mask_id}))


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
    vocab = sub.add_parser("vqa-vocab", help="the top answers of VQAv2 annotation files, as a JSON list")
    vocab.add_argument("--annotations", nargs="+", required=True)
    vocab.add_argument("--size", type=int, default=3129)
    vocab.add_argument("--field", default="answers", choices=("answers", "multiple_choice_answer"))
    vocab.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    (_train_sentencepiece if args.command == "train-sentencepiece" else _vqa_vocab)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
