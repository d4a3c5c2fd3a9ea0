# parry — build, run, test. See README.md.
SHELL := /bin/bash
GO ?= go
BIN := packaging/dist/bin
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(shell $(GO) env GOPATH)/bin/staticcheck
TEST_TIMEOUT ?= 45m

.PHONY: all build run test test-deps lint fmt-check tidy-check vet staticcheck unit bench fuzz clean \
	pkg-stage deb rpm lintian check-units

all: build

build:
	$(GO) build -trimpath -o $(BIN)/parryd ./cmd/parryd
	$(GO) build -trimpath -o $(BIN)/parry ./cmd/parry

## run: build and run the daemon in the foreground on built-in defaults (root).
run: build
	$(BIN)/parryd

## test: the whole suite as CI runs it (root; installs Debian test dependencies).
## It ends with one line: how many tests ran, passed, failed and skipped, and
## whether a root-only test skipped (then the run fails: see test/ci/testsummary).
test: test-deps lint
	set -o pipefail; $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -json ./... | $(GO) run ./test/ci/testsummary

test-deps:
	@if [ "$$(id -u)" = 0 ]; then test/ci/deps.sh; else echo "not root: skipping apt-get of test dependencies; root-only tests will skip and make test will fail (make unit runs the tests that need no root)"; fi

lint: fmt-check tidy-check vet staticcheck

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

## tidy-check: go.mod and go.sum are exactly what `go mod tidy` makes of them.
tidy-check:
	@if ! diff="$$($(GO) mod tidy -diff)"; then \
	  if [ -n "$$diff" ]; then echo "go.mod/go.sum are not tidy (run: go mod tidy):"; echo "$$diff"; \
	  else echo "go mod tidy -diff failed (see above)"; fi; exit 1; fi

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


## ---- packages (see docs/install.md) ----
# Version from git (packaging/version.sh): 1.2.3 on a tag v1.2.3,
# 0.0.0~git<commit time>.<hash> before the first tag, .dirty when modified.
VERSION ?= $(shell packaging/version.sh)
PKG_ARCH ?= $(shell $(GO) env GOARCH)
NFPM ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
DIST := packaging/dist
STAGE := $(DIST)/stage
# Static PIE (no libc dependency), stripped, reproducible, agent.Version stamped.
PKG_GOFLAGS := -trimpath -buildvcs=false -buildmode=pie
PKG_LDFLAGS := -s -w -X github.com/parryhq/parry/agent.Version=$(VERSION)
DEB := $(DIST)/parry_$(VERSION)_$(PKG_ARCH).deb

## pkg-stage: binaries, man pages, completions, conffiles and docs under packaging/dist/stage.
pkg-stage:
	rm -rf $(STAGE)
	mkdir -p $(STAGE)/bin $(STAGE)/etc/parry $(STAGE)/doc
	CGO_ENABLED=0 $(GO) build $(PKG_GOFLAGS) -ldflags '$(PKG_LDFLAGS)' -o $(STAGE)/bin/parryd ./cmd/parryd
	CGO_ENABLED=0 $(GO) build $(PKG_GOFLAGS) -ldflags '$(PKG_LDFLAGS)' -o $(STAGE)/bin/parry ./cmd/parry
	packaging/gendocs.sh $(STAGE)/bin $(STAGE) $(VERSION)
	install -m 0644 packaging/parry.yaml $(STAGE)/etc/parry/parry.yaml
	@if [ -d packaging/fail2ban ]; then \
	  mkdir -p $(STAGE)/etc/fail2ban && cp -R packaging/fail2ban/. $(STAGE)/etc/fail2ban/; \
	else echo "note: no packaging/fail2ban yet (response branch): package ships without the fail2ban action"; fi
	packaging/copyright.sh LICENSE > $(STAGE)/doc/copyright
	packaging/changelog.sh $(VERSION) | gzip -9n > $(STAGE)/doc/changelog.gz
	@if ls docs/*.md >/dev/null 2>&1; then install -m 0644 docs/*.md $(STAGE)/doc/; fi
	@if [ -d packaging/examples ]; then mkdir -p $(STAGE)/doc/examples && cp -R packaging/examples/. $(STAGE)/doc/examples/; fi

## deb: packaging/dist/parry_<version>_<arch>.deb
deb: pkg-stage
	PARRY_VERSION=$(VERSION) PARRY_ARCH=$(PKG_ARCH) $(NFPM) package -f packaging/nfpm.yaml -p deb -t $(DEB)
	@echo "built $(DEB)"

## rpm: packaging/dist/parry-<version>-1.<arch>.rpm
rpm: pkg-stage
	PARRY_VERSION=$(VERSION) PARRY_ARCH=$(PKG_ARCH) $(NFPM) package -f packaging/nfpm.yaml -p rpm -t $(DIST)/

## lintian: build the .deb and lint it (errors fail; warnings are listed in docs/install.md).
lintian: deb
	lintian --fail-on error $(DEB)

## check-units: systemd-analyze verify on the units (any stderr is a failure) and
## the exposure score of parry.service (must be 2.5 or lower); no root needed.
check-units:
	$(GO) test -count=1 -run 'TestUnits' -v ./test/boot

clean:
	rm -rf packaging/dist
