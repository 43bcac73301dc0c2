#!/usr/bin/env bash
# The rollout engine's GPU numbers in one call (benchmarks/RESULTS.md, "Open (GPU)"): the
# static sampler against the roofline, continuous vs static batching on long-tailed lengths,
# shared vs repeated prompt caches for GRPO groups, and a 1B GRPO step's phases, synchronous
# and with async rollouts. Sized for one H100 in under 9 minutes; each part has its own
# timeout, so one slow part does not lose the others.
#
# Here, once (copies the pure-Python packages the GPU image may lack into .device/site,
# ignored by git):   bash benchmarks/device_rollout_engine.sh --prepare
# On the device (the `device` tool's run, carry [".device"], timeout_s 600):
#                    bash benchmarks/device_rollout_engine.sh
# A CPU smoke run of the same script (seconds per part, not a result):
#                    TINY=1 bash benchmarks/device_rollout_engine.sh
# Results: JSON files and logs under $OUT (default /tmp/rollout_engine_out); the last lines
# printed are a summary.
set -u
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf .device/site && mkdir -p .device/site
  for pkg in ml_collections tensorboardX absl safetensors; do
    cp -r "$site/$pkg" .device/site/
  done
  du -sh .device/site
  exit 0
fi
OUT=${OUT:-/tmp/rollout_engine_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
extra=/tmp/rollout_engine_site
rm -rf "$extra" && mkdir -p "$extra"
for pkg in ml_collections tensorboardX absl safetensors; do  # only what the image lacks
  if ! $PY -c "import $pkg" 2>/dev/null && [ -d ".device/site/$pkg" ]; then
    ln -s "$PWD/.device/site/$pkg" "$extra/$pkg"
  fi
done
export PYTHONPATH=".:$extra"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" | tee "$OUT/env.txt"
git log --oneline -1 2>/dev/null | tee -a "$OUT/env.txt"

if [ -n "${TINY:-}" ]; then
  tiny=--tiny; steps=3
  shape=(--config experiments/configs/grpo.py:smoke)
else
  tiny=; steps=6
  shape=(--config experiments/configs/grpo.py
    "--config.model.overrides={'hidden_size': 2048, 'intermediate_size': 8192, 'num_layers': 16, 'num_heads': 32, 'num_kv_heads': 8, 'head_dim': 64, 'max_position_embeddings': 2048}"
    --config.model.dtype=bfloat16 --config.train.batch_size=64
    --config.rollout.num_generations=8 --config.data.max_prompt_length=128
    --config.rollout.max_new_tokens=256 --config.loss.beta=0.04)
fi
part() {  # part NAME SECONDS COMMAND...: runs COMMAND with a timeout, logs to $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/parts.txt"
}
part sampler 120 $PY benchmarks/sampler_throughput.py $tiny --json "$OUT/sampler.json"
# The same with the decode loop captured whole as CUDA graphs (XLA command buffers for the
# while loop and its conditionals): if per-kernel launches are what keeps the static shape
# under 75% of the roofline, this closes the gap. (Not on CPU: the flag is XLA:GPU's.)
[ -z "${TINY:-}" ] && XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1" \
  part sampler_graphs 120 $PY benchmarks/sampler_throughput.py --json "$OUT/sampler_graphs.json"
part long_tail 150 $PY benchmarks/rollout_engine.py --mode long-tail $tiny --json "$OUT/long_tail.json"
part grpo_groups 120 $PY benchmarks/rollout_engine.py --mode grpo $tiny --json "$OUT/grpo_groups.json"
for mode in sync async; do
  flag=(); [ $mode = async ] && flag=(--config.rollout.async_rollouts=True)
  rm -rf "/tmp/grpo_1b_$mode"
  part "train_$mode" 150 $PY -m alignax.cli train "${shape[@]}" --workdir "/tmp/grpo_1b_$mode" \
    --config.train.steps=$steps --config.train.eval_every=0 --config.train.export_hf=False \
    "${flag[@]}"
  part "step_$mode" 30 $PY benchmarks/rollout_engine.py --mode step --workdir "/tmp/grpo_1b_$mode" \
    --json "$OUT/step_$mode.json"
done
echo "== summary"
cat "$OUT/parts.txt"
for f in sampler sampler_graphs long_tail grpo_groups step_sync step_async; do
  [ -f "$OUT/$f.log" ] && { echo "-- $f"; tail -n 12 "$OUT/$f.log" | cut -c1-200; }
done
