#!/usr/bin/env bash
# The "4M" image-text pretraining set of ViLT, METER and BridgeTower (COCO captions, Visual Genome
# region captions, SBU Captions, Conceptual Captions 3M) as webdataset shards and a TFDS build under $ROOT.
# Run once where the data lives, from a folder holding the downloaded metadata:
#   Train_GCC-training.tsv (Conceptual Captions), sbu-captions-all.json (SBU Captions),
#   region_descriptions.json and the VG_100K / VG_100K_2 image folders (visualgenome.org).
# Needs `pip install img2dataset` and `pip install -e ".[tfds_prepare]"`.
#   ROOT=/shared/data bash launch/prepare_4m.sh
set -euo pipefail
: "${ROOT:?set ROOT to the data folder}"
export ROOT

# GCC = CC3M: Train_GCC-training.tsv (caption, url; no header) from the Conceptual Captions site
head -1 Train_GCC-training.tsv | grep -q '^caption' || sed -i '1s/^/caption\turl\n/' Train_GCC-training.tsv
img2dataset --url_list Train_GCC-training.tsv --input_format tsv --url_col url --caption_col caption \
    --output_format webdataset --output_folder $ROOT/cc3m --processes_count 16 --thread_count 64 \
    --image_size 640 --resize_mode keep_ratio
# SBU: sbu-captions-all.json (parallel lists `image_urls`, `captions`) from the SBU Captions site
python -c "import csv, json; d = json.load(open('sbu-captions-all.json')); w = csv.writer(open('sbu.tsv', 'w'), delimiter='\t'); w.writerow(['url', 'caption']); w.writerows(zip(d['image_urls'], d['captions']))"
img2dataset --url_list sbu.tsv --input_format tsv --url_col url --caption_col caption \
    --output_format webdataset --output_folder $ROOT/sbu --processes_count 16 --thread_count 64 \
    --image_size 640 --resize_mode keep_ratio
# COCO captions (Karpathy splits, 5 captions per image; a random one per step in training)
tfds build coco_captions --data_dir $ROOT/tfds
# VG: region_descriptions.json and the VG_100K / VG_100K_2 image folders from visualgenome.org.
# img2dataset reads URLs only, so write the shards directly: one sample per image, its region
# phrases in KEY.json ({"captions": [...]}; a random one per step in training).
python - <<'PY'
import io, json, os, tarfile
root, regions = os.environ["ROOT"], json.load(open("region_descriptions.json"))
os.makedirs(f"{root}/vg", exist_ok=True)
def add(tar, name, data):
    info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
for start in range(0, len(regions), 1000):
    with tarfile.open(f"{root}/vg/{start // 1000:05d}.tar", "w") as tar:
        for entry in regions[start:start + 1000]:
            image_id = entry["id"]
            path = next(p for p in (f"VG_100K/{image_id}.jpg", f"VG_100K_2/{image_id}.jpg") if os.path.exists(p))
            add(tar, f"{image_id}.jpg", open(path, "rb").read())
            add(tar, f"{image_id}.json", json.dumps({"captions": [r["phrase"] for r in entry["regions"]]}).encode())
PY
