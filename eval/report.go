package eval

import (
	"bufio"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"strings"
	"time"
)

// Report is what report.html and report.md show about a run: its training
// curves and every artifact with its measurements and gates.
type Report struct {
	Title     string
	Recipe    string
	Model     string
	RunDir    string
	Generated time.Time
	Curves    Curves
	Artifacts []ReportArtifact
}

// Curves are the training metrics of metrics.jsonl.
type Curves struct {
	Steps      []float64 // per optimizer step
	Loss       []float64
	LR         []float64
	TokensPerS []float64
	EvalSteps  []float64 // per validation
	EvalLoss   []float64
}

// ReportArtifact is one row of the artifacts table. NaN means "not
// measured".
type ReportArtifact struct {
	Name          string
	Kind          string
	Reference     string
	Bytes         int64
	BitsPerWeight float64
	PPL           float64
	PPLChangePct  float64
	KLD           float64
	Top1          float64 // fraction
	MaxLogitDiff  float64
	Bench         []ReportBench
	Gates         []Gate
	Status        string // pass, fail, error, unchecked
	Error         string
}

// ReportBench is one spot-check result of an artifact.
type ReportBench struct {
	Task string
	Acc  float64
	Ref  float64
}

// ReadCurves reads a trainer's metrics.jsonl: lines with "loss" are steps,
// lines with "eval_loss" validations. A missing file gives empty curves.
func ReadCurves(path string) (Curves, error) {
	var c Curves
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return c, fmt.Errorf("eval: report: %s:%d: %v", path, line, err)
		}
		num := func(k string) (float64, bool) { v, ok := m[k].(float64); return v, ok }
		step, _ := num("step")
		if el, ok := num("eval_loss"); ok {
			c.EvalSteps = append(c.EvalSteps, step)
			c.EvalLoss = append(c.EvalLoss, el)
			continue
		}
		if l, ok := num("loss"); ok {
			lr, _ := num("lr")
			tps, _ := num("tokens_per_s")
			c.Steps = append(c.Steps, step)
			c.Loss = append(c.Loss, l)
			c.LR = append(c.LR, lr)
			c.TokensPerS = append(c.TokensPerS, tps)
		}
	}
	return c, sc.Err()
}

// series is one line of a plot.
type series struct {
	name  string
	color string
	x, y  []float64
}

// svgPlot draws series as an inline SVG line chart with axes, ticks and a
// legend; it needs no script and no network.
func svgPlot(title, xlabel string, ss []series) string {
	const W, H, L, R, T, B = 560.0, 260.0, 62.0, 14.0, 28.0, 40.0
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	n := 0
	for _, s := range ss {
		for i := range s.x {
			if math.IsNaN(s.y[i]) || math.IsInf(s.y[i], 0) {
				continue
			}
			xmin, xmax = math.Min(xmin, s.x[i]), math.Max(xmax, s.x[i])
			ymin, ymax = math.Min(ymin, s.y[i]), math.Max(ymax, s.y[i])
			n++
		}
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="%g" height="%g" viewBox="0 0 %g %g" role="img" aria-label="%s">`, W, H, W, H, html.EscapeString(title))
	fmt.Fprintf(&sb, `<rect x="0" y="0" width="%g" height="%g" fill="#fff"/>`, W, H)
	fmt.Fprintf(&sb, `<text x="%g" y="18" font-size="13" font-weight="bold">%s</text>`, L, html.EscapeString(title))
	if n == 0 {
		fmt.Fprintf(&sb, `<text x="%g" y="%g" font-size="12" fill="#888">no data</text></svg>`, W/2-25, H/2)
		return sb.String()
	}
	if xmax == xmin {
		xmin, xmax = xmin-1, xmax+1
	}
	if ymax == ymin {
		ymin, ymax = ymin-math.Max(1e-9, math.Abs(ymin)*0.1), ymax+math.Max(1e-9, math.Abs(ymax)*0.1)
	}
	pad := (ymax - ymin) * 0.05
	if ymin >= 0 && ymin-pad < 0 {
		ymin, ymax = 0, ymax+pad // losses, rates: keep the axis at 0
	} else {
		ymin, ymax = ymin-pad, ymax+pad
	}
	px := func(x float64) float64 { return L + (x-xmin)/(xmax-xmin)*(W-L-R) }
	py := func(y float64) float64 { return H - B - (y-ymin)/(ymax-ymin)*(H-T-B) }
	// Axes and ticks.
	fmt.Fprintf(&sb, `<g stroke="#999" stroke-width="1"><line x1="%g" y1="%g" x2="%g" y2="%g"/><line x1="%g" y1="%g" x2="%g" y2="%g"/></g>`,
		L, H-B, W-R, H-B, L, T, L, H-B)
	for _, y := range niceTicks(ymin, ymax) {
		fmt.Fprintf(&sb, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#eee"/>`, L+1, py(y), W-R, py(y))
		fmt.Fprintf(&sb, `<text x="%g" y="%.1f" font-size="10" text-anchor="end">%s</text>`, L-4, py(y)+3, tick(y))
	}
	for _, x := range niceTicks(xmin, xmax) {
		fmt.Fprintf(&sb, `<text x="%.1f" y="%g" font-size="10" text-anchor="middle">%s</text>`, px(x), H-B+14, tick(x))
	}
	fmt.Fprintf(&sb, `<text x="%g" y="%g" font-size="11" text-anchor="middle">%s</text>`, (L+W-R)/2, H-6, html.EscapeString(xlabel))
	for k, s := range ss {
		var pts []string
		for i := range s.x {
			if math.IsNaN(s.y[i]) || math.IsInf(s.y[i], 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.x[i]), py(s.y[i])))
		}
		if len(pts) == 1 {
			var cx, cy float64
			fmt.Sscanf(pts[0], "%g,%g", &cx, &cy)
			fmt.Fprintf(&sb, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, cx, cy, s.color)
		} else {
			fmt.Fprintf(&sb, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>`, s.color, strings.Join(pts, " "))
		}
		lx := W - R - 130.0
		ly := T + 4 + 14*float64(k)
		fmt.Fprintf(&sb, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="3"/><text x="%g" y="%g" font-size="11">%s</text>`,
			lx, ly, lx+18, ly, s.color, lx+22, ly+4, html.EscapeString(s.name))
	}
	sb.WriteString(`</svg>`)
	return sb.String()
}

