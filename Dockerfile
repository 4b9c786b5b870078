# smimeca: multi-stage build, static binary, distroless non-root image.
#   docker build -t smimeca .
#   docker run -p 8080:8080 -p 9443:9443 -v smimeca-data:/data \
#     -e SMIMECA_VAULT_ADDR=https://vault.example.com:8200 -e SMIMECA_VAULT_TOKEN_FILE=/run/secrets/vault-token \
#     -e SMIMECA_DEVICE_IDENTITY_CA=/run/secrets/mdm-identity-ca.pem -e SMIMECA_PUBLIC_URL=https://ca.example.com smimeca
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
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/smimeca ./cmd/smimeca \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/smimeca /usr/local/bin/smimeca
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
