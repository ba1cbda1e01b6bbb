"""Checkpoint conversion between HF directories and vlfm params exports.

    python -m vlfm.convert import HF_DIR OUT_DIR [--no-scan]
        -> OUT_DIR/params (vlfm params export) and OUT_DIR/model_config.json
    python -m vlfm.convert export PARAMS_DIR MODEL_CONFIG_JSON HF_DIR
        -> HF_DIR/config.json and HF_DIR/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vlfm.convert.hf import load_hf, save_hf
from vlfm.core.checkpoint import export_params, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlfm.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF checkpoint directory -> vlfm params export + model config")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument("--no-scan", action="store_true", help="per-layer params instead of a scanned stack")
    exp = sub.add_parser("export", help="vlfm params export + model config -> HF checkpoint directory")
    exp.add_argument("params_dir")
    exp.add_argument("model_config")
    exp.add_argument("hf_dir")
    args = parser.parse_args(argv)

    if args.command == "import":
        model_config, params = load_hf(args.hf_dir, scan=not args.no_scan)
        os.makedirs(args.out_dir, exist_ok=True)
        export_params(params, os.path.join(args.out_dir, "params"))
        with open(os.path.join(args.out_dir, "model_config.json"), "w") as f:
            json.dump(model_config, f, indent=2)
        print(f"wrote {args.out_dir}/params and {args.out_dir}/model_config.json ({model_config['name']})")
    else:
        with open(args.model_config) as f:
            model_config = json.load(f)
        save_hf(model_config, load_params(args.params_dir), args.hf_dir)
        print(f"wrote {args.hf_dir}/config.json and {args.hf_dir}/model.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
