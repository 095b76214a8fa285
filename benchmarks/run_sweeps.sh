#!/usr/bin/env bash
# The truth tables of benchmarks/bench_predict.py (resumable: rerun skips finished runs).
# Digits: EfficientNet-Lite at 32 px, 6 epochs, seeds 0 and 1, held-out validation sets of 500 images
# (benchmarks/make_scenarios.py builds them and the shuffled-label / noise sets that damage a backbone).
# Time on 2 CPU cores: the runs of the committed sweep.json files add up to 3.4 h (the 22 tables before
# issue 15; runs_wall_time_s) plus about 17-25 min per new-family sweep (10-16 runs at 60-95 s each on cores
# shared with other jobs); the damaged backbones' training adds about 20 min. One thread per run.
# Measured 2026-11-29 (nice 19, cores shared with ~7 jobs): tex-noise3 / tex-blur3 21 / 20 min (12 runs each),
# tex-contrast3 / tex-jpeg3 9 min each side by side on a quieter machine, shuffled-tex 11 min (8 runs), each
# two-depth re-scaled sweep 1.5-8.5 min (4 runs), the gratings backbone 4 min; bench_predict.py --run-missing
# then adds the depths diag picks (2 runs each).
# All 89 committed sweeps (benchmarks/results/sweeps/*.json, 2026-11-30 13:05, after the four-seed pass below):
# 1,976 runs (each depth's seeds and the scratch runs), 16.3 h of run time as recorded (runs_wall_time_s; mostly
# on cores shared with other jobs), so about 8-8.5 h on 2 cores two runs at a time. On a quiet machine
# (2026-11-30, two sweeps side by side) a 32 px texture run took 11-27 s: tex-10pc
# 3.0 min, tex-20pc 4.5, tex-lite2 7.3, tex-noise1/5 3.3/3.7; the search's candidate curves (below) 15 min + 9 min
# for the debates. The nine tables added 2026-11-30 06:33-07:17 UTC (two sweeps side by side, nice 19, the cores
# otherwise idle but for diagnoses): each 64 px sweep 8.5-11.5 min (20 runs), each science-image sweep at 32 px
# 5.6-6.9 min (20 runs) -- 1 h 20 min of sweeps, 45 min of wall time; then the science-image ladders, 4.9-8.0 min
# each (20 runs; 07:22-08:14 UTC, 12 sweeps two at a time).
set -eu
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D=.venv/bin/diag
S=runs/scenarios
.venv/bin/python benchmarks/make_scenarios.py --out $S

sweep() {  # NAME TARGET VAL BACKBONE DEPTHS (input size: $SIZE, default 32 px; seeds: $SEEDS, default 0,1)
  $D sweep -t "$2" --val "$3" -b "$4" --preset small --image-size "${SIZE:-32}" --epochs 6 --depths "$5" \
    --seeds "${SEEDS:-0,1}" --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/v2/$1"
}
damage() {  # OUT DATA [--from-scratch] [EPOCHS] [LR]: train every layer on random labels, keep the last weights
  [ -f "$S/$1/last.pt" ] && [ -f "$S/$1/result.json" ] && grep -q '"completed"' "$S/$1/result.json" && return
  $D finetune -t "$S/$2" -b efficientnet_lite0 ${3:-} --freeze 0 --image-size 32 --epochs "${4:-30}" \
    --lr "${5:-0.002}" --weight-decay 0 --augment none --val-fraction 0.1 --keep-checkpoint -q -o "$S/$1" --overwrite
}

