#!/usr/bin/env bash
# The issue-19 accelerator check, one script of a few minutes: our forward
# pass and train steps at batch 32 x 512 inputs in bfloat16 for T5.1.1 small
# and base, each printing tokens/s and the share of the bf16 matmul peak
# measured in the same process (JSON lines into $OUT, or ./gpu_check/).
#
#     bash bench/gpu_check.sh            # on the machine with the GPU
#
# The chip's nominal dense bf16 peak (e.g. H100/H200 SXM: 989 TFLOP/s) is
# the other yardstick; compare achieved_gflops against it by hand.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check}
mkdir -p "$out"
python -c 'import jax; print(jax.devices())' | tee "$out/devices.txt"
for size in small base; do
  python bench/forward.py --size "$size" --batch 32 --inputs 512 --targets 64 \
      --dtype bfloat16 --repeats 5 > "$out/forward_$size.json"
  for system in prompt model; do
    python bench/train_step.py --only "$system" --size "$size" --batch 32 --inputs 512 \
        --targets 8 --dtype bfloat16 --dropout 0.1 --repeats 5 > "$out/train_step_${system}_$size.json"
  done
done
python - "$out" <<'PY'
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + '/*.json')):
  d = json.load(open(path))
  if d.get('benchmark') == 'forward':
    for k in ('forward', 'forward_backward'):
      r = d[k]
      print(f"{d['size']} {k}: {r['step_seconds']} s, {r['tokens_per_second']} tokens/s, "
            f"{r['achieved_gflops']} GFLOP/s = {r['fraction_of_matmul_peak']} of the "
            f"measured {d['matmul_peak_gflops']} GFLOP/s bf16 matmul")
  else:
    tokens = 32 * (512 + 8)
    print(f"{path.split('/')[-1]}: {d['step_seconds']} s, {tokens / d['step_seconds']:.0f} "
          f"tokens/s, {d['model_gflops_per_step'] / d['step_seconds']:.0f} GFLOP/s")
PY
