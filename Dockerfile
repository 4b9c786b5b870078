# smimeca: multi-stage build; cgo binary (PKCS#11 modules are C libraries) on
# Debian slim with SoftHSM2's module, non-root.
#   docker build -t smimeca .
#   docker run -p 8080:8080 -p 9443:9443 -v smimeca-data:/data \
#     -e SMIMECA_VAULT_ADDR=https://vault.example.com:8200 -e SMIMECA_VAULT_TOKEN_FILE=/run/secrets/vault-token \
#     -e SMIMECA_DEVICE_IDENTITY_CA=/run/secrets/mdm-identity-ca.pem -e SMIMECA_PUBLIC_URL=https://ca.example.com smimeca
# CA keys: by default 0600 files under /data/ca (SMIMECA_KMS=softkms). In an HSM:
#   mount the vendor's PKCS#11 module (and its configuration) and set
#     -e 'SMIMECA_KMS=pkcs11:module-path=/opt/hsm/libvendor.so;token=smimeca?pin-source=/run/secrets/hsm-pin'
#   or keep them in the SoftHSM2 token the image can make on the data volume:
#     docker run --rm -v smimeca-data:/data --entrypoint smimeca-softhsm smimeca /data/softhsm   # prints the URI
#     then -e SOFTHSM2_CONF=/data/softhsm/softhsm2.conf -e 'SMIMECA_KMS=<that URI>'.
# `smimeca init` with the same flags and environment makes the keys before the first serve.
# Port 9090 is the ops listener (/healthz for probes, /metrics): publish it
# to the cluster's internal network only, never to the internet.
# The image holds no Vault: point it at an operator-run one (without one the
# escrow API is off); the embedded single-machine Vault is `make run`'s.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# libcrypto: RSA key files signed and decrypted by OpenSSL (libssl3 is in
# the runtime image already, as SoftHSM2's dependency).
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev \
 && CGO_ENABLED=1 go build -trimpath -tags libcrypto -ldflags "-s -w -X main.version=${VERSION}" -o /out/smimeca ./cmd/smimeca \
 && mkdir -p /out/data

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --home-dir /data --shell /usr/sbin/nologin smimeca
COPY --from=build /out/smimeca /usr/local/bin/smimeca
COPY --from=build /src/scripts/softhsm.sh /usr/local/bin/smimeca-softhsm
COPY --from=build --chown=65532:65532 /out/data /data
ENV SMIMECA_DATA=/data \
    SMIMECA_HTTP_ADDR=:8080 \
    SMIMECA_GRPC_ADDR=:9443 \
    SMIMECA_OPS_ADDR=:9090
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080 9443 9090
ENTRYPOINT ["/usr/local/bin/smimeca"]
CMD ["serve"]
