package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/export"
	"github.com/tunellm/tune/quantize/gguf"
	"github.com/tunellm/tune/tokenizer"
)

func newCmdExport(f *Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export <target>",
		Short: "Export adapters and models for llama.cpp and ollama",
		Long: `Export writes what serving stacks load: a PEFT LoRA adapter as a llama.cpp LoRA GGUF
(llama-server --lora, ollama ADAPTER), and an ollama Modelfile whose TEMPLATE renders
exactly what the model was trained on (checked token by token).`,
		Example: `  tune export gguf-lora --adapter runs/legal/adapter --base ./Qwen3-8B --out legal-lora.gguf
  tune export ollama --model qwen3-8b-q8_0.gguf --adapter legal-lora.gguf --base ./Qwen3-8B --out ollama/`,
	}
	cmd.AddCommand(newCmdExportGGUFLoRA(f, nil), newCmdExportOllama(f, nil))
	return cmd
}

// ExportGGUFLoRAOptions are the inputs of `tune export gguf-lora`.
type ExportGGUFLoRAOptions struct {
	IO      *IOStreams
	Adapter string
	Base    string
	Out     string
	Type    string
	Force   bool
	JSON    bool
}

func newCmdExportGGUFLoRA(f *Factory, runF func(*ExportGGUFLoRAOptions) error) *cobra.Command {
	opts := &ExportGGUFLoRAOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "gguf-lora --adapter DIR --base DIR --out FILE.gguf",
		Short: "Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF",
		Long: `gguf-lora writes a PEFT LoRA adapter folder (from tune lora or PEFT) as the adapter file
llama.cpp's convert_lora_to_gguf.py writes: llama-server --lora FILE and ollama's ADAPTER
apply it to the base model's GGUF without merging.

--base is the Hugging Face folder the adapter was trained on (its config.json names the
architecture and the tensor shapes). llama.cpp scales every pair by one alpha per file
divided by the pair's rank; rsLoRA (alpha/sqrt(r)) and per-module rank_pattern and
alpha_pattern are folded into lora_b so the result equals PEFT's. DoRA adapters are
refused (llama.cpp has no DoRA): merge them with tune merge instead.`,
		Example: `  tune export gguf-lora --adapter runs/legal/adapter --base ./Qwen3-8B --out legal-lora.gguf
  llama-server -m qwen3-8b-q8_0.gguf --lora legal-lora.gguf
  tune export gguf-lora --adapter ./adapter --base ./Llama-3.1-8B-Instruct --out a.gguf --type f16 --force --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.Adapter == "":
				return flagErrorf("--adapter is required: a PEFT adapter folder")
			case opts.Base == "":
				return flagErrorf("--base is required: the Hugging Face model folder the adapter was trained on")
			case opts.Out == "":
				return flagErrorf("--out is required: the .gguf file to write")
			case opts.Type != "f32" && opts.Type != "f16":
				return flagErrorf("--type: want f32 or f16, got %q", opts.Type)
			}
			if runF != nil {
				return runF(opts)
			}
			return exportGGUFLoRARun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Adapter, "adapter", "", "PEFT adapter folder")
	fl.StringVar(&opts.Base, "base", "", "base model folder the adapter was trained on")
	fl.StringVar(&opts.Out, "out", "", "output .gguf file")
	fl.StringVar(&opts.Type, "type", "f32", "tensor type: f32 or f16")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing output file")
	fl.BoolVar(&opts.JSON, "json", false, "print a summary as JSON")
	return cmd
}

func exportGGUFLoRARun(opts *ExportGGUFLoRAOptions) error {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.Adapter, &opts.Base); err != nil {
		return err
	}
	rep, err := export.WriteLoRAGGUF(opts.Adapter, opts.Base, opts.Out, export.LoRAOptions{Type: opts.Type, Force: opts.Force})
	if err != nil {
		return err
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(rep)
	}
	ranks := make([]string, len(rep.Ranks))
	for i, r := range rep.Ranks {
		ranks[i] = fmt.Sprint(r)
	}
	note := ""
	if rep.Folded {
		note = " (rsLoRA/per-module alpha folded into lora_b)"
	}
	fmt.Fprintf(opts.IO.Out, "wrote %s: llama.cpp LoRA for %s, %d pairs, rank %s, alpha %g, %s, %.1f MB%s\n",
		opts.Out, rep.Architecture, rep.Pairs, strings.Join(ranks, "/"), rep.Alpha, rep.Type, float64(rep.Bytes)/1e6, note)
	return nil
}

// ExportOllamaOptions are the inputs of `tune export ollama`.
type ExportOllamaOptions struct {
	IO      *IOStreams
	Model   string
	Adapter string
	Base    string
	Out     string
	System  string
	NoCheck bool
	Force   bool
	JSON    bool
}

func newCmdExportOllama(f *Factory, runF func(*ExportOllamaOptions) error) *cobra.Command {
	opts := &ExportOllamaOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "ollama --model FILE.gguf --base DIR --out DIR",
		Short: "Write an ollama Modelfile whose template matches the model's chat template",
		Long: `ollama writes DIR/Modelfile (FROM the model GGUF, ADAPTER a LoRA GGUF from tune export
gguf-lora, a TEMPLATE in ollama's Go template syntax, PARAMETER stop for the turn-ending
tokens, SYSTEM when given) and a model card DIR/README.md. Then: ollama create NAME -f DIR/Modelfile.

The TEMPLATE is ollama's standard one for the chat template's family: ` + export.SupportedFamilies + `.
The chat template comes from --base (the model folder's tokenizer_config.json: what the
model was trained with), else from the GGUF's tokenizer.chat_template.

Template parity: a fixed set of conversations (system + user, multi-turn, Unicode,
thinking off) is rendered through the training template, the GGUF's copy (as llama.cpp
applies it) and the Modelfile TEMPLATE (as ollama executes it), tokenized as each server
does, and the Modelfile is not written unless all give the same token ids; the error
names the first differing token. The check needs --base (for tokenizer.json); --no-check
skips it.`,
		Example: `  tune export ollama --model qwen3-8b-q8_0.gguf --base ./Qwen3-8B --out ollama/
  tune export ollama --model base.gguf --adapter legal-lora.gguf --base ./Qwen3-8B --out ollama/ --system "You are a legal assistant."
  ollama create qwen3-legal -f ollama/Modelfile`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case opts.Model == "":
				return flagErrorf("--model is required: the model's .gguf file")
			case opts.Out == "":
				return flagErrorf("--out is required: the folder to write the Modelfile to")
			case opts.Base == "" && !opts.NoCheck:
				return flagErrorf("--base is required for the template parity check: the model folder the GGUF was made from (tokenizer.json, tokenizer_config.json); --no-check skips the check")
			}
			if runF != nil {
				return runF(opts)
			}
			return exportOllamaRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.Model, "model", "", "model .gguf file (tune quantize)")
	fl.StringVar(&opts.Adapter, "adapter", "", "LoRA .gguf file (tune export gguf-lora)")
	fl.StringVar(&opts.Base, "base", "", "the model folder the GGUF was made from: its chat template and tokenizer")
	fl.StringVar(&opts.Out, "out", "", "output folder")
	fl.StringVar(&opts.System, "system", "", "default system prompt (SYSTEM)")
	fl.BoolVar(&opts.NoCheck, "no-check", false, "skip the template parity check")
	fl.BoolVar(&opts.Force, "force", false, "replace an existing Modelfile")
	fl.BoolVar(&opts.JSON, "json", false, "print a summary as JSON")
	return cmd
}

// relTo returns path relative to dir when both resolve, as ollama resolves
// FROM and ADAPTER against the Modelfile's folder; else the absolute path.
func relTo(dir, path string) string {
	absDir, err1 := filepath.Abs(dir)
	absPath, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return path
	}
	if r, err := filepath.Rel(absDir, absPath); err == nil {
		if !strings.HasPrefix(r, ".") {
			r = "./" + r
		}
		return r
	}
	return absPath
}

func exportOllamaRun(opts *ExportOllamaOptions) error {
	baseID := opts.Base // the model card names the Hub id, not the cache folder
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.Base); err != nil {
		return err
	}
	mfPath := filepath.Join(opts.Out, "Modelfile")
	if _, err := os.Stat(mfPath); err == nil && !opts.Force {
		return fmt.Errorf("export: %s exists; use --force to replace it", mfPath)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("export: %w", err)
	}
	g, err := export.ReadGGUFChat(opts.Model)
	if err != nil {
		return err
	}
	arch := ggufString(opts.Model, "general.architecture")
	if opts.Adapter != "" {
		if t := ggufString(opts.Adapter, "general.type"); t != "adapter" {
			return fmt.Errorf("export: %s: general.type %q, want \"adapter\" (a LoRA GGUF from tune export gguf-lora)", opts.Adapter, t)
		}
		if a := ggufString(opts.Adapter, "general.architecture"); a != arch {
			return fmt.Errorf("export: %s: adapter for architecture %q, but %s is %q", opts.Adapter, a, opts.Model, arch)
		}
	}
	var tok *tokenizer.Tokenizer
	tmpl, tmplFrom := g.Template, opts.Model+" (tokenizer.chat_template)"
	if opts.Base != "" {
		if tok, err = tokenizer.Load(opts.Base); err != nil {
			return err
		}
		if t := tok.Config().ChatTemplate; t != "" {
			tmpl, tmplFrom = t, filepath.Join(opts.Base, "tokenizer_config.json")
		}
	}
	fam, err := export.DetectFamily(tmpl)
	if err != nil {
		return fmt.Errorf("%w (template from %s)", err, tmplFrom)
	}
	mf := &export.Modelfile{
		From: relTo(opts.Out, opts.Model), Template: fam.Template, Stop: append([]string(nil), fam.Stop...),
		System:  opts.System,
		Comment: []string{fmt.Sprintf("Written by tune export ollama: %s chat template (from %s).", fam.Name, tmplFrom)},
	}
	if mf.System == "" {
		mf.System = fam.DefaultSystem
	}
	if opts.Adapter != "" {
		mf.Adapter = relTo(opts.Out, opts.Adapter)
	}
	if g.EOSText != "" && !slices.Contains(mf.Stop, g.EOSText) {
		mf.Stop = append(mf.Stop, g.EOSText)
	}
	checked := 0
	if !opts.NoCheck {
		convs := export.ParityConversations
		if opts.System != "" {
			// ollama sends SYSTEM when a conversation has none: the
			// reference renders that conversation.
			convs = withDefaultSystem(convs, opts.System)
		}
		sides := []export.Side{export.TrainingSide(tok, tmpl)}
		if g.Template != "" {
			sides = append(sides, export.GGUFSide(tok, g))
		}
		sides = append(sides, export.OllamaSide(tok, mf, g))
		if err := export.CheckParity(tok, sides, convs); err != nil {
			return fmt.Errorf("%w; the Modelfile was not written (--no-check writes it anyway)", err)
		}
		checked = len(convs) * len(sides)
	}
	if err := export.WriteModelfile(opts.Out, mf); err != nil {
		return err
	}
	card := export.Card{Title: strings.TrimSuffix(filepath.Base(opts.Model), filepath.Ext(opts.Model)) + " for ollama", Kind: "ollama",
		Command: "tune export ollama --model " + opts.Model}
	files := "`Modelfile`: FROM " + mf.From
	if mf.Adapter != "" {
		files += ", ADAPTER " + mf.Adapter + " (a llama.cpp LoRA, applied unmerged)"
	}
	card.Files = []string{files, "`README.md`: this card"}
	if opts.Base != "" {
		card.BaseModel = baseID
		card.License, card.LicenseLink = export.BaseLicense(opts.Base)
	}
	if checked > 0 {
		card.Description = fmt.Sprintf("The Modelfile's TEMPLATE (%s family) renders the same token ids as the training chat template on %d conversation renderings (tune's template parity check).", fam.Name, checked)
	}
	if err := export.WriteModelCard(opts.Out, card); err != nil {
		return err
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(map[string]any{
			"modelfile": mfPath, "family": fam.Name, "template_from": tmplFrom, "stop": mf.Stop,
			"parity_checked": !opts.NoCheck, "renderings_compared": checked,
		})
	}
	check := "parity not checked (--no-check)"
	if !opts.NoCheck {
		check = fmt.Sprintf("template parity checked (%d renderings, same token ids)", checked)
	}
	fmt.Fprintf(opts.IO.Out, "wrote %s: %s template, %s\n  ollama create NAME -f %s\n", mfPath, fam.Name, check, mfPath)
	return nil
}

func withDefaultSystem(convs []export.Conversation, system string) []export.Conversation {
	out := make([]export.Conversation, len(convs))
	for i, c := range convs {
		out[i] = c
		if len(c.Messages) == 0 || c.Messages[0]["role"] != "system" {
			out[i].Messages = append([]tokenizer.Message{{"role": "system", "content": system}}, c.Messages...)
		}
	}
	return out
}

// ggufString reads one string key of a GGUF file ("" when absent or
// unreadable: the callers' messages say what was expected).
func ggufString(path, key string) string {
	f, err := gguf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	v, _ := f.Value(key)
	s, _ := v.(string)
	return s
}
