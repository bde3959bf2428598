#!/usr/bin/env bash
# Real faces at CPU scale: align -> teacher -> five students -> LFW View 1 eval -> report.
#
#     bash bench/cpu_scale_experiment.sh            # everything, from scratch (resumable)
#     STAGES="eval report" bash bench/cpu_scale_experiment.sh
#     SEEDS=0 STUDENTS="plain all" bash bench/cpu_scale_experiment.sh     # a subset
#
# Data comes from ../shared/data (read-only; see its README).  Outputs go to runs/cpu_scale/
# (git-ignored): aligned faces, the training tree of symlinks, one run directory per model,
# results.json, the report and timings.tsv (wall seconds of every stage).  Every stage is
# resumable: alignment skips done files and training continues from its last checkpoint.
# Every student is trained once per seed in SEEDS (the seed drives initialisation, sampling
# and degradations); the teacher is trained once.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/data}
OUT=runs/cpu_scale
ALIGNED=$OUT/aligned
STAGES=${STAGES:-"align teacher students eval report"}
STUDENTS=${STUDENTS:-"plain hinton triplet hrlr all"}
SEEDS=${SEEDS:-"0 1"}
mkdir -p "$OUT"
TIMINGS=$OUT/timings.tsv

timed() {   # timed NAME COMMAND...: run COMMAND, append "NAME<TAB>seconds" to timings.tsv
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$TIMINGS"
}

stage() { [[ " $STAGES " == *" $1 "* ]]; }

student_dir() {   # student_dir METHOD SEED: the run directory (seed 0 keeps the plain name)
    if (( $2 == 0 )); then echo "$OUT/student_$1"; else echo "$OUT/student_$1_seed$2"; fi
}

if stage align; then
    timed align_lfw facekd align "$DATA/lfw-view1/images" "$ALIGNED/lfw" --workers 2 --no-face center --no-progress
    timed align_orl facekd align "$DATA/orl" "$ALIGNED/orl" --workers 2 --no-progress
    timed align_celeba facekd align "$DATA/celeba-subset" "$ALIGNED/celeba" --workers 2 --no-progress
    timed align_cfp facekd align "$DATA/cfp/Data/Images" "$ALIGNED/cfp" --workers 2 --no-progress
fi

# The training tree: one identity folder per person, prefixed by dataset (no LFW: it is only evaluated).
# CFP keeps frontal/ and profile/ subfolders; the folder source reads images recursively per identity.
mkdir -p "$OUT/train"
for set in celeba cfp orl; do
    for dir in "$ALIGNED/$set"/*/; do
        link="$OUT/train/${set}_$(basename "$dir")"
        [[ -e $link ]] || ln -s "$(realpath "$dir")" "$link"
    done
done

if stage teacher; then
    timed teacher facekd train-teacher --config configs/cpu_teacher.yaml --resume --set train.progress=false
fi

if stage students; then
    for seed in $SEEDS; do
        for s in $STUDENTS; do
            timed "student_${s}_seed$seed" facekd train-student --config "configs/cpu_student_$s.yaml" --resume \
                --set train.progress=false --set seed="$seed" --set output_dir="$(student_dir "$s" "$seed")"
        done
    done
fi

LFW="--val lfw:$DATA/lfw-view1/pairsDevTrain.txt --val lfw:$DATA/lfw-view1/pairsDevTest.txt"
EVAL_MODELS=${EVAL_MODELS:-"teacher $STUDENTS"}
EVAL_TAG=${EVAL_TAG:-all}     # results_$EVAL_TAG.json; the report merges every results_*.json
EVAL_AMP=${EVAL_AMP:-bf16}    # bf16 autocast: ~3x faster embedding on AMX CPUs
if stage eval; then
    models=()
    for m in $EVAL_MODELS; do
        if [[ $m == teacher ]]; then
            models+=(--model "path=$OUT/teacher/best.pt,role=teacher,label=teacher IResNet-18/2 56px")
        else
            role=distilled; [[ $m == plain ]] && role=baseline
            for seed in $SEEDS; do
                models+=(--model "path=$(student_dir "$m" "$seed")/best.pt,role=$role,label=MobileFaceNet $m seed $seed")
            done
        fi
    done
    timed "eval_$EVAL_TAG" facekd eval "${models[@]}" $LFW --val-option root=$ALIGNED/lfw \
        --val-option align=none --sizes 112,56,28,14 --amp "$EVAL_AMP" --out "$OUT/results_$EVAL_TAG.json" \
        --no-progress
fi

if stage report; then
    timed report facekd report "$OUT"/results_*.json --out "$OUT/report" \
        --title "facekd CPU-scale distillation: LFW View 1"
    python3 bench/results_table.py --seed-means "$OUT"/results_*.json | tee "$OUT/table.md"
fi

echo "== wall time per stage (s), $TIMINGS"
cat "$TIMINGS"
runs=()
for s in $STUDENTS; do
    for seed in $SEEDS; do
        dir=$(student_dir "$s" "$seed")
        [[ -f $dir/metrics.jsonl ]] && runs+=("$dir")
    done
done
if (( ${#runs[@]} )); then
    echo "== cost of a training step relative to the plain student"
    python3 bench/step_cost.py "${runs[@]}"
fi
