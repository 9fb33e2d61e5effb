#!/usr/bin/env bash
# One GPU session, unattended: sanity check, benchmarks, the proxy suite until a deadline, the report.
# Everything it produces lands in $OUT (results_proxy.tgz, REPORT.md, bench.tgz, logs.tgz), so a lease that
# ends early still returns what was finished. Rerunning it resumes: stored (row, seed) results are reused.
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh                       # repository root, GPU machine
#   TOTAL_S=3600 BENCH=0 OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh  # an hour of suite, no benchmarks
#   TOTAL_S=572 BENCH=after OUT=/tmp/gpu_out bash benchmarks/gpu_session.sh  # suite first, then benchmarks
#   TOTAL_S=572 BENCH=after DENSE_SEEDS=4 DENSE_MAX_S=150 OUT=... bash ...  # suite, a 4th dense seed, benchmarks
#   DEVICE=cpu PROFILE=smoke BENCH=0 DENSE_SEEDS=2 JOBS=2 TRAIN_WORKERS=2 OUT=... bash ...  # dry run, CPU
#   TOTAL_S=170 BENCH=train OUT=... bash ...  # the speed benchmarks alone (a second call)
#
# The sanity step trains every model family for a few smoke steps on the GPU; if that fails the session stops
# at once (exit 3), so a bug costs seconds of GPU time, not the lease. Each step's time limit is cut to what
# is left of TOTAL_S, keeping REPORT_S for the report and the archive, so the script ends inside TOTAL_S.
# A copy without .git needs the tree manifest for its results' provenance: write it in the checkout with
# `python -c "from lvit.results import write_tree_manifest; write_tree_manifest()"` and copy it along.
set -uo pipefail
OUT=${OUT:?set OUT to the output folder}
TOTAL_S=${TOTAL_S:-570}   # the whole script, archive included
REPORT_S=${REPORT_S:-55}  # kept back for the report notebook and the archive
JOBS=${JOBS:-12}          # notebooks at once: small proxy models leave the GPU idle between launches
TRAIN_WORKERS=${TRAIN_WORKERS:-8}  # processes training the classification tables' runs beside the notebooks
BENCH=${BENCH:-1}         # 1: benchmarks before the suite; after: in the time the suite leaves; 0: none;
                          # train: the training-speed ones (fused kernels' test, ratios, profile), then
                          # the fused middle alone, DPT by part and at batch 32, in what is left
SANITY=${SANITY:-1}       # 0: no sanity step (a resumed session whose code already passed it)
DENSE_SEEDS=${DENSE_SEEDS:-1}  # more than the tables declare (3 at proxy): after the suite, the dense tables
                               # again at this many seeds (the suite's seeds reused)
