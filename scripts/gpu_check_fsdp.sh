#!/usr/bin/env bash
# IVON under FSDP2: the checks only GPUs can run (docs/guides/multi-gpu.md, "FSDP2: when the model outgrows one GPU").
# Accelerate enables FSDP only on accelerators, so on CPU the tests cover the optimizer and a hand-sharded loop
# (tests/optim/test_optim_fsdp.py) and this script covers the rest, on 2 CUDA GPUs of one machine:
#   1. the optimizer checks of tests/optim/test_optim_fsdp.py again, on CUDA with NCCL;
#   2. `accelerate launch` with an FSDP2 config trains `ivon-lora train recipes/demo.yaml` to the end, through the
#      Trainer, and writes the same run dir (adapter, posterior.safetensors, posterior_config.json) as a DDP run;
#   3. that run killed (kill -9) after its first checkpoint and resumed from it ends bitwise equal to the
#      uninterrupted one (adapter and posterior: every rank's noise generator restored);
#   4. `ivon-lora eval` scores the run trained under FSDP2 (the gathered posterior loads as any run's);
#   5. a 4-bit base under FSDP2 is refused with its one line (accelerate#3983, bitsandbytes#1945).
# Usage: scripts/gpu_check_fsdp.sh [OUT_DIR]   (about 2-4 minutes; the log is OUT_DIR/gpu_check_fsdp.log)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t ivon-fsdp-XXXX)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}
exec > >(tee "$OUT/gpu_check_fsdp.log") 2>&1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $(date +%T) $*"; }

step "environment"
"$PYTHON" - <<'EOF'
import accelerate, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)
print("GPUs:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
assert torch.cuda.device_count() >= 2, "needs 2 CUDA GPUs"
EOF

step "1. optimizer checks on CUDA + NCCL (tests/optim/test_optim_fsdp.py)"
IVON_FSDP_DEVICE=cuda "$PYTHON" -m pytest -q -p no:cacheprovider tests/optim/test_optim_fsdp.py

cat > "$OUT/fsdp2.yaml" <<'EOF'
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
num_processes: 2
mixed_precision: "no"
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_offload_params: false
EOF
TRAIN=(train recipes/demo.yaml use_cpu=false max_steps=200 save_strategy=steps save_steps=100
       per_device_train_batch_size=4 gradient_accumulation_steps=2 lora_dropout=0.1 max_train_samples=256
       max_eval_samples=32 final_eval_samples=0 logging_steps=20 disable_tqdm=true)
launch() { "$PYTHON" -m accelerate.commands.launch --config_file "$OUT/fsdp2.yaml" -m ivon_lora "$@"; }

step "2. accelerate launch (FSDP2, 2 GPUs) trains the demo to the end"
launch "${TRAIN[@]}" output_dir="$OUT/straight"
ls "$OUT/straight"
test -f "$OUT/straight/posterior.safetensors" && test -f "$OUT/straight/adapter_model.safetensors"

step "3. kill -9 after the first checkpoint, resume, compare bitwise"
setsid "$PYTHON" -m accelerate.commands.launch --config_file "$OUT/fsdp2.yaml" -m ivon_lora "${TRAIN[@]}" \
    output_dir="$OUT/resumed" &
LAUNCHER=$!
until [ -f "$OUT/resumed/checkpoint-100/trainer_state.json" ]; do
    kill -0 "$LAUNCHER" 2>/dev/null || { echo "the run ended before its first checkpoint"; exit 1; }
    sleep 0.1
done
kill -9 -- "-$LAUNCHER"
wait "$LAUNCHER" || true
test ! -f "$OUT/resumed/posterior.safetensors" || { echo "killed too late: the run had finished"; exit 1; }
launch "${TRAIN[@]}" output_dir="$OUT/resumed" resume_from_checkpoint="$OUT/resumed/checkpoint-100"
"$PYTHON" - "$OUT" <<'EOF'
import sys
from safetensors.torch import load_file
out = sys.argv[1]
for name in ("adapter_model.safetensors", "posterior.safetensors"):
    straight, resumed = load_file(f"{out}/straight/{name}"), load_file(f"{out}/resumed/{name}")
    assert straight.keys() == resumed.keys(), name
    differ = [key for key in straight if not straight[key].equal(resumed[key])]
    assert not differ, f"{name}: {differ[:3]} differ after the resume"
    print(f"{name}: {len(straight)} tensors bitwise equal")
EOF

step "4. ivon-lora eval on the run trained under FSDP2"
CUDA_VISIBLE_DEVICES=0 "$PYTHON" -m ivon_lora eval "$OUT/straight" --out "$OUT/eval"
ls "$OUT/eval"

step "5. a 4-bit base under FSDP2 is refused"
if launch "${TRAIN[@]}" output_dir="$OUT/quantized" quantization_bit=4 max_steps=2 > "$OUT/quantized.log" 2>&1; then
    echo "a 4-bit base under FSDP2 trained: it must be refused"; exit 1
fi
grep -q "4-bit or 8-bit base under FSDP2" "$OUT/quantized.log" || { tail -20 "$OUT/quantized.log"; exit 1; }
echo "refused: $(grep -o "optim='ivon' does not support a 4-bit[^;]*" "$OUT/quantized.log" | head -1)"

step "ALL FSDP2 GPU CHECKS PASSED"
