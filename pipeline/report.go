package pipeline

import (
	"bytes"
	"math"
	"path/filepath"
	"strings"
	"time"

	"github.com/tunellm/tune/eval"
)

// Report builds the report of the run folder dir from its manifest and
// metrics.jsonl.
func Report(dir string, man *Manifest, modelPath string) (*eval.Report, error) {
	curves, err := eval.ReadCurves(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		return nil, err
	}
	title := "tune run " + filepath.Base(filepath.Clean(dir))
	if man.Recipe != "" {
		title = "tune run " + strings.TrimSuffix(filepath.Base(man.Recipe), filepath.Ext(man.Recipe))
	}
	rep := &eval.Report{Title: title, Recipe: man.Recipe, Model: modelPath,
		RunDir: dir, Generated: time.Now(), Curves: curves}
	nan := math.NaN()
	for _, a := range man.Artifacts {
		ra := eval.ReportArtifact{Name: a.Name, Kind: a.Kind, Bytes: a.Bytes, BitsPerWeight: a.BitsPerWeight,
			PPL: nan, PPLChangePct: nan, KLD: nan, Top1: nan, MaxLogitDiff: nan, Status: a.Status, Error: a.Error}
		if v := a.Validation; v != nil {
			ra.Reference, ra.Gates = v.Reference, v.Gates
			if v.Data != "" {
				ra.PPL, ra.PPLChangePct = v.PPL, v.PPLChangePct
			}
			if v.KLD != nil {
				ra.KLD, ra.Top1 = v.KLD.Mean, v.KLD.SameTop
			}
			if v.Logits != nil {
				ra.MaxLogitDiff = v.Logits.MaxAbs
			}
			for _, b := range v.Bench {
				ra.Bench = append(ra.Bench, eval.ReportBench{Task: b.Task, Acc: b.Acc, Ref: b.RefAcc})
			}
		}
		rep.Artifacts = append(rep.Artifacts, ra)
	}
	return rep, nil
}

// writeReport writes report.html and report.md into the run folder.
func (p *runner) writeReport() error {
	rep, err := Report(p.dir, p.man, p.r.Model.Path)
	if err != nil {
		return err
	}
	var h, m bytes.Buffer
	if err := eval.WriteHTML(&h, rep); err != nil {
		return err
	}
	if err := eval.WriteMarkdown(&m, rep); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(p.dir, "report.html"), h.Bytes()); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(p.dir, "report.md"), m.Bytes()); err != nil {
		return err
	}
	p.sum.Report = filepath.Join(p.dir, "report.html")
	p.logf("report: %s", p.sum.Report)
	return nil
}
