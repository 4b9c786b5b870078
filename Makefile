# smimeca — the two set-up commands are `make run` and `make test`.
SHELL := /bin/bash
export PATH := $(HOME)/.cache/smimeca/bin:$(PATH)
GO ?= go
BIN := bin/smimeca
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
## GOTAGS: build tags of smimeca and its tests. libcrypto (RSA key files signed and decrypted by the system's
##         OpenSSL, ~4x Go's speed; ca/keystore/libcrypto) whenever libcrypto's headers are installed
##         (scripts/deps.sh installs them); GOTAGS= builds pure Go. Evaluated when a recipe runs, after deps.
GOTAGS ?= $(shell pkg-config --exists libcrypto 2>/dev/null && echo libcrypto)
export SMIMECA_GOTAGS = $(GOTAGS)

.PHONY: cluster readme-test run test build deps vault unit e2e chaos soak fuzz fuzz-smoke fuzz-keep bench-scep bench-scale bench-import bench-bundle bench-ocsp proto docker vet lint clean

## run: build and start CA + SCEP + gRPC + escrow on the embedded default (data in ./data, kept across
##      restarts). Without $$SMIMECA_VAULT_ADDR it runs its own single-machine Vault under data/vault;
##      without $$SMIMECA_KMS the CA keys are made and kept in a SoftHSM2 token under data/softhsm.
run: build
	@DATA="$${SMIMECA_DATA:-data}"; mkdir -p "$$DATA"; \
	if [ -z "$$SMIMECA_KMS" ]; then \
	  export SMIMECA_KMS="$$(./scripts/softhsm.sh "$$DATA/softhsm")" SOFTHSM2_CONF="$$(cd "$$DATA" && pwd)/softhsm/softhsm2.conf"; \
	fi; \
	if [ -z "$$SMIMECA_VAULT_ADDR" ]; then \
	  VB=$$(./scripts/vault.sh) && exec ./$(BIN) serve --data "$$DATA" --embedded-vault --vault-bin "$$VB" --ldap-addr :1389 --asset-addr :8443; \
	else exec ./$(BIN) serve --data "$$DATA" --ldap-addr :1389 --asset-addr :8443; fi

## build: build the smimeca binary into bin/
build:
	$(GO) build -trimpath -tags "$(GOTAGS)" -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/smimeca

## test: install what the tests need, then vet, lint, unit tests (race, kept fuzz corpora replayed), e2e tests
##       with real clients, a fuzz smoke (5 000 runs per target; `make fuzz` is the long campaign)
test: deps vault vet lint unit e2e fuzz-smoke
	@echo "== phase done $$(date +%T)"

deps:
	@echo "== phase deps $$(date +%T)"
	./scripts/deps.sh

## vault: build the real Vault the tests and `make run` use (cached in ~/.cache/smimeca)
vault:
	@echo "== phase vault $$(date +%T)"
	./scripts/vault.sh >/dev/null

vet:
	@echo "== phase vet $$(date +%T)"
	$(GO) vet ./...
	$(GO) vet -tags libcrypto ./ca/keystore/...

## lint: gofmt, go.mod/go.sum as go mod tidy leaves them, and staticcheck (installed by deps)
lint:
	@echo "== phase lint $$(date +%T)"
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^tools/vault/')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) mod tidy -diff
	staticcheck ./...
	staticcheck -tags libcrypto ./ca/keystore/...

unit:
	@echo "== phase unit $$(date +%T)"
	$(GO) test -race -count=1 $$($(GO) list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./... | grep -v /test$$)
	@# The OpenSSL binding and the key store through it (cgo, linked externally: one package, not every test binary).
	if [ -n "$(GOTAGS)" ]; then $(GO) test -race -count=1 -tags "$(GOTAGS)" ./ca/keystore/...; fi

## e2e: the end-to-end suite with the CA keys in files; the tests that use each CA key through a server
##      (RA and issuing CA: scepclient, certmonger, both issuer key types; OCSP signer; profile signer;
##      PFX connector: PFX and Intune import, bundles; API CA: grpcurl; restart; the offline root) run
##      twice at once, as subtests softkms and softhsm (withEachKMS: each server's keys in a SoftHSM2
##      token of its own). SMIMECA_TEST_KMS=softhsm runs the whole suite with tokens.
## E2E_PARALLEL: end-to-end tests marked t.Parallel (those that wait on their own processes and assert no
##               timing) run this many at once; the fault, soak and timing tests run alone first
E2E_PARALLEL ?= 4
e2e:
	@echo "== phase e2e $$(date +%T)"
	$(GO) test -count=1 -timeout 20m -parallel $(E2E_PARALLEL) ./test/...