sweep mnist-uci samples:uci-digits $S/uci-val efficientnet_lite0 0,3,5,6,7,8,9
sweep mnist-opencv samples:opencv-digits $S/opencv-val efficientnet_lite0 0,3,5,6,7,8,9
sweep mnist-uci-inverted $S/uci-inverted $S/uci-inverted-val efficientnet_lite0 0,3,4,5,6,7,8,9
sweep lite1-uci samples:uci-digits $S/uci-val efficientnet_lite1 0,5,6,7,9
sweep lite2-uci samples:uci-digits $S/uci-val efficientnet_lite2 0,5,6,7,9
damage damaged-light-lite0 mnist-shuffled "" 8
sweep damaged-light-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-light-lite0/last.pt 0,3,5,7,9
damage damaged-lite0 mnist-shuffled
sweep damaged-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-lite0/last.pt 0,3,5,7,9
damage memorizer-lite0 mnist-shuffled --from-scratch
sweep memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/memorizer-lite0/last.pt 0,3,5,7,9
damage noise-memorizer-lite0 noise-shuffled --from-scratch
sweep noise-memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/noise-memorizer-lite0/last.pt 0,3,5,7,9
# Too high a learning rate: the memoriser's recipe at 25 times its learning rate (AdamW 0.05, no weight decay;
# 30 epochs, 3.3 min on 2 cores shared with a test run), then a full sweep (4 min). Negative; weight scale 1.25.
damage hot-memorizer-lite0 mnist-shuffled --from-scratch 30 0.05
sweep hot-memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/hot-memorizer-lite0/last.pt 0,3,5,7,9
# Dead units (make_scenarios.py): the depths include those bench_predict.py --run-missing added.
sweep dead60-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/dead60-lite0.safetensors 0,3,4,5,7,9
sweep dead-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/dead-lite0.safetensors 0,1,2,3,5,9

