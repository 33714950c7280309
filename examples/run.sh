#!/usr/bin/env bash
# Continued pre-training of a BitCPM model with DeepSpeed ZeRO.
#
#   MODEL_PATH=/path/to/BitCPM-1B TRAIN_FILE=corpus.jsonl bash run.sh
#   bash run.sh --tiny                                  # 2 CPU processes, under a minute
#   DS_CONFIG=ds_config_zero3.json bash run.sh --tiny   # the same with ZeRO-3
#
# Environment: NPROC (processes per node, default 8; 2 with --tiny),
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DS_CONFIG, MODEL_PATH,
# TRAIN_FILE, OUTPUT_DIR. Arguments after the script name go to train.py.
set -euo pipefail
cd "$(dirname "$0")"

DS_CONFIG=${DS_CONFIG:-ds_config_zero2.json}
OUTPUT_DIR=${OUTPUT_DIR:-output/bitcpm-cpt}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

DATA_ARGS=(--model_name_or_path "${MODEL_PATH:-/path/to/BitCPM-1B}" --train_file "${TRAIN_FILE:-/path/to/corpus.jsonl}")
HAS_ACCELERATOR='
import sys, torch
try:
    import torch_npu  # noqa: F401
except ImportError:
    pass
sys.exit(not (torch.cuda.is_available() or (hasattr(torch, "npu") and torch.npu.is_available())))'
if [[ " $* " == *" --tiny "* ]]; then
    # The tiny run builds its own model and data, on CPU unless an accelerator is present.
    DATA_ARGS=()
    NPROC=${NPROC:-2}
    if ! python -c "$HAS_ACCELERATOR" 2>/dev/null; then
        export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
    fi
fi
NPROC=${NPROC:-8}

torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    train.py \
    --deepspeed "$DS_CONFIG" \
    "${DATA_ARGS[@]}" \
    --output_dir "$OUTPUT_DIR" \
    --max_seq_length 4096 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 8 \
    --learning_rate 1e-4 \
    --warmup_steps 100 \
    --max_steps 10000 \
    --logging_steps 10 \
    "$@"
