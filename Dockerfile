# The operator image. It also runs the cert-refresh challenge server, and
# carries nginx so the operator can `nginx -t` a configuration before rolling
# it out. Non-root, read-only root filesystem friendly.
FROM python:3.11-slim-bookworm AS build
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
RUN uv export --frozen --no-dev --no-emit-project -o requirements.txt \
 && uv venv /opt/venv \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache -r requirements.txt \
 && VIRTUAL_ENV=/opt/venv uv pip install --no-cache --no-deps .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
ENTRYPOINT ["blogsite-operator"]
CMD ["run"]