# A generous budget (30 epochs; negative transfer only): two depths each, one set of from-scratch runs.
sweep30() { $D sweep -t samples:uci-digits --val $S/uci-val -b "$2" --preset small --image-size 32 --epochs 30 \
  --depths "$3" --seeds 0,1 ${4:-} --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/v2/$1"; }
sweep30 noise-memorizer-uci-30ep efficientnet_lite0@$S/noise-memorizer-lite0/last.pt 0,3
sweep30 memorizer-uci-30ep efficientnet_lite0@$S/memorizer-lite0/last.pt 0,3 --no-scratch
sweep30 mnist-uci-30ep efficientnet_lite0 0,6 --no-scratch
# ... on a larger target (every UCI digit outside uci-val: 1,297), where scratch may catch up.
$D sweep -t $S/uci-large --val $S/uci-val -b efficientnet_lite0 --preset small --image-size 32 --epochs 30 \
  --depths 0,5 --seeds 0,1 --no-keep-checkpoint --no-save-best -q -o runs/sweeps/v2/mnist-uci-large-30ep

# Text: MiniLM, 128 tokens, seeds 0 and 1, the 20 % split as validation; the text encoders' learning rates since
# 6c82ab3 (5e-5, the head 1e-3; the table at 1e-3, runs/sweeps/speeches-debates, is in git history).
$D sweep -t samples:debates -b minilm --preset small --epochs 6 --depths 0,2,3,4,5,6,7 --seeds 0,1 \
  --no-keep-checkpoint --no-save-best -q -o runs/sweeps/v2/speeches-debates

# Held-out scenarios: built and swept after the freeze and negative-transfer rules were fixed (commit 208fe5d);
# bench_predict.py reports them apart as an out-of-sample check.
sweep mnist-opencv-noisy $S/opencv-noisy $S/opencv-noisy-val efficientnet_lite0 0,2,3,4,5,6,7,8,9
sweep mnist-uci-parity $S/uci-parity $S/uci-parity-val efficientnet_lite0 0,3,5,6,7,8,9
sweep mnist-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite0 0,3,5,6,7,8,9
sweep mnist-opencv-10pc $S/opencv-10pc $S/opencv-val efficientnet_lite0 0,3,5,6,7,8,9
# Held out from the small-target step (set on the two 10-per-class tables above):
sweep mnist-uci-inverted-10pc $S/uci-inverted-10pc $S/uci-inverted-val efficientnet_lite0 0,3,5,6,7,8,9
sweep lite1-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite1 0,3,5,6,7,8,9
sweep dead40-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/dead40-lite0.safetensors 0,3,5,7,9

# Issue 15's families (make_scenarios.py builds the data): natural-photo textures (10 scikit-image photos,
# classified by source photo, 32 px, train crops from the top of each photo, validation from the bottom),
# with three ImageNet backbones; corruption ladders on that target; the weight-shuffled Lite0 (Transfusion
# control) as a second cause of negative transfer. Same protocol as above.
new_families() {  # in the order they were run (about 25 min per 16-run sweep on 2 busy cores)
  sweep tex-lite0 $S/tex $S/tex-val efficientnet_lite0 0,3,5,6,7,8,9
  sweep shuffled-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/shuffled-lite0.safetensors 0,1,3,5,9
  sweep tex-lite1 $S/tex $S/tex-val efficientnet_lite1 0,3,5,6,7,8,9
  sweep tex-noise3 $S/tex-noise3 $S/tex-noise3-val efficientnet_lite0 0,5,6,7,8,9
  for c in noise1 noise5 blur3 contrast3 jpeg3 blur1 blur5 contrast1 contrast5 jpeg1 jpeg5; do
    sweep tex-$c $S/tex-$c $S/tex-$c-val efficientnet_lite0 0,5,6,7,8,9
  done
  sweep tex-lite2 $S/tex $S/tex-val efficientnet_lite2 0,3,5,6,7,8,9
  # The small-target step on another kind of target: textures at 10 and 20 crops per photo.
  sweep tex-10pc $S/tex-10pc $S/tex-val efficientnet_lite0 0,3,5,6,7,8,9
  sweep tex-20pc $S/tex-20pc $S/tex-val efficientnet_lite0 0,3,5,6,7,8,9
  # The noise ladder on a second target (OpenCV digits).
  for k in 1 3 5; do sweep opencv-noise$k $S/opencv-noise$k $S/opencv-noise$k-val efficientnet_lite0 0,3,5,6,7,8,9; done
  # (its from-scratch runs are tex-lite0's: same architecture, seeds and budget)
  $D sweep -t $S/tex --val $S/tex-val -b efficientnet_lite0@$S/shuffled-lite0.safetensors --preset small \
    --image-size 32 --epochs 6 --depths 0,1,3,5,9 --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best \
    -q -o runs/sweeps/v2/shuffled-tex
}
new_families

# A second input size (64 px; the rules were set at 32 px): the texture crops drawn again at 64 px from the
# same boxes (make_scenarios.py: tex64), through the three backbones, and UCI / OpenCV digits upsampled.
# 20 runs each (9 depths and scratch, two seeds); 13-31 s a run on 2 idle cores, two sweeps side by side.
for b in lite0 lite1 lite2; do SIZE=64 sweep tex64-$b $S/tex64 $S/tex64-val efficientnet_$b 0,2,3,4,5,6,7,8,9; done
SIZE=64 sweep uci64-lite0 samples:uci-digits $S/uci-val efficientnet_lite0 0,2,3,4,5,6,7,8,9
SIZE=64 sweep uci64-lite2 samples:uci-digits $S/uci-val efficientnet_lite2 0,2,3,4,5,6,7,8,9
SIZE=64 sweep opencv64-lite0 samples:opencv-digits $S/opencv-val efficientnet_lite0 0,2,3,4,5,6,7,8,9
# A second natural-image target (scientific, document and graphic images from scikit-image; make_scenarios.py:
# sci), the three backbones at 32 px.
for b in lite0 lite1 lite2; do sweep sci-$b $S/sci $S/sci-val efficientnet_$b 0,2,3,4,5,6,7,8,9; done
# ... and the corruption ladders on it (Lite0; family input corruption): severity 3, then 1 and 5.
for k in 3 1 5; do
  for c in noise blur contrast jpeg; do
    sweep sci-$c$k $S/sci-$c$k $S/sci-$c$k-val efficientnet_lite0 0,2,3,4,5,6,7,8,9
  done
done

# Re-scaled checkpoints (make_scenarios.py: conv weights x 0.001 / 0.01 / 100 / 10; running statistics scaled
# with them; BatchNorm scales zeroed): negative transfer only, tune-all and the linear probe; the from-scratch
# runs are mnist-uci's. 4 runs each, 6-7 min per checkpoint on 2 shared cores (nice 19).
rescaled() { $D sweep -t samples:uci-digits --val $S/uci-val -b "efficientnet_lite0@$S/$1-lite0.safetensors" \
  --preset small --image-size 32 --epochs 6 --depths 0,9 --seeds 0,1 --no-scratch --no-keep-checkpoint \
  --no-save-best -q -o "runs/sweeps/v2/$1-uci"; }
for w in tiny001 big-shuffled tiny01 big gamma0 big-random big10-shuffled sgd-hot sgd-hot-random big10-deep-shuffled; do
  rescaled $w
done
# ImageNet weights with the last third of the convs x 10: also K 5 and K 7, to see what the freeze rule should say
$D sweep -t samples:uci-digits --val $S/uci-val -b "efficientnet_lite0@$S/big10-deep-lite0.safetensors" --preset small \
  --image-size 32 --epochs 6 --depths 0,5,7,9 --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best -q \
  -o runs/sweeps/v2/big10-deep-uci
# Too high a learning rate (2026-11-30; the sgd-hot checkpoints are make_scenarios.py's): AdamW at 0.05 without
# weight decay, from ImageNet on the shuffled-label set (10 epochs) and from random init on the 300 real MNIST
# samples (30 epochs); then tune-all and the linear probe, as above.
tuned() {  # NAME DATA EPOCHS LR [--from-scratch]: AdamW without weight decay, then tune-all and the linear probe
  [ -f "$S/$1-lite0/last.pt" ] && grep -q '"completed"' "$S/$1-lite0/result.json" ||
    $D finetune -t "$2" -b efficientnet_lite0 ${5:-} --freeze 0 --image-size 32 --epochs "$3" --lr "$4" \
      --weight-decay 0 --augment none --val-fraction 0.1 --keep-checkpoint -q -o "$S/$1-lite0" --overwrite
  $D sweep -t samples:uci-digits --val $S/uci-val -b "efficientnet_lite0@$S/$1-lite0/last.pt" --preset small \
    --image-size 32 --epochs 6 --depths 0,9 --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best -q \
    -o "runs/sweeps/v2/$1-uci"
}
tuned hot-pretrained $S/mnist-shuffled 10 0.05
tuned hot-mnist samples:mnist 30 0.05 --from-scratch
# Out of sample for the widened lost-plasticity test: SGD checkpoints (make_scenarios.py) and AdamW without
# weight decay from ImageNet on real MNIST labels at 0.02 (10 epochs) and at the usual 0.002 (30 epochs).
for w in sgd-half-random sgd-mild; do rescaled $w; done
tuned hot-adam-mnist samples:mnist 10 0.02
tuned adam-nowd-mnist samples:mnist 30 0.002
# A far synthetic source: Lite0 from random init, 10 epochs on 1,000 gratings (orientation = class, real labels;
# validation accuracy 0.69, 4 min), then tune-all and K 3 on UCI.
[ -f "$S/gratings-lite0/last.pt" ] || $D finetune -t $S/gratings -b efficientnet_lite0 --from-scratch --freeze 0 \
  --image-size 32 --epochs 10 --lr 0.002 --weight-decay 0 --augment none --val-fraction 0.1 --keep-checkpoint -q \
  -o $S/gratings-lite0 --overwrite
$D sweep -t samples:uci-digits --val $S/uci-val -b "efficientnet_lite0@$S/gratings-lite0/last.pt" --preset small \
  --image-size 32 --epochs 6 --depths 0,3 --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best -q \
  -o runs/sweeps/v2/gratings-uci
# The collapse and lost plasticity on the texture target (scratch from tex-lite0's runs).
for w in tiny001 big-shuffled big10-shuffled big10-deep-shuffled; do
  $D sweep -t $S/tex --val $S/tex-val -b "efficientnet_lite0@$S/$w-lite0.safetensors" --preset small --image-size 32 \
    --epochs 6 --depths 0,9 --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/v2/$w-tex"
done

# Four seeds (0-3) on the input-corruption and science-image families (2026-11-30): two seeds at 500 validation
# images leave a depth's mean some 0.02-0.03 uncertain, about the distance between neighbouring depths, and those
# two families held six of the seven tables below 0.95 of the best depth. Each sweep above is extended at its
# committed depths (seeds 0/1 reused, seeds 2/3 and their scratch runs added). mnist-uci-inverted and
# mnist-opencv-noisy stay at two seeds: their runs predate kept run folders, so seeds 0/1 would be re-run.
# Time: 30 tables, 556 new runs (14-20 a table, scratch included) at 11-20 s each: 75 min on two lanes (nice 19,
# 2026-11-30 10:45-12:01 UTC; 4.3-7 min a table).
four_seeds() {  # NAME TARGET VAL BACKBONE: the committed sweep's depths, seeds 0-3
  local depths
  depths=$(.venv/bin/python -c "import json,sys; s=json.load(open(sys.argv[1])); print(','.join(str(d['freeze']) for d in s['depths'] if not d['from_scratch']))" "benchmarks/results/sweeps/$1.json")
  $D sweep -t "$2" --val "$3" -b "$4" --preset small --image-size "${SIZE:-32}" --epochs 6 --depths "$depths" \
    --seeds 0,1,2,3 --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/v2/$1"
}
for b in lite0 lite1 lite2; do four_seeds sci-$b $S/sci $S/sci-val efficientnet_$b; done
for c in noise blur contrast jpeg; do
  for k in 1 3 5; do
    four_seeds sci-$c$k $S/sci-$c$k $S/sci-$c$k-val efficientnet_lite0
    four_seeds tex-$c$k $S/tex-$c$k $S/tex-$c$k-val efficientnet_lite0
  done
done
for k in 1 3 5; do four_seeds opencv-noise$k $S/opencv-noise$k $S/opencv-noise$k-val efficientnet_lite0; done
# ... then the textures family (88 runs, 17 min on two lanes, 12:08-12:25 UTC). tex-lite0's scratch runs are also
# those of shuffled-tex and the re-scaled texture checkpoints (bench_predict.py: scratch_from), re-evaluated after.
for b in lite0 lite1 lite2; do four_seeds tex-$b $S/tex $S/tex-val efficientnet_$b; done
for n in 10 20; do four_seeds tex-${n}pc $S/tex-${n}pc $S/tex-val efficientnet_lite0; done
# ... and the 64 px family (120 runs, 33 min on two lanes, 12:30-13:02 UTC, 8-13 min a table).
for b in lite0 lite1 lite2; do SIZE=64 four_seeds tex64-$b $S/tex64 $S/tex64-val efficientnet_$b; done
SIZE=64 four_seeds uci64-lite0 samples:uci-digits $S/uci-val efficientnet_lite0
SIZE=64 four_seeds uci64-lite2 samples:uci-digits $S/uci-val efficientnet_lite2
SIZE=64 four_seeds opencv64-lite0 samples:opencv-digits $S/opencv-val efficientnet_lite0
# ... and, re-run in full at four seeds (seeds 0/1 reproduced the committed values bit for bit, 62 of 62 cells;
# 2026-11-30 13:33-14:02 UTC, two lanes, about 11 min a table): four of the digit tables.
four_seeds mnist-uci samples:uci-digits $S/uci-val efficientnet_lite0
four_seeds mnist-uci-inverted $S/uci-inverted $S/uci-inverted-val efficientnet_lite0
four_seeds mnist-opencv samples:opencv-digits $S/opencv-val efficientnet_lite0
four_seeds lite1-uci samples:uci-digits $S/uci-val efficientnet_lite1
# ... and four more between the out-of-sample tables below (15:15-15:36 UTC; 122 of 122 cells bit for bit over the eight)
four_seeds damaged-light-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-light-lite0/last.pt
four_seeds damaged-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-lite0/last.pt
four_seeds lite2-uci samples:uci-digits $S/uci-val efficientnet_lite2
four_seeds noise-memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/noise-memorizer-lite0/last.pt
# ... and (2026-11-30 16:07-16:20 UTC, two lanes; seeds 0/1 reproduced 42 of 44 cells, mnist-uci-10pc's K 4, added
# by --run-missing, did not) three more; the six other two-seed tables are left for a later pass.
four_seeds memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/memorizer-lite0/last.pt
four_seeds mnist-uci-parity $S/uci-parity $S/uci-parity-val efficientnet_lite0
four_seeds mnist-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite0

# Built after step 7 of the freeze rule ("no feature advantage", commit 26505f5), out of sample for it, and
# screened only by diagnosing them: Lite1/Lite2 on the heaviest noise of the texture and science ladders, and
# the synthetic patterns (make_scenarios.py: band-pass noise by pass band, gratings by orientation). Every
# depth but K 1, four seeds. Time: 40 runs a table, 13-21 min each on one lane (two lanes side by side, nice 19,
# 2026-11-30 14:03-15:23 UTC, with diagnoses and a test run on the same cores): Lite0 13-15 min, Lite1/Lite2 15-21.
ladder() { SEEDS=0,1,2,3 sweep "$1" "$S/$2" "$S/$2-val" "$3" 0,2,3,4,5,6,7,8,9; }  # NAME DATA BACKBONE
ladder tex-noise5-lite1 tex-noise5 efficientnet_lite1
ladder tex-noise5-lite2 tex-noise5 efficientnet_lite2
ladder sci-noise3-lite1 sci-noise3 efficientnet_lite1
ladder synth-spectra-lite0 synth-spectra efficientnet_lite0
ladder synth-spectra-lite2 synth-spectra efficientnet_lite2
ladder synth-orient-lite0 synth-orient efficientnet_lite0
ladder sci-noise5-lite1 sci-noise5 efficientnet_lite1
ladder sci-noise5-lite2 sci-noise5 efficientnet_lite2
ladder tex-noise3-lite2 tex-noise3 efficientnet_lite2

# Three more text targets for MiniLM (make_scenarios.py: speaker role in the 2016 debates, Rotten Tomatoes
# sentiment, party of the 2012 convention passages), each with its own validation table; built after the freeze
# rule's last change and screened by diagnosing them first. Every depth but K 1, scratch, two seeds, the text
# encoders' learning rates (5e-5, the head 1e-3: diag's defaults since 6c82ab3). Time (2026-11-30, two lanes,
# nice 19): debates-role 31 min, rt-sentiment 22 min (16 runs each, 64 tokens), speeches-party about 50 min
# (128 tokens); the debates table above about 60 min.
text() { $D sweep -t "$S/$1.csv" --val "$S/$1-val.csv" -b minilm --preset small --epochs 6 --max-length "$2" \
  --depths 0,2,3,4,5,6,7 --seeds "${SEEDS:-0,1}" --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/v2/$1"; }
SEEDS=0,1,2,3 text debates-role 64  # seeds 2/3 added 18:15-18:42 UTC (27 min, one lane)
SEEDS=0,1,2,3 text rt-sentiment 64  # seeds 2/3 added 18:05-18:24 UTC (19 min)
text speeches-party 128

# Per-epoch curves for the budgeted-search simulation (bench_search.py) on the tables whose sweeps predate kept
# runs: the search's candidate depths re-run with the same recipe and seeds into runs/sweeps/curves/NAME (no
# scratch). 90 runs, 15 min on 2 cores (two lanes, nice 19, 2026-11-30); the debates (4 MiniLM runs) 9 min more.
# Then K 0 and K n-2 (the search's candidates since 2026-11-30 09:00): 58 more Lite runs, 9 min two lanes, and
# 4 more MiniLM runs, 7 min.
curves() {  # NAME TARGET VAL BACKBONE DEPTHS
  $D sweep -t "$2" --val "$3" -b "$4" --preset small --image-size 32 --epochs 6 --depths "$5" --seeds 0,1 \
    --no-scratch --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/curves/$1"
}
curves mnist-uci samples:uci-digits $S/uci-val efficientnet_lite0 5,6,7,0
curves mnist-opencv samples:opencv-digits $S/opencv-val efficientnet_lite0 5,6,7,0
curves mnist-uci-inverted $S/uci-inverted $S/uci-inverted-val efficientnet_lite0 5,6,4,7,0
curves lite1-uci samples:uci-digits $S/uci-val efficientnet_lite1 6,5,7,0
curves lite2-uci samples:uci-digits $S/uci-val efficientnet_lite2 5,4,6,7,0
curves damaged-light-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-light-lite0/last.pt 5,6,7,0
curves damaged-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/damaged-lite0/last.pt 5,6,7,0
curves memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/memorizer-lite0/last.pt 3,1,2,7,0
curves noise-memorizer-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/noise-memorizer-lite0/last.pt 3,1,4,2,7,0
curves mnist-opencv-noisy $S/opencv-noisy $S/opencv-noisy-val efficientnet_lite0 5,6,4,7,0
curves mnist-uci-parity $S/uci-parity $S/uci-parity-val efficientnet_lite0 7,3,8,6,0
curves mnist-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite0 8,9,7,0
curves mnist-opencv-10pc $S/opencv-10pc $S/opencv-val efficientnet_lite0 8,9,7,0
curves mnist-uci-inverted-10pc $S/uci-inverted-10pc $S/uci-inverted-val efficientnet_lite0 8,9,7,0
curves lite1-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite1 8,9,7,0
curves dead40-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/dead40-lite0.safetensors 5,4,7,0
curves shuffled-uci samples:uci-digits $S/uci-val efficientnet_lite0@$S/shuffled-lite0.safetensors 7

# LP-FT (benchmarks/lpft_column.py): 2 head-only epochs of the 6, seeds 0/1, no scratch runs. At K 0 on six
# tables, and at diag's recommended depth on the tables where it recommended LP-FT. Each run 25-90 s on the
# idle machine (two at a time: 9 min for all 28 runs). Copy each sweep.json to
# benchmarks/results/sweeps/lpft{,-rec}/NAME.json, then run lpft_column.py.
lpft() {  # OUT NAME TARGET VAL BACKBONE DEPTH
  $D sweep -t "$3" --val "$4" -b "$5" --preset small --image-size 32 --epochs 6 --lp-ft 2 --depths "$6" \
    --seeds 0,1 --no-scratch --no-keep-checkpoint --no-save-best -q -o "runs/sweeps/$1/$2"
}
lpft lpft mnist-uci samples:uci-digits $S/uci-val efficientnet_lite0 0
lpft lpft mnist-opencv samples:opencv-digits $S/opencv-val efficientnet_lite0 0
lpft lpft mnist-uci-inverted $S/uci-inverted $S/uci-inverted-val efficientnet_lite0 0
lpft lpft lite1-uci samples:uci-digits $S/uci-val efficientnet_lite1 0
lpft lpft tex-lite0 $S/tex $S/tex-val efficientnet_lite0 0
lpft lpft tex-lite1 $S/tex $S/tex-val efficientnet_lite1 0
lpft lpft-rec mnist-uci samples:uci-digits $S/uci-val efficientnet_lite0 5
lpft lpft-rec mnist-uci-inverted $S/uci-inverted $S/uci-inverted-val efficientnet_lite0 5
lpft lpft-rec lite1-uci samples:uci-digits $S/uci-val efficientnet_lite1 6
lpft lpft-rec lite2-uci samples:uci-digits $S/uci-val efficientnet_lite2 5
lpft lpft-rec mnist-uci-parity $S/uci-parity $S/uci-parity-val efficientnet_lite0 7
lpft lpft-rec tex-noise3 $S/tex-noise3 $S/tex-noise3-val efficientnet_lite0 3
lpft lpft-rec tex-contrast3 $S/tex-contrast3 $S/tex-contrast3-val efficientnet_lite0 5
lpft lpft-rec mnist-uci-10pc $S/uci-10pc $S/uci-val efficientnet_lite0 8
