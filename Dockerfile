# The hub only: no database or broker binaries (compose.yaml runs those as their own services).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap passt nftables libseccomp2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub hub
COPY connectors connectors
COPY devstack devstack
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["python", "-m", "hub", "serve"]
