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
# MASTER_ADDR) set in the environment are used instead.
#
# Several nodes (docs/running.md, "Several nodes"): the same command on every node, with NNODES
# (the number of nodes), NODE_RANK (0 to NNODES-1, one per node), MASTER_ADDR (node 0's address)
# and MASTER_PORT (a free port of node 0), e.g. on two nodes of 2 GPUs each:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 bash train.sh 0,1 --options ...  # on host0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 MASTER_PORT=29500 bash train.sh 0,1 --options ...  # on host1
#
# RDZV_TIMEOUT (seconds, default 900): how long a node waits for all the others to meet at
# MASTER_ADDR:MASTER_PORT before it stops with one line saying what it waited for and what to
# check (exit status 1); nothing is written before they meet.
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
rdzv_timeout=${RDZV_TIMEOUT:-900}  # nodes of a cluster job may start minutes apart
if ! [[ $rdzv_timeout =~ ^[1-9][0-9]*$ ]]; then
    echo "train.sh: RDZV_TIMEOUT must be a whole number of seconds above 0, got '$rdzv_timeout'" >&2
    exit 2
fi
nnodes=${NNODES:-1} node_rank=${NODE_RANK:-0}
if [[ $nnodes =~ ^[0-9]+$ ]] && ! { [[ $node_rank =~ ^[0-9]+$ ]] && (( 10#$node_rank < 10#$nnodes )); }; then
    echo "train.sh: NODE_RANK must be one of 0 to NNODES-1 ($(( 10#$nnodes - 1 ))), a different one on each node," \
         "got '$node_rank'" >&2
    exit 2
fi
if [ "${NNODES:-1}" = "1" ] && [ -z "${MASTER_PORT:-}" ]; then
    rendezvous=(--standalone)  # a free port chosen by torchrun
else
    rendezvous=(--nnodes="${NNODES:-1}" --node-rank="${NODE_RANK:-0}"
                --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}"
                --rdzv-conf="timeout=$rdzv_timeout")
fi
# torchrun (python -m torch.distributed.run), with a rendezvous that fails told in one line
exec "$python" -m continual.runtime.launch "${rendezvous[@]}" --nproc-per-node="$nproc" main.py "$@"
