#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repository root, with the carried folder .gpu/:
#   .gpu/gpu_check.xz (stripped, xz-compressed build of examples/gpu_check.rs), .gpu/*.py, this script.
# Finds the CUDA runtime libraries, records the environment, runs every check and timing; logs go to $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  echo "== glibc"; ldd --version | head -1
  echo "== cuda dirs"; ls -d /usr/local/cuda* 2>&1; ls /usr/local/cuda/lib64 2>&1 | grep -E "libcudart|libcublas|libcurand|libnvrtc" | head -20
  echo "== python nvidia libs"; python3 -c "import nvidia, os; print(nvidia.__path__)" 2>&1
  echo "== libcuda"; ldconfig -p | grep -E "libcuda\.so|libcublas|libcudart|libcurand" | head
} > "$OUT/env.log" 2>&1
# library directories: the toolkit first, then PyTorch's pip wheels
LIBS=""
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  p=$(ls /usr/local/cuda/lib64/$so /usr/local/cuda*/lib64/$so /usr/local/cuda*/targets/x86_64-linux/lib/$so 2>/dev/null | head -1)
  [ -z "$p" ] && p=$(find / -xdev -name "$so" 2>/dev/null | head -1)
  [ -n "$p" ] && LIBS="$LIBS:$(dirname "$p")"
  echo "$so -> ${p:-MISSING}" >> "$OUT/env.log"
done
export LD_LIBRARY_PATH="${LIBS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$OUT/env.log"
cat "$OUT/env.log"
for f in .gpu/*.xz; do xz -dkf "$f"; chmod +x "${f%.xz}"; done
ldd .gpu/gpu_check | grep -E "not found|cuda|cublas|curand" | tee -a "$OUT/env.log"
