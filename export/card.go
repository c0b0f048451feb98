package export

import (
	"bufio"
	"bytes"
	"fmt"
	"github.com/tunellm/tune/internal/fsutil"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Card is what a model card says about one output folder. Empty fields are
// left out (a section without content is not written).
type Card struct {
	Title string
	// Kind picks the "how to load it" section: "adapter" (PEFT folder),
	// "model" (HF folder: merged or fully trained), "quantized" (INT8/INT4
	// safetensors), "gguf" (llama.cpp model file), "gguf-lora" (llama.cpp
	// adapter file), "ollama" (a Modelfile folder).
	Kind        string
	BaseModel   string // Hub id (Qwen/Qwen3-8B) or the local folder it came from
	License     string // the base's licence id (apache-2.0, llama3.1, other, ...)
	LicenseLink string // for "other" licences
	LibraryName string // default from Kind: peft, transformers or gguf
	PipelineTag string // default text-generation
	Tags        []string
	Datasets    []string // Hub ids or file names
	Description string   // free text under the title
	Data        string   // what the model was trained on
	// Params are the recipe's hyper-parameters, in order.
	Params     [][2]string
	Recipe     string // the recipe YAML, quoted verbatim
	Validation *Table
	Files      []string // the files the folder holds, with one line each: "name: what it is"
	Command    string   // the tune command that wrote it
}

// Table is a Markdown table.
type Table struct {
	Header []string
	Rows   [][]string
}

var plainYAML = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/+:-]*$`) // ":" only before a non-space

// yamlScalar quotes s unless it is a plain YAML scalar that stays a string.
func yamlScalar(s string) string {
	switch strings.ToLower(s) {
	case "true", "false", "yes", "no", "on", "off", "null", "~":
		return strconv.Quote(s)
	}
	if plainYAML.MatchString(s) && !strings.HasSuffix(s, ":") {
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			return s
		}
	}
	return strconv.Quote(s) // a JSON string is a YAML double-quoted scalar
}

func (c *Card) library() string {
	if c.LibraryName != "" {
		return c.LibraryName
	}
	switch c.Kind {
	case "adapter":
		return "peft"
	case "gguf", "gguf-lora", "ollama":
		return "gguf"
	}
	return "transformers"
}

// Markdown renders README.md: Hub YAML front matter (the keys the Hub's
// model card metadata reads: base_model, library_name, license, tags,
// pipeline_tag, datasets), then the sections.
func (c *Card) Markdown() string {
	var b strings.Builder
	b.WriteString("---\n")
	// The Hub reads base_model as a model id; a local folder is named in
	// the text only.
	hub := isHubID(c.BaseModel)
	if hub {
		fmt.Fprintf(&b, "base_model: %s\n", yamlScalar(c.BaseModel))
	}
	fmt.Fprintf(&b, "library_name: %s\n", yamlScalar(c.library()))
	if c.License != "" {
		fmt.Fprintf(&b, "license: %s\n", yamlScalar(c.License))
		if c.LicenseLink != "" {
			fmt.Fprintf(&b, "license_link: %s\n", yamlScalar(c.LicenseLink))
		}
	}
	pipe := c.PipelineTag
	if pipe == "" {
		pipe = "text-generation"
	}
	fmt.Fprintf(&b, "pipeline_tag: %s\n", yamlScalar(pipe))
	tags := append([]string{"tune"}, c.Tags...)
	switch c.Kind {
	case "adapter":
		tags = append(tags, "lora")
	case "gguf", "gguf-lora", "ollama":
		tags = append(tags, "gguf")
	}
	if hub && c.library() == "peft" {
		tags = append(tags, "base_model:adapter:"+c.BaseModel)
	}
	yamlList(&b, "tags", dedupe(tags))
	yamlList(&b, "datasets", c.Datasets)
	b.WriteString("---\n\n")

	title := c.Title
	if title == "" {
		title = "Model"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	if c.Description != "" {
		fmt.Fprintf(&b, "%s\n\n", strings.TrimSpace(c.Description))
	}
	if c.BaseModel != "" {
		b.WriteString("## Base model\n\n")
		fmt.Fprintf(&b, "%s", c.baseLink())
		if c.License != "" {
			fmt.Fprintf(&b, ", licence `%s`", c.License)
		}
		b.WriteString(".\n\n")
	}
	if c.Data != "" || len(c.Datasets) > 0 {
		b.WriteString("## Training data\n\n")
		if c.Data != "" {
			fmt.Fprintf(&b, "%s\n\n", strings.TrimSpace(c.Data))
		}
		for _, d := range c.Datasets {
			fmt.Fprintf(&b, "- `%s`\n", d)
		}
		if len(c.Datasets) > 0 {
			b.WriteString("\n")
		}
	}
	if len(c.Params) > 0 || c.Recipe != "" {
		b.WriteString("## Training recipe\n\n")
		if len(c.Params) > 0 {
			writeTable(&b, &Table{Header: []string{"hyper-parameter", "value"}, Rows: pairsRows(c.Params)})
		}
		if c.Recipe != "" {
			fmt.Fprintf(&b, "```yaml\n%s\n```\n\n", strings.TrimRight(c.Recipe, "\n"))
		}
	}
	if c.Validation != nil && len(c.Validation.Rows) > 0 {
		b.WriteString("## Validation\n\n")
		writeTable(&b, c.Validation)
	}
	if len(c.Files) > 0 {
		b.WriteString("## Files\n\n")
		for _, f := range c.Files {
			fmt.Fprintf(&b, "- %s\n", f)
		}
		b.WriteString("\n")
	}
	b.WriteString("## How to use it\n\n")
	b.WriteString(c.usage())
	if c.License != "" {
		b.WriteString("## Licence\n\n")
		fmt.Fprintf(&b, "This model is derived from %s and is subject to its licence (`%s`", c.baseLink(), c.License)
		if c.LicenseLink != "" {
			fmt.Fprintf(&b, ", %s", c.LicenseLink)
		}
		b.WriteString(").\n\n")
	}
	if c.Command != "" {
		fmt.Fprintf(&b, "Made with [tune](https://github.com/tunellm/tune): `%s`\n", c.Command)
	} else {
		b.WriteString("Made with [tune](https://github.com/tunellm/tune).\n")
	}
	return b.String()
}

func (c *Card) baseLink() string {
	if c.BaseModel == "" {
		return "its base model"
	}
	if isHubID(c.BaseModel) {
		return fmt.Sprintf("[%s](https://huggingface.co/%s)", c.BaseModel, c.BaseModel)
	}
	return "`" + c.BaseModel + "`"
}

var hubIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func isHubID(s string) bool {
	if !hubIDRe.MatchString(s) {
		return false
	}
	_, err := os.Stat(s) // a relative local folder is not a Hub id
	return err != nil
}

func (c *Card) usage() string {
	base := c.BaseModel
	if base == "" {
		base = "BASE_MODEL"
	}
	var b strings.Builder
	code := func(lang, s string) { fmt.Fprintf(&b, "```%s\n%s\n```\n\n", lang, strings.TrimSpace(s)) }
	switch c.Kind {
	case "adapter":
		b.WriteString("Transformers + PEFT:\n\n")
		code("python", fmt.Sprintf(`from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained(%q, torch_dtype="auto")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