// niceTicks are about 5 round values (1, 2 or 5 times a power of ten
// apart) inside [lo, hi].
func niceTicks(lo, hi float64) []float64 {
	raw := (hi - lo) / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	step := p
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			step = m * p
			break
		}
	}
	var out []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9 && len(out) < 12; v += step {
		if math.Abs(v) < step*1e-9 {
			v = 0
		}
		out = append(out, v)
	}
	return out
}

func tick(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e4 || a < 1e-2:
		return fmt.Sprintf("%.1e", v)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// Cells of the artifacts table, shared by HTML and Markdown.
var reportColumns = []string{"artifact", "kind", "vs", "size", "bits/weight", "perplexity", "Δppl", "mean KLD", "top-1", "max Δlogit", "spot-checks", "gates"}

func (a ReportArtifact) cells() []string {
	num := func(v float64, format string) string {
		if math.IsNaN(v) {
			return "–"
		}
		return fmt.Sprintf(format, v)
	}
	var bench []string
	for _, b := range a.Bench {
		bench = append(bench, fmt.Sprintf("%s %.3f (ref %.3f)", b.Task, b.Acc, b.Ref))
	}
	bs := "–"
	if len(bench) > 0 {
		bs = strings.Join(bench, ", ")
	}
	bpw := "–"
	if a.BitsPerWeight > 0 {
		bpw = fmt.Sprintf("%.2f", a.BitsPerWeight)
	}
	top1 := "–"
	if !math.IsNaN(a.Top1) {
		top1 = fmt.Sprintf("%.2f%%", 100*a.Top1)
	}
	return []string{a.Name, a.Kind, orDash(a.Reference), humanBytes(a.Bytes), bpw, num(a.PPL, "%.4f"), num(a.PPLChangePct, "%+.2f%%"),
		num(a.KLD, "%.5f"), top1, num(a.MaxLogitDiff, "%.2e"), bs, a.gateText()}
}

func (a ReportArtifact) gateText() string {
	switch a.Status {
	case "error":
		return "ERROR: " + a.Error
	case "unchecked":
		return "not checked"
	}
	var s []string
	for _, g := range a.Gates {
		mark := "pass"
		if !g.Pass {
			mark = "FAIL"
		}
		s = append(s, fmt.Sprintf("%s %s (%.4g, want %s %g)", mark, g.Name, g.Value, g.Op, g.Limit))
	}
	if len(s) == 0 {
		return "pass (no gates)"
	}
	return strings.Join(s, "; ")
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// WriteHTML writes a self-contained page: inline CSS, inline SVG plots, no
// script and no external resource.
func WriteHTML(w io.Writer, r *Report) error {
	var sb strings.Builder
	esc := html.EscapeString
	sb.WriteString("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n")
	fmt.Fprintf(&sb, "<title>%s</title>\n", esc(r.Title))
	sb.WriteString(`<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #ddd;background:#fff}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr.fail td{background:#fde8e8}tr.pass td.status{color:#176b1f;font-weight:bold}tr.fail td.status,tr.error td.status{color:#a11;font-weight:bold}
tr.error td{background:#fff3d6}.meta{color:#555}
</style></head><body>
`)
	fmt.Fprintf(&sb, "<h1>%s</h1>\n<p class=\"meta\">recipe %s · model %s · run %s · %s</p>\n", esc(r.Title), esc(r.Recipe), esc(r.Model), esc(r.RunDir), r.Generated.UTC().Format(time.RFC3339))
	sb.WriteString("<h2>Training</h2>\n<div class=\"plots\">\n")
	c := r.Curves
	sb.WriteString(svgPlot("loss", "step", []series{{"train loss", "#1f77b4", c.Steps, c.Loss}, {"validation loss", "#d62728", c.EvalSteps, c.EvalLoss}}))
	sb.WriteString("\n")
	sb.WriteString(svgPlot("learning rate", "step", []series{{"lr", "#2ca02c", c.Steps, c.LR}}))
	sb.WriteString("\n")
	sb.WriteString(svgPlot("throughput (trained tokens/s)", "step", []series{{"tokens/s", "#9467bd", c.Steps, c.TokensPerS}}))
	sb.WriteString("\n</div>\n<h2>Artifacts</h2>\n<table id=\"artifacts\">\n<tr>")
	for _, h := range reportColumns {
		fmt.Fprintf(&sb, "<th>%s</th>", esc(h))
	}
	sb.WriteString("<th>status</th></tr>\n")
	for _, a := range r.Artifacts {
		fmt.Fprintf(&sb, "<tr class=\"%s\" data-artifact=\"%s\">", esc(a.Status), esc(a.Name))
		for _, cell := range a.cells() {
			fmt.Fprintf(&sb, "<td>%s</td>", esc(cell))
		}
		fmt.Fprintf(&sb, "<td class=\"status\">%s</td></tr>\n", esc(a.Status))
	}
	sb.WriteString("</table>\n<p class=\"meta\">Perplexity over validate.data; Δppl, KLD (KL(P_ref‖P_artifact), llama-perplexity's conventions) and top-1 agreement against the reference in column vs; max |Δlogit|: the merged model against base+adapter.</p>\n</body></html>\n")
	_, err := io.WriteString(w, sb.String())
	return err
}

// WriteMarkdown writes the same table (and a summary of the curves) as
// Markdown.
func WriteMarkdown(w io.Writer, r *Report) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# %s\n\nrecipe `%s` · model `%s` · run `%s` · %s\n\n", r.Title, r.Recipe, r.Model, r.RunDir, r.Generated.UTC().Format(time.RFC3339))
	c := r.Curves
	if n := len(c.Loss); n > 0 {
		fmt.Fprintf(&sb, "Training: %d steps, loss %.4f → %.4f", n, c.Loss[0], c.Loss[n-1])
		switch m := len(c.EvalLoss); {
		case m == 1:
			fmt.Fprintf(&sb, ", validation loss %.4f at step %.0f", c.EvalLoss[0], c.EvalSteps[0])
		case m > 1:
			fmt.Fprintf(&sb, ", validation loss %.4f → %.4f", c.EvalLoss[0], c.EvalLoss[m-1])
		}
		var tps float64
		for _, v := range c.TokensPerS {
			tps += v
		}
		fmt.Fprintf(&sb, ", %.0f trained tokens/s on average.\n\n", tps/float64(n))
	}
	mdEsc := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }
	sb.WriteString("| " + strings.Join(reportColumns, " | ") + " | status |\n|")
	for range len(reportColumns) + 1 {
		sb.WriteString("---|")
	}
	sb.WriteString("\n")
	for _, a := range r.Artifacts {
		cells := a.cells()
		for i := range cells {
			cells[i] = mdEsc(cells[i])
		}
		status := a.Status
		if status == "fail" || status == "error" {
			status = "**" + strings.ToUpper(status) + "**"
		}
		sb.WriteString("| " + strings.Join(cells, " | ") + " | " + status + " |\n")
	}
	_, err := io.WriteString(w, sb.String())
	return err
}
