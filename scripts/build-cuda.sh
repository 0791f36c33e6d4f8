#!/usr/bin/env bash
# Build the CUDA flavour of Hearth on a machine that has no GPU and no CUDA toolkit installed, and
# collect what a GPU machine needs to check it (no Rust there) into one small folder.
#
#   scripts/build-cuda.sh            # toolkit (first run only), build, then dist/cuda/ and
#                                    # dist/carry/ (dist/cuda/ packed, plus gpu-check.sh: what
#                                    # to copy to a GPU machine; fails if over 64 MiB)
#   scripts/build-cuda.sh --smoke    # the same, then run the CUDA binary here (no GPU needed)
#
# The CUDA toolkit comes from NVIDIA's PyPI wheels, CUDA 13.0 (nvcc, cudart, cuBLAS, cuRAND, NVRTC,
# CCCL), installed into a virtualenv outside the source tree. CUDA 13.0 because:
#   * it matches a CUDA 13.0 driver (the 580 series): candle ships its kernels as PTX (ISA 9.0
#     from this toolkit) that the driver JIT-compiles, and PTX from a newer toolkit it refuses;
#   * candle 0.11 links cuBLAS, cuRAND, NVRTC and the CUDA runtime by soname (cudarc's
#     `dynamic-linking`), so the binary needs libcublas.so.13 & co. at run time; they are the ones
#     a CUDA 13 PyTorch install or the nvidia/cuda:13.0 images carry;
#   * the CUDA 12 `nvidia-cuda-nvcc-cu12` wheels ship ptxas only, no nvcc; the CUDA 13
#     `nvidia-cuda-nvcc` wheel is a full nvcc.
#
# Knobs (environment):
#   CUDA_COMPUTE_CAP      GPU generation the kernels are compiled for (default 90: H100/H200)
#   HEARTH_CUDA_TOOLKIT   where the toolkit virtualenv lives (default ~/.cache/hearth/cuda-13.0)
#   CARGO_TARGET_DIR      build folder (default target-cuda, kept apart from target/)
#   HEARTH_CUDA_DIST      output folder (default dist/cuda)
#   CARGO_BUILD_JOBS      parallel rustc jobs, as everywhere in cargo
# Run it under `nice -n 19` on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $arg (expected --smoke)" >&2; exit 2 ;;
    esac
done

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
TOOLKIT="${HEARTH_CUDA_TOOLKIT:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/cuda-13.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
DIST="${HEARTH_CUDA_DIST:-dist/cuda}"

# One CUDA release throughout; every pin is a 13.0 component.
WHEELS=(
    nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary, nvlink (pulls the three below)
    nvidia-cuda-crt==13.0.88      # nvcc's crt/ headers
    nvidia-nvvm==13.0.88          # cicc, libnvvm, libdevice
    nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, libcudart.so.13
    nvidia-cuda-cccl==13.0.85     # CUB / Thrust / libcu++ headers
    nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13
    nvidia-cublas==13.0.2.14      # libcublas.so.13, libcublasLt.so.13
    nvidia-curand==10.4.0.35      # libcurand.so.10 (CUDA 13.0's cuRAND)
)
CUDA_MAJOR=13
CUDARC_CUDA_VERSION=13000

step() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# 1. The toolkit: a virtualenv holding the wheels. They all unpack into one tree,
#    site-packages/nvidia/cu13/{bin,include,lib,nvvm}, laid out like a CUDA install.
install_toolkit() {
    local stamp="$TOOLKIT/.hearth-wheels"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${WHEELS[*]}" ]; then
        return
    fi
    step "installing the CUDA ${CUDA_MAJOR} toolkit wheels into $TOOLKIT"
    python3 -m venv "$TOOLKIT"
    "$TOOLKIT/bin/python" -m pip install --quiet --disable-pip-version-check "${WHEELS[@]}"
    echo "${WHEELS[*]}" >"$stamp"
}

cuda_root() {
    "$TOOLKIT/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' |
        sed "s|\$|/nvidia/cu${CUDA_MAJOR}|"
}

