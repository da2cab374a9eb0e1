#!/usr/bin/env bash
# The device side of tools/device (README.md there): run from the repository root on the lent GPU.
#   bash tools/device/run.sh stage            copy the carried .device/* folders to $FG (they outlive the call)
#   bash tools/device/run.sh start            install the wheels, launch both trainings detached, return
#   bash tools/device/run.sh wait SECONDS     follow the logs until both end or SECONDS pass
#   bash tools/device/run.sh collect          export what the runs hold now into $OUT, in <=15 MiB parts
# Environment: FG (default /root/fg), RECIPE (default configs/h200.yaml), VESSEL_STEPS (5000),
# CARRIED (the carried folder, default .device), OUT (set by the device tool), PYTHON (python3),
# KEEP_STAGES (recipe stage names whose models collect exports too, beside the latest; default none).
set -euo pipefail
FG=${FG:-/root/fg}
RECIPE=${RECIPE:-configs/h200.yaml}
PYTHON=${PYTHON:-python3}
VESSEL_STEPS=${VESSEL_STEPS:-5000}
KEEP_STAGES=${KEEP_STAGES:-}
CARRIED=${CARRIED:-.device}
export PYTHONPATH="$FG/code:$FG/site:$FG/env/py${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

last_line() {  # the newest progress-bar state of a log
  [ -f "$1" ] && tr '\r' '\n' < "$1" | grep -v '^\s*$' | tail -1 | cut -c1-160 || true
}

case "${1:-}" in
  stage)
    mkdir -p "$FG"
    for d in "$CARRIED"/part*/; do [ -d "$d" ] && cp -r "$d." "$FG/" && echo "staged $d"; done
    du -sh "$FG"/*/* 2>/dev/null || true
    ;;
  start)
    [ -d "$FG/data/train" ] && [ -d "$FG/env/py" ] || { echo "stage $CARRIED/data and $CARRIED/env first" >&2; exit 1; }
    if ls "$FG"/env/whl/*.whl > /dev/null 2>&1; then
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$FG/site" "$FG"/env/whl/*.whl
    fi
    rm -rf "$FG/code" && mkdir -p "$FG/code" "$FG/logs" && cp -r fundusgen "$FG/code/" && cp "$RECIPE" "$FG/recipe.yaml"
    if [ -d "$FG/weights" ]; then  # measurement networks carried by pack.py (the tree's are parked)
      cp -r "$FG/weights/." "$FG/code/fundusgen/measure/weights/"
    fi
    # the recipe's autoencoder.init and denoiser.init, carried by pack.py (the shipped weights stay parked)
    for part in autoencoder:ae denoiser:dn; do
      if [ -d "$FG/${part#*:}" ]; then
        "$PYTHON" -c "import sys, yaml; p = sys.argv[1]; d = yaml.safe_load(open(p)); d[sys.argv[2]]['init'] = sys.argv[3]; yaml.safe_dump(d, open(p, 'w'), sort_keys=False)" \
          "$FG/recipe.yaml" "${part%%:*}" "$FG/${part#*:}"
      fi
    done
    "$PYTHON" -c "import torch, diffusers, webdataset, fundusgen.train.run; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    cd "$FG"
    setsid nohup bash -c "'$PYTHON' -m fundusgen.cli train --config recipe.yaml --set data=$FG/data/train --set out=$FG/run \
      > logs/train.log 2>&1; echo \$? > logs/train.rc.tmp; mv logs/train.rc.tmp logs/train.rc" > /dev/null 2>&1 &
    if [ -d "$FG/data/vessels" ]; then
      setsid nohup bash -c "'$PYTHON' -m fundusgen.measure.vessels train --data $FG/data/vessels --out $FG/vessels \
        --steps $VESSEL_STEPS --batch-size 64 --crop 128 --channels 16 --depth 4 --checkpoint-every 1000 \
        > logs/vessels.log 2>&1; echo \$? > logs/vessels.rc.tmp; mv logs/vessels.rc.tmp logs/vessels.rc" > /dev/null 2>&1 &
    fi
    sleep "${START_WAIT:-20}"; last_line logs/train.log; last_line logs/vessels.log
    ;;
  wait)
    end=$(( $(date +%s) + ${2:-60} ))
    while [ "$(date +%s)" -lt "$end" ]; do
      done_all=1
      for job in train vessels; do
        [ -f "$FG/logs/$job.log" ] || continue
        [ -f "$FG/logs/$job.rc" ] && echo "$job: ended, exit $(cat "$FG/logs/$job.rc")" || { done_all=0; echo "$job: $(last_line "$FG/logs/$job.log")"; }
      done
      nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
      [ "$done_all" = 1 ] && break
      sleep 30
    done
    ;;
  collect)
    : "${OUT:?OUT is set by the device tool}"
    cd "$FG"; rm -rf export && mkdir -p export/logs
    "$PYTHON" -m fundusgen.cli export run export/model || echo "no model to export yet" >&2
    for stage in $KEEP_STAGES; do  # earlier stages' models too, as each ended (e.g. 256 px before a 512 px stage)
      "$PYTHON" -m fundusgen.cli export run "export/stage_$stage" --stage "$stage" || echo "stage $stage: nothing to export" >&2
    done
    # the vessel trainer leaves a model folder at every checkpoint
    if [ -f vessels/model.safetensors ]; then cp -r vessels export/vessels && rm -f export/vessels/checkpoint.pt; fi
    cp recipe.yaml export/ ; cp run/recipe.json run/denoiser/loss_history.json export/ 2>/dev/null || true
    for f in logs/*; do tr '\r' '\n' < "$f" | grep -v '^\s*$' | awk 'NR%20==1' > "export/$f"; tail -c 4000 "$f" >> "export/$f"; done
    tar -cf export.tar -C export .
    split -b 15m -d export.tar "$OUT/export.tar.part"
    sha256sum export.tar | cut -d' ' -f1 > "$OUT/export.tar.sha256"
    ls -la "$OUT"
    ;;
  *) sed -n 2,8p "$0"; exit 2 ;;
esac
