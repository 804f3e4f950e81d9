# syntax=docker/dockerfile:1
# Stage 1: build the wheel (Rust extension + Python package) with maturin.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin>=1.9.4,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock* pyproject.toml README.md ./
COPY rust ./rust
COPY python ./python
RUN maturin build --release --out /wheels

# Stage 2: a slim runtime with only the wheel and its dependencies.
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/trackgate trackgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER trackgate
WORKDIR /var/lib/trackgate
ENV TRACKGATE_LOG_LEVEL=info
# OTLP/HTTP on 4318 and OTLP/gRPC on 4317, both on every interface (the defaults are loopback,
# unreachable from outside the container). The Fluent forward listener (24224) is off unless
# [receivers.forward] listen is set in a config; publish its port too when it is.
EXPOSE 4318 4317
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:4318/healthz').status != 200)"
# Inside a container the listeners are not loopback, so serve requires bearer tokens:
#   docker run -e TRACKGATE_TOKENS=<token>[,<token>...] -p 4318:4318 -p 4317:4317 trackgate
# (or a config with [server] tokens, or allow_unauthenticated = true on a trusted network).
ENTRYPOINT ["trackgate"]
CMD ["serve", "--listen", "0.0.0.0:4318", "--grpc-listen", "0.0.0.0:4317"]