# 2. What the linker needs and the wheels lack:
#    * unversioned names (-lcublas looks for libcublas.so; the wheels have only libcublas.so.13);
#    * libcuda.so, the driver's library. A toolkit carries a link-time stub of it; the wheels do
#      not, so one is made here: every driver entry point cudarc declares, each answering
#      CUDA_ERROR_NO_DEVICE. The binary records only the soname libcuda.so.1 and gets the real
#      driver at run time. Put on LD_LIBRARY_PATH, the same stub stands in for a driver on a
#      machine without one (the smoke test below does that).
prepare_link_dir() {
    local root="$1" lib
    for lib in cublas:13 cublasLt:13 nvrtc:13 cudart:13 curand:10; do
        ln -sfn "lib${lib%%:*}.so.${lib##*:}" "$root/lib/lib${lib%%:*}.so"
    done
    mkdir -p "$root/lib/stubs"
    [ -f "$root/lib/stubs/libcuda.so.1" ] && return

    step "making the libcuda.so link stub"
    local cudarc
    cudarc=$(cargo metadata --format-version 1 --features hearth-engine/cuda |
        python3 -c 'import json, sys, os
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))')
    [ -n "$cudarc" ] || { echo "cudarc is not in the dependency graph" >&2; exit 1; }
    local src="$root/lib/stubs/libcuda-stub.c"
    {
        echo '/* Link-time stand-in for the NVIDIA driver library: no device, ever. */'
        echo 'typedef int CUresult;'
        echo 'static const char *message(CUresult e) {'
        echo '    return e == 100 ? "no CUDA-capable device is detected (no NVIDIA driver here)" : "unknown error";'
        echo '}'
        echo 'CUresult cuGetErrorString(CUresult e, const char **s) { *s = message(e); return 0; }'
        echo 'CUresult cuGetErrorName(CUresult e, const char **s) {'
        echo '    *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }'
        grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$cudarc"/src/driver/sys/*.rs |
            sed -E 's/pub unsafe fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
            grep -vxE 'cuGetErrorString|cuGetErrorName' |
            sed 's/.*/CUresult &(void) { return 100; }/'
    } >"$src"
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so.1" "$src"
    ln -sfn libcuda.so.1 "$root/lib/stubs/libcuda.so"
}

# ---------------------------------------------------------------------------------------------
install_toolkit
CUDA_ROOT="$(cuda_root)"
[ -x "$CUDA_ROOT/bin/nvcc" ] || { echo "no nvcc under $CUDA_ROOT" >&2; exit 1; }
prepare_link_dir "$CUDA_ROOT"

# nvcc and the toolkit root for candle-kernels' build (cudaforge: NVCC, then PATH) and for
# cudarc's (CUDA_HOME / CUDA_PATH / CUDA_ROOT: link search in lib/ and lib/stubs/).
export PATH="$CUDA_ROOT/bin:$PATH"
export NVCC="$CUDA_ROOT/bin/nvcc"
export CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_ROOT
export CUDARC_CUDA_VERSION
export LD_LIBRARY_PATH="$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvcc --version | tail -n 2 >&2

step "building hearth, loadgen and the engine's tests (release, --features cuda, sm_${CUDA_COMPUTE_CAP}) into $CARGO_TARGET_DIR"
# One cargo invocation, so that the binaries and the test executables share one feature
# resolution and the dependencies (candle above all, and its CUDA kernels) are built once.
artifacts="$CARGO_TARGET_DIR/hearth-cuda-artifacts.json"
mkdir -p "$CARGO_TARGET_DIR" # the redirect below opens the file before cargo makes the folder
cargo build --release -p hearth-cli -p hearth-loadgen -p hearth-engine --features hearth-cli/cuda \
    --bins --tests --message-format json-render-diagnostics >"$artifacts"

step "collecting $DIST"
rm -rf "$DIST"
mkdir -p "$DIST"
# The two binaries, the engine's unit tests and its parity test against transformers' logits.
python3 - "$DIST" "$artifacts" <<'PY'
import json, shutil, sys
wanted = {
    ("bin", "hearth", False): "hearth",
    ("bin", "loadgen", False): "loadgen",
    ("lib", "hearth_engine", True): "engine-unit-tests",
    ("test", "parity", True): "engine-parity-tests",
}
for line in open(sys.argv[2]):
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    name = wanted.get((target["kind"][0], target["name"], msg["profile"]["test"]))
    if name:
        shutil.copy(msg["executable"], f"{sys.argv[1]}/{name}")
