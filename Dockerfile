# The autoscaler image (the deployment in manifests/base runs `qscale run --config ...`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qscale qscale
COPY policies policies
COPY autoscaler autoscaler
COPY server server
COPY simulations simulations
RUN pip install --no-cache-dir . && useradd --uid 10001 --no-create-home qscale
USER 10001
ENTRYPOINT ["qscale"]
