#!/usr/bin/env bash
# Take the shipped model weights out of what device calls send, and put them back afterwards.
# Every call sends the tracked files (64 MiB in all, carried paths included); the shipped weights
# are 57 MB of that, which would leave no room to carry data.
#   bash tools/device/park.sh park      # before the first device call: unstaged from the index, moved aside
#   bash tools/device/park.sh restore   # after the last one; git status is clean again
# While parked, git status shows the weights as deleted: never commit in between.
set -euo pipefail
cd "$(dirname "$0")/../.."
PARK=${PARK:-$(pwd)/../parked-weights}
case "${1:-}" in
  park)
    files=$(git ls-files 'fundusgen/models/*.safetensors' 'fundusgen/measure/weights/*.safetensors')
    [ -n "$files" ] || { echo "nothing to park (already parked? see $PARK)" >&2; exit 1; }
    for f in $files; do mkdir -p "$PARK/$(dirname "$f")"; mv "$f" "$PARK/$f"; done
    git rm -q --cached $files
    echo "parked $(echo $files | wc -w) weight files in $PARK; run 'bash tools/device/park.sh restore' after the device calls"
    ;;
  restore)
    [ -d "$PARK" ] || { echo "nothing parked in $PARK" >&2; exit 1; }
    (cd "$PARK" && find . -type f -name '*.safetensors') | while read -r f; do
      mkdir -p "$(dirname "$f")"; mv "$PARK/$f" "$f"; git reset -q -- "$f"
    done
    rm -rf "$PARK"
    git status --short fundusgen/models fundusgen/measure/weights
    echo "restored the shipped weights"
    ;;
  *) echo "usage: bash tools/device/park.sh park|restore" >&2; exit 2 ;;
esac