## chaos: the fault tests (smimeca killed under enrolment load, Vault stopped and killed) CHAOS_ROUNDS
##        times each, every round at a new random point; `make test` runs each once (in e2e)
## soak: 10 minutes of mixed load (enrol, renew, import, delete, bundle, revoke) with RSS and open files
##       checked for flatness; `make test` runs it for 20 s (in e2e)
SOAK ?= 10m
soak: deps vault
	set -o pipefail; SMIMECA_SOAK=$(SOAK) $(GO) test -count=1 -timeout 60m -run TestSoak -v ./test/ | grep -E '^(--- |ok|FAIL|panic)|rounds|_test.go'

CHAOS_ROUNDS ?= 10
chaos: deps vault
	set -o pipefail; $(GO) test -count=$(CHAOS_ROUNDS) -timeout 60m -run 'TestKillDuring|TestDiskFull|TestHealthFollowsVault|TestEmbeddedVaultKeepsEscrowAcrossRestart' -v ./test/ | grep -E '^(--- |ok|FAIL|panic)|killed at|_test.go'

## fuzz: a short coverage-guided run of every fuzz target (the kept corpus always runs in unit).
##       Minimising a new input is capped at 50 runs: uncapped, minimising the first find (a few KiB
##       of CMS, each run doing RSA under coverage instrumentation) took the whole budget.
##       The budget is a count of runs, not a duration: Go 1.26's fuzz coordinator can report its own
##       -fuzztime deadline as a failure ("context deadline exceeded", no input written; golang/go#75804,
##       fixed in Go 1.27). 60000 runs is 10–20 s per target at the rates CI sees (3 000–6 000/s).
FUZZTIME ?= 60000x
FUZZ_TARGETS := scep/FuzzPKIOperation pfx-connector/FuzzDecode policy/FuzzNormalizeEmail policy/FuzzCSR profile/FuzzParseSettings profile/FuzzRenderSyncML cmd/smimeca/FuzzManifest api/FuzzRequests pfx-connector/FuzzParseIntune ocsp/FuzzOCSPRespond directory/FuzzFilterAddresses
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "$(GO) test ./$${t%/*}/ -run '^$$' -fuzz $${t##*/} -fuzztime $(FUZZTIME) -fuzzminimizetime 50x"; \
	  $(GO) test ./$${t%/*}/ -run '^$$' -fuzz $${t##*/} -fuzztime $(FUZZTIME) -fuzzminimizetime 50x; \
	done

## fuzz-smoke: every fuzz target for 5 000 runs (make test), two at a time with one worker each
##             (scripts/fuzz-smoke.sh); the corpora under testdata/fuzz run in unit
fuzz-smoke:
	@echo "== phase fuzz-smoke $$(date +%T)"
	@GO=$(GO) FUZZTIME=5000x ./scripts/fuzz-smoke.sh $(FUZZ_TARGETS)

## fuzz-keep: copy what the fuzzer found (Go's fuzz cache) into the kept corpus under testdata/fuzz
fuzz-keep:
	./scripts/fuzz-keep.sh $(FUZZ_TARGETS)

## cluster: PostgreSQL, a 3-node Vault Raft cluster and 3 smimeca nodes on loopback behind a round-robin
##          front (HTTP 127.0.0.1:18080, gRPC 127.0.0.1:19443); prints how to point clients at it
cluster: deps vault build
	$(GO) build -o bin/cluster ./tools/cluster
	./bin/cluster -smimeca $(BIN)

## bench-scep: enrolments/s and p50/p99 of smimeca (keys in files, and in SoftHSM2) vs Debian's scepserver,
##             and each key store's crypto limit, over BENCH_RUNS=5 rounds
bench-scep: deps build
	./scripts/bench-scep.sh

## bench-scale: enrolments/s and GetUserBundle p50/p99, fresh vs a million certificates (250k devices, 250k users x 4
##              escrowed), bbolt and PostgreSQL, 3 nodes vs 1 (SCALE_CERTS, SCALE_DEVICES, SCALE_USERS to resize)
bench-scale: deps vault build
	./scripts/bench-scale.sh

## bench-import: PFX/s of importing 10 000 PFX into the real Vault, with the decode and Vault-write limits
bench-import: deps vault build
	./scripts/bench-import.sh

## bench-bundle: GetUserBundle p50/p99 and calls/s for 1, 10, 50 certificates at 1 and 16 callers
bench-bundle: deps vault build
	./scripts/bench-bundle.sh

## readme-test: run the README's marked shell blocks in order against a started server (part of make test, in e2e)
readme-test: deps vault
	set -o pipefail; $(GO) test -count=1 -run 'TestReadme' -v ./test/ | grep -E '^(--- |ok|FAIL|panic)|README block|_test.go'

## bench-ocsp: OCSP requests/s and p50/p99 of smimeca vs OpenSSL's responder (same certificates, same signer)
bench-ocsp: deps build
	$(GO) build -o bin/ocspbench ./tools/ocspbench
	./bin/ocspbench -smimeca $(BIN) -n $${BENCH_N:-20000} -c $${BENCH_C:-1,16}

## proto: regenerate the committed gRPC code
proto:
	./scripts/genproto.sh

docker:
	docker build -t smimeca:$(VERSION) .

clean:
	rm -rf bin
