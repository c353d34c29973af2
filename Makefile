# rawlb build, test and lint entry points. `make test` is the README's test
# command and what CI runs; the privileged tests need root.
GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOFLAGS_B := -trimpath -ldflags '$(LDFLAGS)'
BIN       := bin

.PHONY: all build test test-unit lint fuzz bench-go clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_B) -o $(BIN)/ ./cmd/...

# Unit tests run unprivileged; the end-to-end tests under rawlb/ need root.
# RAWLB_REQUIRE_PRIVILEGED=1 turns their skip into a failure.
test:
	$(GO) vet ./...
	$(GO) test -count=1 ./...

test-unit:
	$(GO) test -count=1 -race ./packet/... ./conntrack/... ./healthcheck/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@2025.1.1 ./...

# Short fuzz runs of every fuzz target (the seed corpus always runs in `make test`).
fuzz:
	$(GO) test ./packet -run '^$$' -fuzz FuzzParse -fuzztime 30s
	$(GO) test ./packet -run '^$$' -fuzz FuzzRewrite -fuzztime 30s

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./packet/... ./conntrack/...

clean:
	rm -rf $(BIN) dist
