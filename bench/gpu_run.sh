#!/usr/bin/env bash
# One prepared GPU window for the photo model: carry Tiny ImageNet's shards over, profile 30 steps, train from the
# current photo model (--init) for a --time-budget sized to the call, probe shard 6 -> 7 on the GPU, export
# --weights fp16, and bring back the model, the slim checkpoint, metrics.jsonl, the profile and the figures.
#
# Here, once:   bench/gpu_run.sh prepare       (copies the shards from ../shared into .gpu/a .gpu/b .gpu/c .gpu/d)
# There, four calls back to back while the machine is warm (what a call leaves stays ~30 s), each carrying one
# folder (the tree, ~24 MB, travels too; a call takes 64 MiB in all):
#   STAGE=carry bench/gpu_run.sh    carry .gpu/a     (shards 0-1)     then .gpu/b (2-3), .gpu/c (4-5)
#   bench/gpu_run.sh                carry .gpu/d     (shards 6-7: the run, about 9 minutes)
#   STAGE=throughput bench/gpu_run.sh              (while still warm: the old and the new step's pairs/s and MFU in
#                                                   one command, bench/train_throughput.py; brings back one JSON)
# $OUT then holds at most 8 files of at most 15 MiB: figures.json, profile.json, metrics.jsonl, run.log,
# model.tar.part-* (the exported model directory) and last.pt[.part-*] (the run, slim: simclr train --resume).
# Back here: cat model.tar.part-* | tar -x -C model_repository   (the model is named simclr_resnet18_photo_next)
#
# Settings (environment): CARRY (.gpu), WORK (/tmp/simclr-gpu), DEVICE (cuda), BUDGET (seconds of training: 240;
# the profile and the run both compile first),
# BATCH (1024), WORKERS (cores - 1), INIT (the default photo model), PROFILE_STEPS (30), EXPORT_SIZE (96),
# MIN_SHARDS (7 training shards), PYTHON (python3), TRAIN_ARGS (more simclr train options, e.g. "--blur-scaled"),
# MODES (the throughput stage's steps: reference,fast,compiled,cudagraphs), THROUGHPUT_STEPS (20), REPEATS (3),
# WARMUP (untimed steps: 10 before the profile, 5 before each throughput mode).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
CARRY=${CARRY:-.gpu} WORK=${WORK:-/tmp/simclr-gpu} DEVICE=${DEVICE:-cuda} BUDGET=${BUDGET:-240}
BATCH=${BATCH:-1024} WORKERS=${WORKERS:-$(($(nproc) - 1))} INIT=${INIT:-model_repository/simclr_resnet18_photo}
PROFILE_STEPS=${PROFILE_STEPS:-30} EXPORT_SIZE=${EXPORT_SIZE:-96} MIN_SHARDS=${MIN_SHARDS:-7}
SHARED=${SHARED:-../shared/data/tinyimagenet} NAME=simclr_resnet18_photo_next PYTHON=${PYTHON:-python3}
simclr() { "$PYTHON" -m simclr "$@"; }

if [ "${1:-}" = prepare ]; then  # here: four folders of at most two shards each
    for pair in "a 0 1" "b 2 3" "c 4 5" "d 6 7"; do
        set -- $pair
        mkdir -p "$CARRY/$1"
        cp "$SHARED/tinyimagenet-train-$2.tar.xz" "$SHARED/tinyimagenet-train-$3.tar.xz" "$CARRY/$1/"
    done
    du -sh "$CARRY"/*
    exit 0
fi

# Every call: move what it carried out of the tree (the next call's tree replaces it). Shard 7 is the test split:
# it never joins the training shards.
mkdir -p "$WORK/train" "$WORK/test"
for shard in "$CARRY"/*/tinyimagenet-train-*.tar.xz; do
    [ -e "$shard" ] || continue
    case "$shard" in *-7.tar.xz) mv "$shard" "$WORK/test/" ;; *) mv "$shard" "$WORK/train/" ;; esac
