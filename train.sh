#!/usr/bin/env bash
# Launch DyTox training with torchrun (python -m torch.distributed.run).
#
#   # CIFAR-100, 10 steps, 2 GPUs, 20 exemplars per class in total, each GPU herding its own 1000
#   # (the erratum's distributed memory; the published README's --memory-size 1000, kept per GPU, is the same run)
#   bash train.sh 0,1 --options options/data/cifar100_10-10.yaml options/data/cifar100_order1.yaml \
#       options/model/cifar_dytox.yaml --name dytox --data-path data/ --distributed-memory --memory-size 2000
#   # the same with one selection of 2000 shared by both GPUs (the erratum's global memory)
#   bash train.sh 0,1 --options ... --global-memory --memory-size 2000
#   bash train.sh cpu --options ...          # one CPU process
#   bash train.sh cpu 2 --options ...        # two CPU processes (gloo)
#
# Without --distributed-memory or --global-memory, several processes keep the published memory: each process
# its own --memory-size exemplars, N times --memory-size in all (--memory-size 2000 on 2 GPUs is the first
# version of the paper, 4000 exemplars, which its erratum corrected); the run says so at start-up.
#
# GPUS is a comma-separated list of GPU ids (one process per GPU, CUDA_VISIBLE_DEVICES
# set to the list) or "cpu" followed by an optional process count. Everything after
# it is passed to main.py. On one node the processes meet on a free local port (torchrun
# --standalone), so that several runs on one machine never collide; MASTER_PORT (and
# MASTER_ADDR) set in the environment are used instead. Multi-node runs: set NNODES,
# NODE_RANK, MASTER_ADDR and MASTER_PORT (torchrun's rendezvous), e.g. NNODES=2 NODE_RANK=0
# MASTER_ADDR=host0.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash train.sh GPUS|cpu [NPROC] ARGS... (see the header of train.sh)" >&2
    exit 2
fi
devices=$1
shift

if [ "$devices" = "cpu" ]; then
    nproc=1
    if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
        nproc=$1
        shift
    fi
    set -- --device cpu "$@"
else
    if ! [[ $devices =~ ^[0-9]+(,[0-9]+)*$ ]]; then
        echo "train.sh: GPUS must be a comma-separated list of GPU ids (e.g. 0,1) or 'cpu', got '$devices'" >&2
        exit 2
    fi
    export CUDA_VISIBLE_DEVICES=$devices
    nproc=$(( $(tr -cd ',' <<< "$devices" | wc -c) + 1 ))
fi

cd "$(dirname "$0")"
# The Python that has torch: $PYTHON if set, else the project's .venv, else python3.
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
if [ "${NNODES:-1}" = "1" ] && [ -z "${MASTER_PORT:-}" ]; then
    rendezvous=(--standalone)  # a free port chosen by torchrun
else
    rendezvous=(--nnodes="${NNODES:-1}" --node-rank="${NODE_RANK:-0}"
                --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}")
fi
exec "$python" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node="$nproc" main.py "$@"
