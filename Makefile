# rawlb build, test and lint entry points. `make test` is the README's test
# command; CI (.ci/run) runs it with test-slow, test-race and check-deploy.
# The privileged tests need root.
# sudo's secure_path usually lacks Go's own directory: fall back to it.
GO        ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
# Tests run go and make themselves (netlab builds the binary): keep Go on PATH.
export PATH := $(abspath $(dir $(GO))):$(PATH)
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOFLAGS_B := -trimpath -ldflags '$(LDFLAGS)'
BIN       := bin

.PHONY: all build test test-slow test-race test-unit check-deploy lint fuzz bench-go clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_B) -o $(BIN)/ ./cmd/...

# Every test target prints its progress through internal/testprogress (a
# line per package, a line per test in long packages, a failing test's
# output in full) and exits with go test's status. Unit tests run
# unprivileged; the end-to-end tests under rawlb/ need root, and
# RAWLB_REQUIRE_PRIVILEGED=1 turns their skip into a failure.
TESTPROGRESS = $(GO) run ./internal/testprogress -go $(GO) --

# First run on a fresh machine: `make test` and `make demo` run
# scripts/deps.sh (apt packages, Go modules) when the stamp of its last
# success is missing or older than deps.sh or go.sum, or a command the
# end-to-end tests run is missing; otherwise the check costs milliseconds.
# Without root it only says what to run: apt-get needs root, and the
# unprivileged tests need none of it. A stamp in a bin/ that this run
# created goes to the sudo user, so a later `make build` can write there.
DEPS_STAMP    := $(BIN)/.deps-ok
DEPS_COMMANDS := ip bridge nft iptables ethtool gcc git curl iperf3 wrk clang
.PHONY: deps
deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=; \
	for c in $(DEPS_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ] && [ $(DEPS_STAMP) -nt scripts/deps.sh ] && [ $(DEPS_STAMP) -nt go.sum ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "deps: not root, so not running scripts/deps.sh$${missing:+ (missing:$$missing)}; privileged tests will skip: sudo make $(or $(MAKECMDGOALS),test) installs what they need"; \
		exit 0; \
	fi; \
	echo "deps: bash scripts/deps.sh$${missing:+ (missing:$$missing)}"; \
	bash scripts/deps.sh || exit $$?; \
	[ -d $(BIN) ] || { mkdir -p $(BIN) && { [ -z "$$SUDO_UID" ] || chown "$$SUDO_UID:$$SUDO_GID" $(BIN); }; }; \
	touch $(DEPS_STAMP)

# What a developer runs: vet, then every test but the slow ones, which
# skip saying why: end-to-end tests named TestSlow* (test-slow; conventions
# at the top of rawlb/e2e_test.go) and the deploy checks that build programs
# or run make (check-deploy). Each runs only with its variable set.
test: deps
	$(GO) vet ./...
	$(TESTPROGRESS) -count=1 ./...

# -p 1: one package at a time, so that deploy's Docker test does not load
# the machine while rawlb's tests compare connection rates across windows.
test-slow:
	RAWLB_SLOW_TESTS=1 $(TESTPROGRESS) -count=1 -p 1 -run '^TestSlow' ./...

# The race detector over every package but deploy (builds and make runs,
# no concurrency of ours), so a new package is covered without editing
# this. RAWLB_SKIP_E2E=1 skips the end-to-end tests: -race would watch the
# test process, not the rawlb binary they start; -short trims what the
# packages trim for it. -race needs cgo (gcc).
RACE_PKGS = $(shell $(GO) list ./... | grep -v '/deploy$$')
test-race:
	RAWLB_SKIP_E2E=1 $(TESTPROGRESS) -count=1 -race -short $(RACE_PKGS)

# The old name of test-race.
test-unit: test-race

# deploy/'s checks in full: cross builds, make install, and every flag,
# address and port of the compose, Dockerfile and systemd files checked
# against the built programs.
check-deploy:
	RAWLB_DEPLOY_CHECKS=1 $(TESTPROGRESS) -count=1 ./deploy

lint: check-fastpath
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.6.1 ./...

# The fast path's eBPF object is committed (fastpath/fastpath_bpfel.o), so a
# build needs no clang. `make fastpath` rebuilds it from
# fastpath/bpf/fastpath.c; check-fastpath (part of lint) fails if the
# committed object is not what the source gives. The debug prefix map keeps
# the checkout's path out of the object's BTF.
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu -fdebug-prefix-map=$(CURDIR)=.
.PHONY: fastpath check-fastpath
fastpath:
	clang $(BPF_CFLAGS) -c fastpath/bpf/fastpath.c -o fastpath/fastpath_bpfel.o
check-fastpath:
	@tmp=$$(mktemp); clang $(BPF_CFLAGS) -c fastpath/bpf/fastpath.c -o $$tmp && cmp -s $$tmp fastpath/fastpath_bpfel.o; rc=$$?; rm -f $$tmp; \
	if [ $$rc != 0 ]; then echo "fastpath/fastpath_bpfel.o is not what fastpath/bpf/fastpath.c gives: run make fastpath"; exit 1; fi

# Short fuzz runs of every fuzz target (the seed corpus always runs in `make test`).
fuzz:
	$(GO) test ./packet -run '^$$' -fuzz FuzzParse -fuzztime 30s
	$(GO) test ./packet -run '^$$' -fuzz FuzzRewrite -fuzztime 30s
	$(GO) test ./packet -run '^$$' -fuzz FuzzSYNOptions -fuzztime 30s
	$(GO) test ./syncookie -run '^$$' -fuzz FuzzCookie -fuzztime 30s
	$(GO) test ./config -run '^$$' -fuzz FuzzParse -fuzztime 30s
	$(GO) test ./firewall -run '^$$' -fuzz FuzzParseRecord -fuzztime 30s
	$(GO) test ./healthcheck -run '^$$' -fuzz FuzzExpect -fuzztime 30s
	$(GO) test ./healthcheck -run '^$$' -fuzz FuzzHTTPReply -fuzztime 30s
	$(GO) test ./fastpath -run '^$$' -fuzz FuzzProgram -fuzztime 30s
	$(GO) test ./handoff -run '^$$' -fuzz FuzzDecode -fuzztime 30s
	$(GO) test ./internal/tools/connrate -run '^$$' -fuzz FuzzParse -fuzztime 30s

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./packet/... ./syncookie/... ./conntrack/... ./fastpath/...

clean:
	rm -rf $(BIN) dist

# --- Release builds and installation (deploy/) ---

# Static binaries of every command for each platform, into
# $(DIST)/<os>-<arch>/, with the same flags as `build`. linux/arm means ARMv7
# (GOARM=7), the usual 32-bit board.
DIST           ?= dist
CROSS_PLATFORMS := linux/amd64 linux/arm64 linux/arm

# Install layout: `make install DESTDIR=/tmp/pkg PREFIX=/usr` for a package.
# The unit's ExecStart is rewritten to the installed binary's path, and an
# existing /etc/default/rawlb (the admin's settings) is never overwritten.
PREFIX  ?= /usr/local
UNITDIR ?= /lib/systemd/system
INSTALL_PROGRAMS := rawlb chatserver chatclient

.PHONY: cross install

cross:
	@set -e; for p in $(CROSS_PLATFORMS); do \
		os=$${p%%/*}; arch=$${p#*/}; \
		echo "build $$os/$$arch -> $(DIST)/$$os-$$arch/"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=7 \
			$(GO) build $(GOFLAGS_B) -o $(DIST)/$$os-$$arch/ ./cmd/...; \
	done

install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/default
	install -m 0755 $(addprefix $(BIN)/,$(INSTALL_PROGRAMS)) $(DESTDIR)$(PREFIX)/bin/
	sed 's|^ExecStart=/usr/local/bin/rawlb |ExecStart=$(PREFIX)/bin/rawlb |' deploy/systemd/rawlb.service > $(DESTDIR)$(UNITDIR)/rawlb.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/rawlb.service
	@if [ -e $(DESTDIR)/etc/default/rawlb ]; then \
		echo "keeping the existing $(DESTDIR)/etc/default/rawlb"; \
	else \
		install -m 0644 deploy/systemd/rawlb.env $(DESTDIR)/etc/default/rawlb; \
	fi
	@# The unit runs -config /etc/rawlb/rawlb.yaml: the example, every field
	@# with its default, goes beside it for the admin to copy and edit.
	install -d $(DESTDIR)/etc/rawlb
	install -m 0644 config/testdata/example.yaml $(DESTDIR)/etc/rawlb/rawlb.yaml.example
	@[ -e $(DESTDIR)/etc/rawlb/rawlb.yaml ] || echo "next: cp /etc/rawlb/rawlb.yaml.example /etc/rawlb/rawlb.yaml, edit it, rawlb -check-config /etc/rawlb/rawlb.yaml"

# --- Container image (deploy/docker/) ---

# rawlb:latest and rawlb:demo (deploy/docker-compose.yml's), FROM scratch
# around the static binaries of `build` plus idle (the compose client
# container's command: scratch has no sleep), with $(BIN) as the context: no
# base image, no registry, no network during the build. DOCKER picks the
# client, DOCKER_HOST the engine.
DOCKER ?= docker
.PHONY: image
image: build
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_B) -o $(BIN)/ ./deploy/docker/idle
	$(DOCKER) build --network none -f deploy/docker/Dockerfile --label org.opencontainers.image.version=$(VERSION) -t rawlb:latest -t rawlb:demo $(BIN)

# --- Demo ---

# A throwaway namespace network (client, rawlb, three backends): connections
# spread round robin, a stopped backend leaves the rotation and comes back.
# Needs root; removes everything it made.
.PHONY: demo
demo: deps
	$(GO) test -count=1 -run '^TestDemo$$' -v ./rawlb

# Side-by-side benchmark on a namespace network (needs root): rawlb against
# one backend directly, the kernel's NAT and HAProxy; see docs/performance.md.
# BENCH_ROUNDS (default 3), BENCH_DURATION (default 10s), BENCH_CONTENDERS and
# BENCH_OUT (default docs/bench-latest.md).
.PHONY: bench
bench: build
	bash scripts/bench-deps.sh && bash scripts/bench.sh
