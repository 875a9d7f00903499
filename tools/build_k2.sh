#!/usr/bin/env bash
# Build a CPU k2 wheel offline from ../shared/vendor/k2 against this environment's torch, and install it.
#
#   tools/build_k2.sh                 # or: make k2
#
# Environment:
#   PYTHON      the project's interpreter                 [.venv/bin/python]
#   K2_VENDOR   folder with the k2 and pybind11 archives  [../shared/vendor/k2]
#   K2_CACHE    sources, build tree and wheels (outside the work tree)
#               [~/.cache/asr-distill/k2]
#   K2_JOBS     parallel compile jobs                     [nproc]
#
# k2's Python package refuses to import under a torch other than the one it was built with, so the wheel is kept
# per torch version (K2_CACHE/wheels/torch-<version>/) and rebuilt only for a new one.  What is built: k2's C++
# core and its Python module (_k2), without CUDA, tests, benchmarks, and without k2/torch (C++ decoding binaries
# that would also need kaldifeat): the Python package needs none of them.  Elsewhere, install k2-fsa's own wheel
# for your torch instead (https://k2-fsa.github.io/k2/installation/); asr-distill runs without k2.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$here/.venv/bin/python}
K2_VENDOR=${K2_VENDOR:-$here/../shared/vendor/k2}
K2_CACHE=${K2_CACHE:-$HOME/.cache/asr-distill/k2}
K2_JOBS=${K2_JOBS:-$(nproc)}

die() { echo "build_k2: error: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "$PYTHON: no such interpreter (make install first, or set PYTHON)"
k2_tar=$(ls "$K2_VENDOR"/k2-*.tar.gz 2>/dev/null | head -1) || true
pybind_zip=$(ls "$K2_VENDOR"/pybind11-*.zip 2>/dev/null | head -1) || true
[ -n "$k2_tar" ] || die "no k2-*.tar.gz in $K2_VENDOR (set K2_VENDOR)"
[ -n "$pybind_zip" ] || die "no pybind11-*.zip in $K2_VENDOR (set K2_VENDOR)"
command -v cmake >/dev/null || die "cmake not found (apt-get install cmake)"
command -v g++ >/dev/null || die "g++ not found (apt-get install g++)"

torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)') || die "torch does not import in $PYTHON"
if "$PYTHON" -c 'import k2' 2>/dev/null; then
  echo "build_k2: k2 already imports under torch $torch_version: nothing to do" >&2
  exit 0
fi

wheels=$K2_CACHE/wheels/torch-$torch_version
wheel=$(ls "$wheels"/k2-*.whl 2>/dev/null | head -1) || true
if [ -z "$wheel" ]; then
  mkdir -p "$K2_CACHE" "$wheels"
  src=$K2_CACHE/$(basename "$k2_tar" .tar.gz)
  pybind=$K2_CACHE/$(basename "$pybind_zip" .zip)
  [ -d "$src" ] || tar -xzf "$k2_tar" -C "$K2_CACHE"
  [ -d "$pybind" ] || (cd "$K2_CACHE" && unzip -q "$pybind_zip")
  # leave out k2/torch (see above): its block in k2/CMakeLists.txt is the only user of kaldifeat
  if grep -q '^    add_subdirectory(torch)' "$src/k2/CMakeLists.txt"; then
    sed -i 's/^    include(kaldifeat)$/    # include(kaldifeat)  (asr-distill: k2\/torch not built)/;
            s/^    add_subdirectory(torch)$/    # add_subdirectory(torch)  (asr-distill: not built)/' \
      "$src/k2/CMakeLists.txt"
  fi
  # the pybind11 that k2 pins types make_tuple's result by its arguments, so the two branches of Ragged's pickle
  # lambda deduce different return types (g++ 12: "inconsistent types ... deduced for lambda return type"):
  # declare it, as k2's own v2/any.cu does
  sed -i 's/^      \[\](const PyClass &obj) {$/      [](const PyClass \&obj) -> py::tuple {/' \
    "$src/k2/python/csrc/torch/ragged.cu"
  "$PYTHON" -m pip install -q "setuptools>=64" wheel
  start=$(date +%s)
  echo "build_k2: building k2 against torch $torch_version with $K2_JOBS job(s) in $src/build (log: $K2_CACHE/build.log)" >&2
  (
    cd "$src"
    export K2_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DK2_WITH_CUDA=OFF -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
-DFETCHCONTENT_SOURCE_DIR_PYBIND11=$pybind"
    export K2_MAKE_ARGS="-j$K2_JOBS"
    # (setup.py's build tree: $src/build; a build_ext --build-temp given here is not the one bdist_wheel reuses)
    "$PYTHON" setup.py bdist_wheel -d "$wheels.tmp"
  ) > "$K2_CACHE/build.log" 2>&1 || { tail -40 "$K2_CACHE/build.log" >&2; die "the build failed (log above; whole log: $K2_CACHE/build.log)"; }
  wheel=$(ls "$wheels.tmp"/k2-*.whl | head -1)
  mv "$wheel" "$wheels/" && rmdir "$wheels.tmp" 2>/dev/null || true
  wheel=$wheels/$(basename "$wheel")
  echo "build_k2: built $(basename "$wheel") in $(( $(date +%s) - start )) s" >&2
fi

# --no-deps: the wheel pins torch==<this torch> (already here) and graphviz (only for drawing FSAs)
"$PYTHON" -m pip install -q --no-deps --force-reinstall "$wheel"
"$PYTHON" -c 'import importlib.metadata as m, k2; print("build_k2: k2", m.version("k2"), "imports; CUDA:", k2.with_cuda)'
