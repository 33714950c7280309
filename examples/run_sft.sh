#!/usr/bin/env bash
# Supervised fine-tuning (SFT) of a BitCPM model with DeepSpeed ZeRO.
#
#   MODEL_PATH=/path/to/BitCPM-1B TRAIN_FILE=sft.jsonl bash run_sft.sh
#   bash run_sft.sh --tiny                                  # 2 CPU processes, under a minute
#   DS_CONFIG=ds_config_zero3.json bash run_sft.sh --tiny   # the same with ZeRO-3
#
# Environment: NPROC (processes per node, default 8; 2 with --tiny),
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DS_CONFIG, MODEL_PATH,
# TRAIN_FILE, OUTPUT_DIR. Arguments after the script name go to train_sft.py.
set -euo pipefail
cd "$(dirname "$0")"

DS_CONFIG=${DS_CONFIG:-ds_config_zero2.json}
OUTPUT_DIR=${OUTPUT_DIR:-output/bitcpm-sft}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

DATA_ARGS=(--model_name_or_path "${MODEL_PATH:-/path/to/BitCPM-1B}" --train_file "${TRAIN_FILE:-/path/to/sft.jsonl}")
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
    train_sft.py \
    --deepspeed "$DS_CONFIG" \
    "${DATA_ARGS[@]}" \
    --output_dir "$OUTPUT_DIR" \
    --max_seq_length 2048 \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 4 \
    --learning_rate 1e-5 \
    --warmup_steps 20 \
    --max_steps 2000 \
    --logging_steps 10 \
    "$@"