tokenizer = AutoTokenizer.from_pretrained(%q)`, base, base))
		b.WriteString("vLLM:\n\n")
		code("sh", fmt.Sprintf("vllm serve %s --enable-lora --lora-modules adapter=path/to/this/folder", base))
		b.WriteString("llama.cpp and ollama (the adapter as a llama.cpp LoRA file, applied unmerged):\n\n")
		code("sh", fmt.Sprintf(`tune export gguf-lora --adapter path/to/this/folder --base %s --out adapter.gguf
tune quantize --model %s --format gguf --type Q8_0 --out base.gguf
llama-server -m base.gguf --lora adapter.gguf
tune export ollama --model base.gguf --adapter adapter.gguf --base %s --out ollama/ && ollama create my-model -f ollama/Modelfile`, base, base, base))
		b.WriteString("tune:\n\n")
		code("sh", fmt.Sprintf("tune generate --model %s --adapter path/to/this/folder --chat --prompt \"Hello\"", base))
	case "model", "quantized":
		b.WriteString("Transformers:\n\n")
		code("python", `from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", torch_dtype="auto")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")`)
		b.WriteString("vLLM:\n\n")
		code("sh", "vllm serve path/to/this/folder")
		if c.Kind == "model" {
			b.WriteString("llama.cpp and ollama:\n\n")
			code("sh", `tune quantize --model path/to/this/folder --format gguf --type Q4_K_M --out model.gguf
llama-server -m model.gguf
tune export ollama --model model.gguf --base path/to/this/folder --out ollama/ && ollama create my-model -f ollama/Modelfile`)
		}
	case "gguf":
		b.WriteString("llama.cpp:\n\n")
		code("sh", "llama-server -m model.gguf --jinja")
		b.WriteString("ollama:\n\n")
		code("sh", "tune export ollama --model model.gguf --base "+base+" --out ollama/\nollama create my-model -f ollama/Modelfile")
	case "gguf-lora":
		b.WriteString("llama.cpp (the base as a GGUF, the adapter applied unmerged):\n\n")
		code("sh", "llama-server -m base.gguf --lora adapter.gguf")
		b.WriteString("ollama:\n\n")
		code("sh", "tune export ollama --model base.gguf --adapter adapter.gguf --base "+base+" --out ollama/\nollama create my-model -f ollama/Modelfile")
	case "ollama":
		b.WriteString("ollama:\n\n")
		code("sh", "ollama create my-model -f Modelfile\nollama run my-model")
	}
	return b.String()
}

func yamlList(b *strings.Builder, key string, vals []string) {
	if len(vals) == 0 {
		return
	}
	fmt.Fprintf(b, "%s:\n", key)
	for _, v := range vals {
		fmt.Fprintf(b, "- %s\n", yamlScalar(v))
	}
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func pairsRows(p [][2]string) [][]string {
	rows := make([][]string, len(p))
	for i, kv := range p {
		rows[i] = []string{kv[0], kv[1]}
	}
	return rows
}

func writeTable(b *strings.Builder, t *Table) {
	cell := func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
	}
	row := func(cells []string) {
		b.WriteString("|")
		for i := range t.Header {
			v := ""
			if i < len(cells) {
				v = cells[i]
			}
			fmt.Fprintf(b, " %s |", cell(v))
		}
		b.WriteString("\n")
	}
	row(t.Header)
	b.WriteString("|")
	for range t.Header {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		row(r)
	}
	b.WriteString("\n")
}

// WriteModelCard writes dir/README.md (atomically) from card.
func WriteModelCard(dir string, card Card) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := fsutil.WriteFile(filepath.Join(dir, "README.md"), []byte(card.Markdown())); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// BaseLicense returns the license (and license_link) of a model folder's
// README.md front matter, as the Hub stores it, or "" when there is none.
func BaseLicense(dir string) (license, link string) {
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil || !bytes.HasPrefix(b, []byte("---")) {
		return "", ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b[3:]))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "---" {
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		} else {
			v = strings.Trim(v, "'")
		}
		switch strings.TrimSpace(k) {
		case "license":
			license = v
		case "license_link":
			link = v
		}
	}
	return license, link
}
