package eval

import (
	"bytes"
	"context"
	"image/color"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	nan := math.NaN()
	var c Curves
	for s := 1; s <= 30; s++ {
		c.Steps = append(c.Steps, float64(s))
		c.Loss = append(c.Loss, 12*math.Exp(-float64(s)/6)+0.2)
		c.LR = append(c.LR, 1e-2*math.Min(1, float64(s)/5))
		c.TokensPerS = append(c.TokensPerS, 4000+100*math.Sin(float64(s)))
		if s%10 == 0 {
			c.EvalSteps = append(c.EvalSteps, float64(s))
			c.EvalLoss = append(c.EvalLoss, 12*math.Exp(-float64(s)/6)+0.3)
		}
	}
	return &Report{Title: "tune run tiny <pipeline>", Recipe: "recipes/tiny-pipeline.yaml", Model: "qwen3-tied", RunDir: "runs/x",
		Generated: time.Date(2026, 11, 29, 1, 0, 0, 0, time.UTC), Curves: c,
		Artifacts: []ReportArtifact{
			{Name: "adapter", Kind: "adapter", Reference: "base", Bytes: 43520, PPL: 3715.93, PPLChangePct: -96.76, KLD: nan, Top1: nan, MaxLogitDiff: nan,
				Bench: []ReportBench{{"mcq", 1, 0}}, Gates: Min(nil, "min_ppl_decrease_pct", "ppl decrease %", 96.76, 20), Status: "pass"},
			{Name: "merged", Kind: "model", Reference: "base+adapter", Bytes: 476467, PPL: 3715.93, PPLChangePct: 0, KLD: nan, Top1: nan, MaxLogitDiff: 1.9e-5,
				Gates: Max(nil, "merge_logit_tol", "max |Δlogit|", 1.9e-5, 1e-3), Status: "pass"},
			{Name: "gguf-q8_0", Kind: "gguf", Reference: "merged", Bytes: 134246, BitsPerWeight: 8.59, PPL: 3685.63, PPLChangePct: -0.82, KLD: 0.0019, Top1: 0.963, MaxLogitDiff: nan,
				Gates: Max(nil, "max_mean_kld", "mean KLD", 0.0019, 0.01), Status: "pass"},
			{Name: "gguf-q2_k", Kind: "gguf", Reference: "merged", Bytes: 85094, BitsPerWeight: 5.19, PPL: 4286.84, PPLChangePct: 15.36, KLD: 0.3296, Top1: 0.733, MaxLogitDiff: nan,
				Gates: Max(nil, "max_mean_kld", "mean KLD", 0.3296, 0.01), Status: "fail"},
			{Name: "int4-g128-gptq", Kind: "safetensors-int", Status: "error", Error: "quantize: no | pipes", PPL: nan, PPLChangePct: nan, KLD: nan, Top1: nan, MaxLogitDiff: nan},
		}}
}

func TestReadCurves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	lines := `{"step":0,"eval_loss":12.07,"eval_ppl":175391,"eval_tokens":136}
{"step":1,"epoch":0,"loss":11.8,"grad_norm":4.18,"lr":0.01,"tokens":64,"tokens_per_s":1229}
{"step":2,"epoch":0,"loss":9.5,"grad_norm":3,"lr":0.02,"tokens":60,"tokens_per_s":1500}
{"step":2,"eval_loss":8.1,"eval_ppl":3300,"eval_tokens":136}
`
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ReadCurves(path)
	if err != nil {
		t.Fatal(err)
	}
	want := Curves{Steps: []float64{1, 2}, Loss: []float64{11.8, 9.5}, LR: []float64{0.01, 0.02}, TokensPerS: []float64{1229, 1500},
		EvalSteps: []float64{0, 2}, EvalLoss: []float64{12.07, 8.1}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("curves\n got %+v\nwant %+v", c, want)
	}
	if c, err := ReadCurves(filepath.Join(t.TempDir(), "none.jsonl")); err != nil || len(c.Steps) != 0 {
		t.Errorf("missing file: %+v %v", c, err)
	}
	os.WriteFile(path, []byte("{\"step\":1}\nnot json\n"), 0o644)
	if _, err := ReadCurves(path); err == nil || !strings.Contains(err.Error(), "metrics.jsonl:2:") {
		t.Errorf("bad line: %v", err)
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   []float64
	}{
		{0, 30, []float64{0, 10, 20, 30}},
		{1, 30, []float64{10, 20, 30}},
		{0, 12.7, []float64{0, 5, 10}},
		{0.0089, 0.0111, []float64{0.009, 0.0095, 0.01, 0.0105, 0.011}},
		{-3, 7, []float64{-2, 0, 2, 4, 6}},
	}
	for _, tt := range tests {
		got := niceTicks(tt.lo, tt.hi)
		if len(got) != len(tt.want) {
			t.Errorf("niceTicks(%g, %g) = %v, want %v", tt.lo, tt.hi, got, tt.want)
			continue
		}
		for i := range got {
			if math.Abs(got[i]-tt.want[i]) > 1e-12 {
				t.Errorf("niceTicks(%g, %g) = %v, want %v", tt.lo, tt.hi, got, tt.want)
			}
		}
	}
}

