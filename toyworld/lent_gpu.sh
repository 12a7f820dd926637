#!/usr/bin/env bash
# One toyworld.train run on a lent GPU for longer than one device command, across two commands
# (toyworld/TRAINING.md, "One run across two commands"). On the device, from the repository root:
#
#   command 1 (timeout 600):  bash toyworld/lent_gpu.sh start NAME SECONDS "RECIPE"
#   command 2 (timeout 240):  bash toyworld/lent_gpu.sh collect NAME
#
# start installs the carried wheels (.whl, from ../shared/tools/gpu-wheels.sh lazy-importer), starts
# `toyworld.sweep --run NAME="RECIPE" --seconds SECONDS` in its own session, so that it outlives the command,
# and waits. If the sweep ends first, its packed model comes back ($OUT/NAME.tar); otherwise, at WAIT seconds,
# the run's last checkpoint comes back as a fallback model ($OUT/NAME-fallback.tar). collect, sent at once
# while the machine is warm, waits for the sweep and brings back its model. Each tar holds the model folder
# without its tokenizer: unpack it and copy toyworld/model/tokenizer into it. Carry an --init-from folder.
# DEVICE=cpu checks the script here (with a tiny recipe); W is the device's work folder.
set -u
what=${1:?start or collect}; name=${2:?a run name}
W=${W:-/tmp/lent_gpu}; DEVICE=${DEVICE:-cuda}; WAIT=${WAIT:-560}; OUT=${OUT:?run on the device, where OUT is set}
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
bring() {  # the logs and whatever the sweep finished
    cp "$W/sweep.log" "$OUT/$name-sweep.log" 2>/dev/null
    cp "$W/sw/$name/train.log" "$OUT/$name-train.log" 2>/dev/null
    cp "$W/sw/sweep.json" "$OUT/$name-sweep.json" 2>/dev/null
    cp "$W/pack/$name.tar" "$OUT/" 2>/dev/null
}
case "$what" in
start)
    seconds=${3:?the sweep wall time in seconds}; recipe=${4:?the toyworld.train options}
    if [ "$DEVICE" != cpu ] && ls .whl/*.whl > /dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    rm -rf "$W" && mkdir -p "$W"
    setsid nohup python3 -m toyworld.sweep --out "$W/sw" --pack "$W/pack" --seconds "$seconds" --safety 0.93 \
        --device "$DEVICE" --threads 8 --run "$name=$recipe" > "$W/sweep.log" 2>&1 < /dev/null &
    while [ "$(elapsed)" -lt "$WAIT" ] && ! [ -f "$W/sw/sweep.json" ]; do sleep 5; done
    bring
    if [ -f "$W/sw/sweep.json" ]; then
        echo "the sweep ended after $(elapsed) s"; tail -3 "$W/sweep.log"; exit 0
    fi
    if python3 -m toyworld.export "$W/sw/$name/model.checkpoint" "$W/fallback/model" > "$W/fallback.log" 2>&1; then
        tar -C "$W/fallback" --exclude tokenizer -cf "$OUT/$name-fallback.tar" model
        echo "fallback model after $(elapsed) s: $(tail -1 "$W/fallback.log")"
    else
        echo "no fallback model after $(elapsed) s:"; tail -3 "$W/fallback.log"
    fi
    tail -3 "$W/sweep.log"
    ;;
collect)
    while ! [ -f "$W/sw/sweep.json" ] && [ "$(elapsed)" -lt 225 ]; do sleep 3; done
    bring
    if [ -f "$OUT/$name.tar" ]; then echo "collected after $(elapsed) s"; else echo "no model after $(elapsed) s"; fi
    tail -5 "$W/sweep.log"
    ;;
*)
    echo "error: the first argument is start or collect, not $what" >&2; exit 2
    ;;
esac
