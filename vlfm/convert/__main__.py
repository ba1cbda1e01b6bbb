"""Checkpoint conversion between HF (or open_clip) directories and vlfm params exports.

    python -m vlfm.convert import HF_DIR OUT_DIR [--no-scan]
        -> OUT_DIR/params (vlfm params export) and OUT_DIR/model_config.json; a directory with
           open_clip_config.json + open_clip_model.safetensors (open_clip's layout) imports as CLIP or CoCa
    python -m vlfm.convert export PARAMS_DIR MODEL_CONFIG_JSON HF_DIR [--open-clip]
    python -m vlfm.convert export WORKDIR HF_DIR [--open-clip]
        -> HF_DIR/config.json and HF_DIR/model.safetensors; a training WORKDIR gives its params export
           (WORKDIR/params) and the model of its resolved config (WORKDIR/config.json, overrides included).
           HF_DIR/vlfm_export.json records the model config, the code's commit and version, and for a
           WORKDIR the run's own record (its full config and the commit it trained with).
           With --open-clip (CLIP or CoCa): open_clip_config.json and open_clip_model.safetensors, which
           open_clip.create_model_and_transforms("local-dir:HF_DIR") loads (with the same vlfm_export.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vlfm.convert.hf import load_hf, save_hf
from vlfm.convert.open_clip import CONFIG_NAME as OPEN_CLIP_CONFIG
from vlfm.convert.open_clip import load_open_clip, save_open_clip
from vlfm.core.provenance import EXPORT_RECORD
from vlfm.core.run_record import load_workdir_config, read_run_record
from vlfm.core.checkpoint import export_params, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlfm.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF checkpoint directory -> vlfm params export + model config")
    imp.add_argument("hf_dir")
    imp.add_argument("out_dir")
    imp.add_argument("--no-scan", action="store_true", help="per-layer params instead of a scanned stack")
    exp = sub.add_parser("export", help="vlfm params export + model config (or a training workdir) -> HF checkpoint "
                                        "directory", usage="%(prog)s (PARAMS_DIR MODEL_CONFIG_JSON | WORKDIR) HF_DIR")
    exp.add_argument("paths", nargs="+", metavar="PATH",
                     help="PARAMS_DIR MODEL_CONFIG_JSON HF_DIR, or WORKDIR HF_DIR")
    exp.add_argument("--open-clip", action="store_true", help="write an open_clip CLIP or CoCa directory instead")
    args = parser.parse_args(argv)
    if args.command == "export" and len(args.paths) not in (2, 3):
        exp.error(f"expected PARAMS_DIR MODEL_CONFIG_JSON HF_DIR or WORKDIR HF_DIR, got {len(args.paths)} paths")

    if args.command == "import":
        if os.path.exists(os.path.join(args.hf_dir, OPEN_CLIP_CONFIG)):
            model_config, params = load_open_clip(args.hf_dir, scan=not args.no_scan)
        else:
            model_config, params = load_hf(args.hf_dir, scan=not args.no_scan)
        os.makedirs(args.out_dir, exist_ok=True)
        export_params(params, os.path.join(args.out_dir, "params"))
        with open(os.path.join(args.out_dir, "model_config.json"), "w") as f:
            json.dump(model_config, f, indent=2)
        print(f"wrote {args.out_dir}/params and {args.out_dir}/model_config.json ({model_config['name']})")
    else:
        run_record = None
        if len(args.paths) == 2:  # a training workdir: its params export and resolved config
            workdir, hf_dir = args.paths
            params_dir, model_config = os.path.join(workdir, "params"), load_workdir_config(workdir).model.to_dict()
            run_record = read_run_record(workdir)  # the run's config, commit and version, as it wrote them
        else:
            params_dir, model_config_path, hf_dir = args.paths
            with open(model_config_path) as f:
                model_config = json.load(f)
        if args.open_clip:
            save_open_clip(model_config, load_params(params_dir), hf_dir, run_record=run_record)
            print(f"wrote {hf_dir}/{OPEN_CLIP_CONFIG}, the open_clip weights and {hf_dir}/{EXPORT_RECORD}")
        else:
            save_hf(model_config, load_params(params_dir), hf_dir, run_record=run_record)
            print(f"wrote {hf_dir}/config.json, {hf_dir}/model.safetensors and {hf_dir}/{EXPORT_RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
