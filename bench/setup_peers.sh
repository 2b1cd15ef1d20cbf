#!/usr/bin/env bash
# Optional, never in CI: build llama.cpp's `llama-server` from the sources vendored in the
# llama-cpp-python sdist (as ../shared/peers.md describes) and convert Softserve's cached fp32
# weights to F32 and Q8_0 GGUFs, so `python -m bench.peers` compares the same weights.
# ~10 minutes on 2 cores. Output: $PEERS (default ~/.cache/softserve/peers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEERS=${PEERS:-$HOME/.cache/softserve/peers}
VERSION=0.3.36
mkdir -p "$PEERS"
SRC="$PEERS/llama_cpp_python-$VERSION/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
  "$PY" -m pip download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$PEERS/dl"
  tar xzf "$PEERS/dl/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS"
fi
if [ ! -x "$PEERS/build/bin/llama-server" ]; then
  # LLAMA_USE_PREBUILT_UI=OFF: otherwise the build tries to download its web UI and fails.
  cmake -S "$SRC" -B "$PEERS/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  cmake --build "$PEERS/build" -j 2 --target llama-server llama-quantize
fi
# The fp32 HF folder Softserve de-quantized from the embedded GGUF (made on first start).
HF=$("$PY" - <<'EOF'
from app.model.loader import convert_gguf_cached, locate_default_gguf
from app.settings import Settings
print(convert_gguf_cached(locate_default_gguf(), Settings().cache_dir))
EOF
)
# The converter tries sentencepiece first (and falls back to the BPE vocab only once the module
# exists): install it beside the peers, not into the project's environment.
if [ ! -d "$PEERS/pydeps/sentencepiece" ]; then
  "$PY" -m pip install --quiet --target "$PEERS/pydeps" sentencepiece
fi
for t in f32 q8_0; do
  if [ ! -f "$PEERS/smollm2-135m-$t.gguf" ]; then
    PYTHONPATH="$SRC/gguf-py:$PEERS/pydeps" "$PY" "$SRC/convert_hf_to_gguf.py" "$HF" --outtype "$t" \
      --outfile "$PEERS/smollm2-135m-$t.gguf"
  fi
done
echo "peers ready in $PEERS"