PY
for exe in hearth loadgen engine-unit-tests engine-parity-tests; do
    [ -x "$DIST/$exe" ] || { echo "$exe was not built" >&2; exit 1; }
done
strip "$DIST"/hearth "$DIST"/loadgen "$DIST"/engine-*-tests
# The parity fixtures (the test finds them through HEARTH_TEST_FIXTURES) and the GPU-side scripts.
cp -r crates/hearth-engine/tests/fixtures "$DIST/fixtures"
cp scripts/gpu-check.sh scripts/gpu_bench.py "$DIST/"
cat >"$DIST/BUILD-INFO" <<EOF
hearth $(git describe --always --dirty 2>/dev/null || echo unknown)
CUDA toolkit 13.0 (PyPI wheels), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP
needs at run time: $(objdump -p "$DIST/hearth" | awk '/NEEDED/ && /cu|nvrtc/ {print $2}' | tr '\n' ' ')
EOF
# What travels to a GPU machine: dist/carry/, the same folder as one archive (the executables
# embed candle's CUDA kernels, PTX text and SASS, and shrink about sevenfold) and gpu-check.sh,
# which unpacks it there. A GPU machine takes at most 64 MiB.
CARRY="$(dirname "$DIST")/carry"
rm -rf "$CARRY" "$(dirname "$DIST")/hearth-cuda.tar.xz"
mkdir -p "$CARRY"
tar -C "$(dirname "$DIST")" -cf - "$(basename "$DIST")" | xz -6 -T0 >"$CARRY/hearth-cuda.tar.xz"
cp scripts/gpu-check.sh "$CARRY/"
ls -l "$DIST" "$CARRY" >&2
du -sh "$DIST" "$CARRY" >&2
carry_mib=$(du -sm "$CARRY" | cut -f1)
if ((carry_mib > 64)); then
    echo "$CARRY is $carry_mib MiB: over the 64 MiB a GPU machine takes" >&2
    exit 1
fi

if [ "$SMOKE" = 1 ]; then
    step "smoke test on this machine (no GPU: the stub stands in for the driver)"
    export LD_LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs"
    "$DIST/hearth" --version
    echo "-- hearth's device tests, CUDA build, no device" >&2
    cli_tests=$(python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "hearth" and m["profile"]["test"]:
        print(m["executable"])' "$artifacts")
    "$cli_tests" device:: -q
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp -r models/tiny-llama "$scratch/gpu-llama"
    sed -i 's/^  gpu: false/  gpu: true/' "$scratch/gpu-llama/cog.yaml"
    # --device cuda: the package is refused, saying why; --device auto: it falls back to the CPU.
    for case in "cuda:package refused.*no usable CUDA device" "auto:falling back to the CPU"; do
        device="${case%%:*}" expected="${case#*:}"
        echo "-- hearth serve --device $device (package asks for a GPU)" >&2
        timeout 20 "$DIST/hearth" serve --device "$device" --model "$scratch/gpu-llama" \
            --addr 127.0.0.1:0 >"$scratch/$device.log" 2>&1 || true
        sed 's/\x1b\[[0-9;]*m//g' "$scratch/$device.log" >"$scratch/$device.txt"
        grep -E 'CUDA|model ready' "$scratch/$device.txt" >&2
        grep -qE "$expected" "$scratch/$device.txt" || { echo "expected: $expected" >&2; exit 1; }
    done
    grep -q 'model ready.*device="cpu"' "$scratch/auto.txt" || { echo "no CPU fallback" >&2; exit 1; }
    echo "-- $CARRY/gpu-check.sh env: unpacks the archive and starts the check (no GPU here)" >&2
    GPU_CHECK_UNPACK="$scratch/unpack" GPU_CHECK_OUT="$scratch/check-out" \
        "$CARRY/gpu-check.sh" env >"$scratch/check.txt" 2>&1 || true
    grep -E 'unpacking|== environment|hearth [0-9]' "$scratch/check.txt" >&2
    grep -q '^hearth [0-9]' "$scratch/check.txt" || { echo "the carried build did not start" >&2; exit 1; }
fi
