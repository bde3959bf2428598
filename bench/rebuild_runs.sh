#!/bin/bash
# A new machine: rebuild runs/ from nothing and continue issue 34's label-free chain (docs/DATA.md, "A new
# machine: rebuilding runs/").  runs/ is git-ignored and does not move with the repository; every step
# below skips finished work, so the script is also the way to resume after an interruption.
#
#   AAF_REPO=.../All-Age-Faces-Dataset FAIRFACE_REPO=.../EthnicityDetection bash bench/rebuild_runs.sh
#
# Steps: the evaluation and labelled trees (bench/cpu_scale_experiment.sh, STAGES=align), the aligned,
# leak-filtered unlabelled faces (bench/unlabelled_faces.sh), the chain's starting weights (INIT_COMMIT's
# results/students/distilled.pt, the student CYCLE warm-starts from, when its init_from file is missing), then
# CYCLE's training, two one-thread processes, resumed from its last checkpoint when there is one.  STEPS (default
# "align unlabelled train") picks steps; CYCLE (default c14) the config
# configs/experiments/long_sface/student_regress_<CYCLE>.yaml;
# EPOCHS overrides its train.epochs (a shorter or longer cosine cycle to fit the machine's time).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-align unlabelled train}
CYCLE=${CYCLE:-c14}
INIT_COMMIT=${INIT_COMMIT:-56ab705}   # the commit that shipped cycle 7 as results/students/distilled.pt: the chain's selected
                                      # student, seeded for any cycle whose init_from (a run folder) is missing
CONFIG=configs/experiments/long_sface/student_regress_$CYCLE.yaml
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() { [[ " $STEPS " == *" $1 "* ]]; }

if step align; then
  STAGES=align TEACHER=sface bash bench/cpu_scale_experiment.sh
fi
if step unlabelled; then
  : "${AAF_REPO:?set AAF_REPO to a clone or mirror of middleyuan/All-Age-Faces-Dataset}"
  : "${FAIRFACE_REPO:?set FAIRFACE_REPO to a clone or mirror of sumanvithaeadala/EthnicityDetection}"
  CFP_ALIGNED=runs/cpu_scale/aligned/cfp_test THREADS=2 bash bench/unlabelled_faces.sh
fi
if step train; then
  init=$(sed -n 's/^init_from: *//p' "$CONFIG")
  if [[ -n $init && ! -f $init ]]; then
    mkdir -p "$(dirname "$init")"
    git show "$INIT_COMMIT:results/students/distilled.pt" > "$init"
  fi
  extra=()
  [[ -n ${EPOCHS:-} ]] && extra=(--set "train.epochs=$EPOCHS")
  OMP_NUM_THREADS=1 FACEKD_THREADS=1 torchrun --nproc_per_node 2 -m facekd train-student \
    --config "$CONFIG" --device cpu --resume "${extra[@]}"
fi