func TestWriteHTMLAndMarkdown(t *testing.T) {
	var h, m bytes.Buffer
	if err := WriteHTML(&h, sampleReport()); err != nil {
		t.Fatal(err)
	}
	page := h.String()
	// Self-contained: no scripts, no external resources.
	for _, bad := range []string{"<script", "src=", "href=", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("report.html contains %q", bad)
		}
	}
	for _, want := range []string{"<title>tune run tiny &lt;pipeline&gt;</title>", `<tr class="fail" data-artifact="gguf-q2_k">`,
		`<tr class="error" data-artifact="int4-g128-gptq">`, "<td>8.59</td>", "<td>96.30%</td>", "<td>+15.36%</td>",
		"FAIL max_mean_kld (0.3296, want &lt;= 0.01)", "<td>mcq 1.000 (ref 0.000)</td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("report.html misses %q", want)
		}
	}
	if n := strings.Count(page, "<svg"); n != 3 {
		t.Errorf("%d plots, want 3", n)
	}
	if n := strings.Count(page, "<polyline"); n != 4 { // train loss, validation loss, lr, tokens/s
		t.Errorf("%d lines, want 4", n)
	}
	if err := WriteMarkdown(&m, sampleReport()); err != nil {
		t.Fatal(err)
	}
	md := m.String()
	for _, want := range []string{"| artifact | kind | vs | size | bits/weight | perplexity | Δppl | mean KLD | top-1 | max Δlogit | spot-checks | gates | status |",
		"| gguf-q8_0 | gguf | merged | 131.1 KiB | 8.59 | 3685.6300 | -0.82% | 0.00190 | 96.30% | – | – | pass max_mean_kld (0.0019, want <= 0.01) | pass |",
		"| **FAIL** |", `quantize: no \| pipes`, "Training: 30 steps, loss "} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md misses %q:\n%s", want, md)
		}
	}
	// Every table row has as many cells as the header.
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "|") {
			if n := len(regexp.MustCompile(`(^|[^\\])\|`).FindAllString(line, -1)); n != len(reportColumns)+2 {
				t.Errorf("%d cell borders in %q", n, line)
			}
		}
	}
}

// chromium finds Debian's chromium (or Chrome); CI installs it.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (apt-get install -y chromium)")
	}
	t.Skip("chromium is not installed")
	return ""
}

// TestReportRendersInChromium opens report.html in headless Chromium: the
// DOM it builds holds the table rows and the plots, and a screenshot shows
// the plot lines in their colours and the failed row's background.
func TestReportRendersInChromium(t *testing.T) {
	bin := chromium(t)
	dir := t.TempDir()
	page := filepath.Join(dir, "report.html")
	var h bytes.Buffer
	if err := WriteHTML(&h, sampleReport()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(page, h.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + filepath.Join(dir, "profile"), "--hide-scrollbars"}
		cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s", bin, err, stderr.String())
		}
		return out
	}
	dom := string(run("--dump-dom", "file://"+page))
	for _, want := range []string{`data-artifact="adapter"`, `data-artifact="merged"`, `data-artifact="gguf-q8_0"`, `data-artifact="gguf-q2_k"`, "<polyline", "train loss"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM misses %q", want)
		}
	}
	shot := filepath.Join(dir, "shot.png")
	run("--screenshot="+shot, "--window-size=1400,1400", "file://"+page)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	// Count pixels near the plot colours and the failed row's background.
	near := func(c color.Color, want [3]int, tol int) bool {
		r, g, b, _ := c.RGBA()
		d := func(x uint32, y int) int { v := int(x>>8) - y; return v * v }
		return d(r, want[0])+d(g, want[1])+d(b, want[2]) <= tol*tol
	}
	targets := map[string][3]int{"train loss #1f77b4": {0x1f, 0x77, 0xb4}, "validation loss #d62728": {0xd6, 0x27, 0x28},
		"lr #2ca02c": {0x2c, 0xa0, 0x2c}, "tokens/s #9467bd": {0x94, 0x67, 0xbd}, "failed row #fde8e8": {0xfd, 0xe8, 0xe8}}
	counts := map[string]int{}
	colors := map[color.Color]bool{}
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y += 1 {
		for x := bnd.Min.X; x < bnd.Max.X; x += 1 {
			c := img.At(x, y)
			if len(colors) < 1000 {
				colors[c] = true
			}
			for name, want := range targets {
				tol := 40 // antialiased lines
				if strings.HasPrefix(name, "failed") {
					tol = 6 // a flat fill, close to the page's #fafafa
				}
				if near(c, want, tol) {
					counts[name]++
				}
			}
		}
	}
	if len(colors) < 20 {
		t.Errorf("screenshot has %d colours: blank?", len(colors))
	}
	for name := range targets {
		if counts[name] < 50 {
			t.Errorf("screenshot: %d pixels of %s", counts[name], name)
		}
	}
	if n := counts["failed row #fde8e8"]; n > bnd.Dx()*bnd.Dy()/10 {
		t.Errorf("screenshot: %d pixels of the failed row's colour: the whole page?", n)
	}
	t.Logf("screenshot %v, pixels per colour %v", bnd.Size(), counts)
}

// FuzzReadCurves: no metrics.jsonl bytes make ReadCurves panic, and the
// curves it returns are aligned.
func FuzzReadCurves(f *testing.F) {
	f.Add([]byte(`{"step":1,"loss":2,"lr":0.1,"tokens_per_s":5}` + "\n" + `{"step":1,"eval_loss":3}` + "\n"))
	f.Add([]byte("{}\n[]\n"))
	f.Add([]byte(`{"loss":"x","eval_loss":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "metrics.jsonl")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := ReadCurves(path)
		if err != nil {
			return
		}
		if len(c.Steps) != len(c.Loss) || len(c.LR) != len(c.Loss) || len(c.TokensPerS) != len(c.Loss) || len(c.EvalSteps) != len(c.EvalLoss) {
			t.Fatalf("curves not aligned: %+v", c)
		}
		var h bytes.Buffer
		if err := WriteHTML(&h, &Report{Curves: c}); err != nil {
			t.Fatal(err)
		}
	})
}