DENSE_MAX_S=${DENSE_MAX_S:-100000}  # at most this long, so that BENCH=after keeps some time
DENSE_NOTEBOOKS="dpt_read_ablation dpt_zero_shot_depth dpt_segmentation dpt_inference_resolution"
DEVICE=${DEVICE:-cuda}    # cpu: a dry run of the plumbing
PROFILE=${PROFILE:-proxy} # smoke: with DEVICE=cpu BENCH=0, the whole script in minutes on a laptop
if [ "$BENCH" = train ]; then  # the benchmarks check what they time themselves, and no report is written
    SANITY=0 REPORT_S=${REPORT_S_TRAIN:-15}
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=${PYTHONPATH:-}:$PWD
LOGS=$OUT/logs BENCH_DIR=$OUT/bench
mkdir -p "$LOGS" "$BENCH_DIR"
stamp() { echo "[$SECONDS s] $*"; }
# seconds a step may take: its own cap, or what is left before the report's reserve, whichever is less
budget() {
    local left=$((TOTAL_S - REPORT_S - SECONDS))
    if [ "$left" -lt 1 ]; then left=1; fi
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# tests/test_locality_triton.py -k FILTER into LOG: whether the fused locality kernels equal the eager modules
# on this GPU (FUSED_TEST=passed/failed)
fused_locality_test() {  # LOG FILTER
    FUSED_TEST=passed
    if ! timeout -k 5 "$(budget 90)" python3 -m pytest -q -p no:cacheprovider tests/test_locality_triton.py \
        -k "$2" >"$1" 2>&1; then
        tail -30 "$1"
        FUSED_TEST=failed
    fi
    tail -1 "$1"
}

archive() {
    tar czf "$OUT/results_$PROFILE.tgz" --exclude=checkpoints --exclude='*.pt' --exclude='*.lock' "results/$PROFILE" \
        2>/dev/null
    cp results/REPORT.md "$OUT/" 2>/dev/null
    tar czf "$OUT/bench.tgz" -C "$OUT" bench && tar czf "$OUT/logs.tgz" -C "$OUT" logs
    rm -rf "$BENCH_DIR" "$LOGS"
}
trap 'archive; if [ "$MPS" = 1 ]; then echo quit | nvidia-cuda-mps-control; fi' EXIT

# MPS lets the notebooks' kernels share the GPU's multiprocessors instead of time-slicing whole contexts.
# Started only if the daemon is there and a CUDA process works under it; otherwise the suite runs without.
MPS=${MPS:-1}
if [ "$MPS" = 1 ] && [ "$DEVICE" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/lvit-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/lvit-mps/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && timeout 60 python3 -c 'import torch; assert torch.ones(2, device="cuda").sum().item() == 2'; then
        stamp "MPS on"
    else
        stamp "MPS failed to start; time-slicing instead"
        echo quit | nvidia-cuda-mps-control 2>/dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        MPS=0
    fi
else
    MPS=0
fi

stamp "environment"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c 'from lvit.results import git_state; print("code (sha, dirty):", git_state())'
    python3 -c 'import sys, torch, timm, einops, pandas, numpy, transformers, papermill
print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__, "numpy", numpy.__version__,
      "transformers", transformers.__version__, "papermill", papermill.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
} 2>&1 | tee "$LOGS/env.txt"

if [ "$SANITY" = 1 ]; then
    stamp "sanity: every model family and task at smoke size on $DEVICE"
    if ! DEVICE=$DEVICE timeout "$(budget 120)" python3 - >"$LOGS/sanity.log" 2>&1 <<'PYTHON'
import os

from lvit.engine.run import run_experiment

for name, rows in [("localvit_main", None), ("dpt_segmentation", ["DPT-Hybrid"]),
                   ("dpt_inference_resolution", None)]:
    df = run_experiment(name, "smoke", 1, os.environ["DEVICE"], results_dir="/tmp/lvit-sanity", rows=rows)
    assert len(df) and df["value"].notna().all(), name
    print(name, "ok", df.groupby("metric")["value"].mean().round(3).to_dict(), flush=True)
PYTHON
    then
        stamp "sanity FAILED"
        tail -40 "$LOGS/sanity.log"
        exit 3
    fi
    grep " ok " "$LOGS/sanity.log"
    if [ "$DEVICE" = cuda ]; then
        # the graphed steps capture the fused locality kernels: only if they equal the eager modules here
        stamp "sanity: the fused locality kernels equal the eager modules on the GPU (tests/test_locality_triton.py)"
        graph_tests=""
        fused_locality_test "$LOGS/fused_locality_test.log" "not compile_traces"  # the benchmarks read FUSED_TEST
        if [ "$FUSED_TEST" = failed ]; then
            stamp "fused locality kernels FAILED: the graphs capture the eager modules (LVIT_FUSED_LOCALITY=0)"
            export LVIT_FUSED_LOCALITY=0
            graph_tests="not fused"
        fi
        stamp "sanity: graphed training steps equal eager ones on the GPU (tests/test_cuda_graph.py)"
        if ! timeout "$(budget 90)" python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py \
            -k "$graph_tests" >"$LOGS/cuda_graph_test.log" 2>&1; then
            stamp "CUDA-graph test FAILED: the suite trains eagerly (LVIT_CUDA_GRAPH=0)"
            tail -30 "$LOGS/cuda_graph_test.log"
            export LVIT_CUDA_GRAPH=0
        fi
        tail -1 "$LOGS/cuda_graph_test.log"
    fi
fi

training_speed_benchmarks() {  # the training-throughput target first: the fused kernels, then the ratios
    # The fused locality kernels are timed only if they equal the eager modules on this GPU: as the sanity
    # step found (FUSED_TEST), or, where it did not run (BENCH=train), by the same test here. Most of the
    # test's time is Triton compiling the kernels' variants (about 12 s per set on a 2-core CPU). The tests
    # of the compiled model (inductor around the kernels' custom ops) and of the CUDA-graph step run after
    # the timings: the first compiles for tens of seconds, and neither gates what the timings time.
    fused="fused compiled-fused graphed-fused"  # not local: fused_middle_benchmark reads it
    local late_tests="compile_traces"  # the sanity step ran the others, the CUDA-graph one among them
    if [ -z "${FUSED_TEST:-}" ]; then
        late_tests="compile_traces or cuda_graph"
        fused_locality_test "$BENCH_DIR/fused_locality_test.log" "not ($late_tests)"
    fi
    if [ "$FUSED_TEST" = failed ]; then
        stamp "fused locality kernels FAILED their test: not timed"
        fused=""
    fi
    # graphed beside graphed-fused: which of the two the training loop's CUDA-graph step should run; then
    # compiled-graphed, the strongest DeiT-T (inductor's kernels replayed), against which the target's
    # "compiled" ratio is the honest one
    local modes="graphed compiled-graphed eager compiled"
    if [ -n "$fused" ]; then
        modes="graphed graphed-fused compiled-graphed compiled-graphed-fused eager fused compiled compiled-fused"
    fi
    timeout -k 5 "$(budget 140)" python3 benchmarks/train_throughput.py --max-seconds 120 \
        --modes $modes --out "$BENCH_DIR/train_throughput.json" >"$BENCH_DIR/train_throughput.log" 2>&1
    stamp "train_throughput exit $?"
    # eager: the default path (the fused kernels measured slower at d0b3b1c; their profile is in RESULTS.md)
    timeout -k 5 "$(budget 40)" python3 benchmarks/step_profile.py --by kernel --top 25 --mode eager \
        --out "$BENCH_DIR/step_profile_kernels.json" >"$BENCH_DIR/step_profile_kernels.log" 2>&1
    stamp "step_profile (where LocalViT-T's extra time goes, per CUDA kernel) exit $?"
    if [ -n "$fused" ]; then  # which of the fused kernels takes the time (10 s at d0b3b1c)
        timeout -k 5 "$(budget 40)" python3 benchmarks/step_profile.py --by kernel --top 25 --mode fused \
            --out "$BENCH_DIR/step_profile_kernels_fused.json" >"$BENCH_DIR/step_profile_kernels_fused.log" 2>&1
        stamp "step_profile --mode fused exit $?"
        # without a graph the fused step is bound by the host (103 ms for 40.7 ms of kernels at 5f8407f):
        # Triton's launcher or PyTorch's dispatch?
        timeout -k 5 "$(budget 30)" python3 benchmarks/step_profile.py --by host --top 25 --mode fused \
            --out "$BENCH_DIR/step_profile_host_fused.json" >"$BENCH_DIR/step_profile_host_fused.log" 2>&1
        stamp "step_profile --by host --mode fused exit $?"
        timeout -k 5 "$(budget 60)" python3 -m pytest -q -p no:cacheprovider tests/test_locality_triton.py \
            -k "$late_tests" >"$BENCH_DIR/fused_compiled_test.log" 2>&1
        stamp "fused under inductor and in a CUDA graph: exit $? ($(tail -1 "$BENCH_DIR/fused_compiled_test.log"))"
    fi
}

fused_middle_benchmark() {  # the fused middle alone against the eager modules and inductor, per tile set
    if [ -n "$fused" ]; then
        # default first, then unpipelined (did pipelining the loops' loads pay?), then the wide tiles; inductor
        # last, the deadline cuts what is left
        timeout -k 5 "$(budget 55)" python3 benchmarks/locality_kernels.py --max-seconds 45 \
            --tiles default unpipelined sums-map-wide \
            --out "$BENCH_DIR/locality_kernels.json" >"$BENCH_DIR/locality_kernels.log" 2>&1
        stamp "locality_kernels (the fused middle alone: tiles, eager, inductor) exit $?"
    fi
}

dpt_batch_benchmark() {  # the DPT targets in what is left: eager pair, b1 graph replay, channels_last, compiled
    # (--max-seconds starts after the imports, which take seconds: hence 20 s under the timeout; compiling
    # dpt_hybrid took 57 s on the H100 at 5f8407f; the b1 graph replay takes seconds, and had been timed on
    # an H200 only)
    local left
    left=$(budget 130)
    if [ "$left" -lt 50 ]; then stamp "dpt_vs_hf (batch 32) skipped: ${left} s left"; return; fi
    timeout -k 5 "$left" python3 benchmarks/dpt_vs_hf.py --models dpt_hybrid --graph-models dpt_hybrid \
        --compile-models --max-seconds $((left - 20)) --out "$BENCH_DIR/dpt_vs_hf_batch.json" \
        >"$BENCH_DIR/dpt_vs_hf_batch.log" 2>&1
    stamp "dpt_vs_hf (b32: eager, low-precision norms, channels_last, compiled; b1: graph) exit $?"
}

dpt_parts_benchmark() {  # which part of DPT's forward holds the batch-32 ratio down, lvit beside HF
    timeout -k 5 "$(budget 70)" python3 benchmarks/dpt_parts.py --max-seconds 55 \
        --out "$BENCH_DIR/dpt_parts.json" >"$BENCH_DIR/dpt_parts.log" 2>&1
    stamp "dpt_parts (b32, per part: embedding, transformer, reassemble, fusion, head) exit $?"
}

run_benchmarks() {
    stamp "benchmarks"
    training_speed_benchmarks
    fused_middle_benchmark
    proxy_geometry_benchmark
    timeout -k 5 "$(budget 130)" python3 benchmarks/dpt_vs_hf.py --max-seconds 110 --compile-models \
        --out "$BENCH_DIR/dpt_vs_hf.json" >"$BENCH_DIR/dpt_vs_hf.log" 2>&1
    stamp "dpt_vs_hf exit $?"
    dpt_parts_benchmark
    timeout -k 5 "$(budget 25)" python3 benchmarks/data_throughput.py --max-seconds 10 --threads 16 \
        --out "$BENCH_DIR/data_throughput.json" >"$BENCH_DIR/data_throughput.log" 2>&1
    stamp "data_throughput exit $?"
    tail -q -n 40 "$BENCH_DIR"/*.log | grep -E "^\|" | cut -c1-170
}

proxy_geometry_benchmark() {  # the suite's own step: 64² images, patch 8, each step a replayed CUDA graph
    local modes="eager graphed"
    if [ -n "${fused:-}" ]; then modes="graphed graphed-fused"; fi
    timeout -k 5 "$(budget 40)" python3 benchmarks/train_throughput.py --image-size 64 --patch-size 8 \
        --modes $modes --max-rows 0 --max-seconds 30 --out "$BENCH_DIR/train_throughput_proxy.json" \
        >"$BENCH_DIR/train_throughput_proxy.log" 2>&1
    stamp "train_throughput (proxy geometry: $modes) exit $?"
}

if [ "$BENCH" = train ]; then  # the speed targets alone, e.g. in a second call of a session
    training_speed_benchmarks
    proxy_geometry_benchmark  # would the suite's trainings gain from the fused kernels?
    fused_middle_benchmark  # the training target is the one missed (at 5f8407f): its kernels' tiles next
    dpt_parts_benchmark
    dpt_batch_benchmark  # met compiled at 5f8407f (1.99x): last, in what is left
    tail -q -n 40 "$BENCH_DIR"/*.log | grep -E "^\|" | cut -c1-170
    exit 0
fi
if [ "$BENCH" = 1 ]; then run_benchmarks; fi

SUITE_S=$(budget 100000)
stamp "$PROFILE suite: lvit reproduce --profile $PROFILE --jobs $JOBS --train-workers $TRAIN_WORKERS (deadline ${SUITE_S}s)"
timeout -k 10 "$SUITE_S" python3 -m lvit reproduce --profile "$PROFILE" --jobs "$JOBS" \
    --train-workers "$TRAIN_WORKERS" --device "$DEVICE" >"$LOGS/suite.log" 2>&1
suite=$?
stamp "suite exit $suite (124: deadline)"
grep -aoE "(ok|FAILED) [a-z_]+ \([0-9]+ s\)" "$LOGS/suite.log"  # progress bars share the lines
report_if_cut() {  # $1: the exit status of a reproduce call; cut short or failed, its report has not run
    if [ "$1" != 0 ]; then
        pkill -f ipykernel_launcher; pkill -f multiprocessing.spawn; sleep 2  # kernels and training workers
        stamp "report"
        timeout $((REPORT_S - 10)) python3 -m lvit reproduce --profile "$PROFILE" --only report >"$LOGS/report.log" 2>&1
        stamp "report exit $?"
    fi
}
report_if_cut "$suite"
# Is a dense row dead before it trains, with the backbones the suite just pretrained? CPU work, so it runs
# beside what follows; each stand-in at 12 seeds, built exactly as the suite builds its dense rows.
# It needs the backbones' weights, which stay on the machine (results_*.tgz leaves *.pt out): a suite that
# reused stored pretrainings has none, and the probe is skipped.
init_probe=""
if compgen -G "results/$PROFILE/runs/*.pt" >/dev/null; then
    timeout -k 5 "$(budget 240)" python3 benchmarks/dpt_init_probe.py --seeds 12 --profile "$PROFILE" \
        --pretrained results --out "$BENCH_DIR/dpt_init_probe_pretrained.json" \
        >"$BENCH_DIR/dpt_init_probe_pretrained.log" 2>&1 &
    init_probe=$!
else
    stamp "dpt_init_probe skipped: no backbone weights here (the suite reused stored pretrainings)"
fi
# More dense seeds than declared first: 3 can leave a row 1 live seed (the collapse is a seed lottery)
DECLARED_SEEDS=1  # a table declares at least one; asked of lvit (seconds of imports) only if more are wanted
if [ "$DENSE_SEEDS" -gt 1 ]; then
    DECLARED_SEEDS=$(python3 -c "from lvit.experiments import get_experiment as e; \
print(min(e(n).default_seeds('$PROFILE') for n in '$DENSE_NOTEBOOKS'.split()))")
fi
if [ "$DENSE_SEEDS" -gt "${DECLARED_SEEDS:-1}" ] && [ "$suite" = 0 ]; then
    DENSE_S=$(budget "$DENSE_MAX_S")
    stamp "dense tables with $DENSE_SEEDS seeds (deadline ${DENSE_S}s)"
    timeout -k 10 "$DENSE_S" python3 -m lvit reproduce --profile "$PROFILE" --seeds "$DENSE_SEEDS" --jobs "$JOBS" \
        --train-workers "$TRAIN_WORKERS" --device "$DEVICE" --only $DENSE_NOTEBOOKS report \
        >"$LOGS/dense_seeds.log" 2>&1
    dense=$?
    stamp "dense seeds exit $dense (124: deadline; every (row, seed) finished before it is stored)"
    grep -aoE "(ok|FAILED) [a-z_]+ \([0-9]+ s\)" "$LOGS/dense_seeds.log"
    report_if_cut "$dense"
fi
if [ "$BENCH" = after ]; then  # the suite first; the benchmarks get whatever time is left
    REPORT_S=10
    run_benchmarks
fi
if [ -n "$init_probe" ]; then
    wait "$init_probe"
    stamp "dpt_init_probe --pretrained exit $? (dead-at-init table with the suite's backbones)"
    grep -E "^\|" "$BENCH_DIR/dpt_init_probe_pretrained.log"
fi
stamp "done"