done
ls "$WORK/train" "$WORK/test"
[ "${STAGE:-run}" = carry ] && exit 0
if [ "${STAGE:-run}" = throughput ]; then
    OUT=${OUT:-$WORK/out}
    mkdir -p "$OUT"
    "$PYTHON" bench/train_throughput.py --device "$DEVICE" --preset photo \
        --data "$WORK/train/tinyimagenet-train-0.tar.xz" --batch "$BATCH" --workers "$WORKERS" --augment-images 0 \
        --modes "${MODES:-reference,fast,compiled,cudagraphs}" --steps "${THROUGHPUT_STEPS:-20}" \
        --warmup "${WARMUP:-5}" --repeats "${REPEATS:-3}" --out "$OUT/train_throughput.json"
    exit 0
fi

shards=$(ls "$WORK/train" | wc -l)
[ "$shards" -ge "$MIN_SHARDS" ] || { echo "gpu_run: $shards training shards in $WORK/train, $MIN_SHARDS needed" >&2; exit 1; }
[ -e "$WORK/test/tinyimagenet-train-7.tar.xz" ] && [ -e "$WORK/train/tinyimagenet-train-6.tar.xz" ] \
    || { echo "gpu_run: the probe needs shards 6 (train) and 7 (test)" >&2; exit 1; }
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT"

window() {

# The probe's labelled folders (train/<wnid>/...): shard 6 -> probe/train, shard 7 -> probe/test, while we profile.
"$PYTHON" - "$WORK" <<'EOF' &
import sys, tarfile
from pathlib import Path
work = Path(sys.argv[1])
for shard, split in (("train/tinyimagenet-train-6.tar.xz", "train"), ("test/tinyimagenet-train-7.tar.xz", "test")):
    if not (work / "probe" / split).is_dir():
        with tarfile.open(work / shard) as archive:
            archive.extractall(work / "unpacked" / split, filter="data")
        (work / "probe").mkdir(exist_ok=True)
        (work / "unpacked" / split / "train").rename(work / "probe" / split)
EOF
unpacking=$!

"$PYTHON" bench/profile_step.py --data "$WORK/train/tinyimagenet-train-0.tar.xz" --init "$INIT" --batch-size "$BATCH" \
    --workers "$WORKERS" --device "$DEVICE" --steps "$PROFILE_STEPS" --warmup "${WARMUP:-10}" --out "$OUT/profile.json" > /dev/null

rm -rf "$WORK/run"
# The budget counts from the start of training; SIGTERM at a minute past it still leaves a saved, resumable run.
timeout -s TERM $((BUDGET + 60)) "$PYTHON" -m simclr train --data "$WORK/train" --preset photo --init "$INIT" \
    --batch-size "$BATCH" --epochs 1000 --time-budget "$BUDGET" --workers "$WORKERS" --device "$DEVICE" \
    --save-every-minutes 2 --out "$WORK/run" --json ${TRAIN_ARGS:-} > "$WORK/train.json" || true
wait "$unpacking"
rm -f "$WORK"/probe-*.json
trained_at=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["augment"]["image_size"])' \
    "$WORK/run/config.json")
for size in "$trained_at" "$EXPORT_SIZE"; do  # the default's figures are known at both (bench/results/input_size.json)
    [ -e "$WORK/probe-$size.json" ] || simclr probe --train "$WORK/probe/train" --test "$WORK/probe/test" \
        --checkpoint "$WORK/run" --image-size "$size" --device "$DEVICE" --json > "$WORK/probe-$size.json"
done
rm -rf "$WORK/repo"
simclr export "$WORK/run" --repo "$WORK/repo" --name "$NAME" --image-size "$EXPORT_SIZE" --weights fp16 \
    --json > "$WORK/export.json"
"$PYTHON" bench/gpu_figures.py --work "$WORK" --profile "$OUT/profile.json" --out "$OUT/figures.json"

# Back within the return limits: files of at most 15 MiB.
cp "$WORK/run/metrics.jsonl" "$OUT/"
tar -c -C "$WORK/repo" "$NAME" | split -b 15M -d - "$OUT/model.tar.part-"
simclr slim "$WORK/run" --out "$OUT/last.pt" --part-size 15MiB
}

window 2>&1 | tee "$WORK/run.log"  # the whole log, also on the call's output
status=${PIPESTATUS[0]}
tail -c 2000000 "$WORK/run.log" > "$OUT/run.log"
ls -l "$OUT"
exit "$status"
