# The malstrom image: the library and the `malstrom` command, installed by the same script CI
# runs (scripts/setup.sh). Jobs add their code on top (FROM malstrom ... COPY jobs/ /app/jobs/)
# or mount it (a ConfigMap volume); see docs/deployment.md.
#
#   docker build -t malstrom:0.1.0 .
#   docker build --build-arg EXTRAS=objectstore,kafka -t malstrom:0.1.0-slim .
FROM python:3.11-slim

# Extras baked in (comma-separated): all = kafka, postgres, parquet, objectstore, slatedb, k8s.
ARG EXTRAS=all

WORKDIR /opt/malstrom
COPY pyproject.toml setup.py README.md LICENSE ./
COPY scripts/setup.sh scripts/setup.sh
COPY src/ src/
# gcc only while installing: setup.sh builds the C extensions (keyed/_croute.c, engine/_cpack.c), then it goes.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && bash scripts/setup.sh --lib --extras "$EXTRAS" \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && rm -rf /root/.cache/pip \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /app malstrom \
    && mkdir -p /app && chown malstrom:malstrom /app

ENV PATH=/opt/malstrom/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR
USER 10001
WORKDIR /app
# 7000: a coordinator's gRPC port (workers, admin, health); 7001: a worker's (data, health).
EXPOSE 7000 7001
ENTRYPOINT ["malstrom"]
CMD ["--help"]
