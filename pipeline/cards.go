package pipeline

import (
	"cmp"
	"fmt"
	"path/filepath"

	"github.com/tunellm/tune/export"
)

// writeCards gives every artifact folder a Hugging Face model card
// (README.md with the Hub's front matter): what it is, the base it came
// from, the recipe, its validation numbers and how to load it. Cards are
// written after validation, so they carry the final numbers; they are not
// part of the artifact's hash.
func (p *runner) writeCards() error {
	r := p.r
	base := cmp.Or(r.Model.ID, r.Model.Path)
	license, link := export.BaseLicense(r.Model.Path)
	params := [][2]string{{"train.mode", r.Train.Mode}, {"lr", fmt.Sprint(r.Train.LR)}, {"epochs", fmt.Sprint(r.Train.Epochs)},
		{"max_steps", fmt.Sprint(r.Train.MaxSteps)}, {"max_seq_len", fmt.Sprint(r.Train.MaxSeqLen)}}
	if r.Train.Mode != "full" {
		params = append([][2]string{{"r", fmt.Sprint(r.LoRA.R)}, {"lora_alpha", fmt.Sprint(r.LoRA.Alpha)},
			{"lora_dropout", fmt.Sprint(r.LoRA.Dropout)}, {"target_modules", fmt.Sprint(r.LoRA.TargetModules)}}, params...)
	}
	for _, a := range p.man.Artifacts {
		if a.Status != "pass" && a.Status != "fail" {
			continue
		}
		kind, dir := a.Kind, filepath.Join(p.dir, a.Path)
		switch a.Kind {
		case "safetensors-int":
			kind = "quantized"
		case "gguf":
			dir = filepath.Dir(dir)
		}
		card := export.Card{
			Title:       a.Name,
			Kind:        kind,
			BaseModel:   base,
			License:     license,
			LicenseLink: link,
			Tags:        []string{"tune"},
			Datasets:    []string{filepath.Base(r.Dataset.Path)},
			Description: fmt.Sprintf("Written by `tune` from the recipe below: %s; validation status **%s** (gates in the table).", describe(a), a.Status),
			Data:        r.Dataset.Path,
			Params:      params,
			Recipe:      r.YAML(),
			Validation:  validationTable(a.Validation),
			Command:     "tune run " + r.File,
		}
		if err := export.WriteModelCard(dir, card); err != nil {
			return fmt.Errorf("pipeline: %s: %w", a.Name, err)
		}
	}
	return nil
}

func describe(a *Artifact) string {
	switch a.Kind {
	case "adapter":
		return "a PEFT LoRA adapter"
	case "model":
		return "a complete model folder (the adapter merged into the base)"
	case "safetensors-int":
		return fmt.Sprintf("a weight-only integer quantization of the merged model (%.2f bits per weight)", a.BitsPerWeight)
	case "gguf":
		return fmt.Sprintf("a llama.cpp GGUF of the merged model (%.2f bits per weight)", a.BitsPerWeight)
	}
	return a.Kind
}

// validationTable lays out one artifact's validation.json as a card table.
func validationTable(v *Validation) *export.Table {
	if v == nil {
		return nil
	}
	t := &export.Table{Header: []string{"check", "value", "reference (" + v.Reference + ")"}}
	if v.PPL != 0 {
		t.Rows = append(t.Rows, []string{fmt.Sprintf("perplexity (%s, ctx %d)", filepath.Base(v.Data), v.Ctx),
			fmt.Sprintf("%.4g (%+.2f%%)", v.PPL, v.PPLChangePct), fmt.Sprintf("%.4g", v.RefPPL)})
	}
	if v.KLD != nil {
		t.Rows = append(t.Rows, []string{"mean KL divergence", fmt.Sprintf("%.4g ± %.2g", v.KLD.Mean, v.KLD.Unc), ""},
			[]string{"top-1 agreement", fmt.Sprintf("%.2f%%", 100*v.KLD.SameTop), ""})
	}
	if v.Logits != nil {
		t.Rows = append(t.Rows, []string{"max |Δlogit|", fmt.Sprintf("%.3g", v.Logits.MaxAbs), ""})
	}
	for _, b := range v.Bench {
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%s %s (%d items)", b.Task, b.Metric, b.Items),
			fmt.Sprintf("%.3f ± %.3f", b.Acc, b.Stderr), fmt.Sprintf("%.3f", b.RefAcc)})
	}
	for _, g := range v.Gates {
		res := "pass"
		if !g.Pass {
			res = "FAIL"
		}
		t.Rows = append(t.Rows, []string{"gate " + g.Name, fmt.Sprintf("%.4g %s %.4g", g.Value, g.Op, g.Limit), res})
	}
	return t
}
