#!/bin/bash
# Unlabelled faces at scale (issue 34, docs/DATA.md): All-Age-Faces aligned from its 49 key points,
# FairFace aligned with MTCNN (borders 0.25 then 0), then the leak filter against LFW View 1 + CFP.
# Every step is resumable: re-run the script and finished work is skipped (aligned files exist, the
# embedding store keeps every face the teacher has seen).  CPU heavy: runs under nice -n 19.
#
#   AAF_REPO=.../All-Age-Faces-Dataset FAIRFACE_REPO=.../EthnicityDetection OUT=runs/unlabelled \
#   LFW=runs/cpu_scale/aligned/lfw bash bench/unlabelled_faces.sh
#
# AAF_REPO / FAIRFACE_REPO: git clones (or bare mirrors) of middleyuan/All-Age-Faces-Dataset @ 28741a75
# and sumanvithaeadala/EthnicityDetection @ 9b001ff2.  LFW: LFW View 1 aligned (`facekd align
# ../shared/data/lfw-view1/images DIR --no-face center`); CFP is aligned here when CFP_ALIGNED is unset.
# STEPS (default "sources aaf fairface cfp filter") picks steps; FAIRFACE_PARTS (default "val train") which
# FairFace parts are aligned and filtered (val alone: 5,000 photos, half an hour less of MTCNN on 2 cores);
# THREADS (default 1) the threads of each step; ALIGN_WORKERS (default 2) the MTCNN processes of each
# `facekd align` (one torch thread each: 2 keep both cores busy, where one process used ~1.2 of them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/unlabelled}
DATA=${DATA:-../shared/data}
LFW=${LFW:-runs/cpu_scale/aligned/lfw}
CFP_ALIGNED=${CFP_ALIGNED:-$OUT/leak_reference/cfp}
STEPS=${STEPS:-sources aaf fairface cfp filter}
FAIRFACE_PARTS=${FAIRFACE_PARTS:-val train}
AAF_COMMIT=28741a75
FAIRFACE_COMMIT=9b001ff2
NICE="nice -n 19"
THREADS=${THREADS:-1}   # 2 on an idle 2-core machine: the filter embeds ~1.9x faster
ALIGN_WORKERS=${ALIGN_WORKERS:-2}
export OMP_NUM_THREADS=$THREADS FACEKD_THREADS=$THREADS

step() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT/sources"

if step sources; then
  # the photos as the repositories hold them at the named commits (never committed to facekd)
  [[ -d $OUT/sources/all_age_faces ]] || {
    git -C "$AAF_REPO" archive "$AAF_COMMIT" "All-Age-Faces Dataset/original images" "All-Age-Faces Dataset/key points" \
      | tar -x -C "$OUT/sources" && mv "$OUT/sources/All-Age-Faces Dataset" "$OUT/sources/all_age_faces"; }
  [[ -d $OUT/sources/fairface ]] || {
    git -C "$FAIRFACE_REPO" archive "$FAIRFACE_COMMIT" fair_face | tar -x -C "$OUT/sources" \
      && mv "$OUT/sources/fair_face" "$OUT/sources/fairface"; }
fi
if step aaf; then
  $NICE python3 -m facekd align "$OUT/sources/all_age_faces/original images" "$OUT/all_age_faces" \
    --landmarks intraface49 --landmarks-dir "$OUT/sources/all_age_faces/key points" --quality 95 --no-progress \
    --workers "$ALIGN_WORKERS"
fi
if step fairface; then
  for part in $FAIRFACE_PARTS; do
    $NICE python3 -m facekd align "$OUT/sources/fairface/$part" "$OUT/fairface/$part" --pad 0.25,0 --quality 95 \
      --no-progress --workers "$ALIGN_WORKERS"
  done
fi
if step cfp && [[ $CFP_ALIGNED == "$OUT/leak_reference/cfp" ]]; then
  $NICE python3 -m facekd align "$DATA/cfp/Data/Images" "$CFP_ALIGNED" --no-face center --no-progress \
    --workers "$ALIGN_WORKERS"
fi
if step filter; then
  train="all_age_faces=$OUT/all_age_faces"
  for part in $FAIRFACE_PARTS; do [[ -d $OUT/fairface/$part ]] && train="$train fairface_$part=$OUT/fairface/$part"; done
  # shellcheck disable=SC2086
  $NICE python3 -m facekd leak-filter $train --reference "lfw=$LFW" --reference "cfp=$CFP_ALIGNED" \
    --out "$OUT/leak_filter/run" --cache "$OUT/leak_filter/embeddings" --links
fi
