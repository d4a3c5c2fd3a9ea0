# parry — build, run, test. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := packaging/dist/bin
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck
TEST_TIMEOUT ?= 45m

.PHONY: all build run test test-deps lint fmt-check vet staticcheck unit bench fuzz clean

all: build

build:
	$(GO) build -trimpath -o $(BIN)/parryd ./cmd/parryd
	$(GO) build -trimpath -o $(BIN)/parry ./cmd/parry

## run: build and run the daemon in the foreground on built-in defaults (root).
run: build
	$(BIN)/parryd

## test: the whole suite as CI runs it (root; installs Debian test dependencies).
test: test-deps lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

test-deps:
	@if [ "$$(id -u)" = 0 ]; then test/ci/deps.sh; else echo "not root: skipping apt-get of test dependencies; kernel tests will skip"; fi

lint: fmt-check vet staticcheck

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

$(STATICCHECK):
	GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(STATICCHECK)
	$(STATICCHECK) ./...

## unit: only the tests that need neither root nor the network namespaces.
unit:
	$(GO) test -count=1 -short ./...

## bench: the benchmarks that print the figures quoted in the docs.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -count 5 ./...

## fuzz: a bounded run of every fuzz target (FUZZTIME each, default 60s).
FUZZTIME ?= 60s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf packaging/dist
