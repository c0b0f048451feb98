package hub

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

// modelFiles are the top-level files tune reads besides the weights: configs,
// tokenizers (tokenizer.json, SentencePiece, GPT-2 vocab/merges), chat templates,
// PEFT adapter configs and the model card (for the base model's licence).
var modelFiles = map[string]bool{
	"config.json": true, "generation_config.json": true,
	"tokenizer.json": true, "tokenizer_config.json": true, "special_tokens_map.json": true,
	"tokenizer.model": true, "vocab.json": true, "merges.txt": true, "added_tokens.json": true,
	"chat_template.jinja": true, "chat_template.json": true,
	"adapter_config.json": true,
	"README.md":           true,
}

// isPickle: PyTorch pickles run code when loaded; tune never downloads them.
func isPickle(p string) bool {
	switch strings.ToLower(path.Ext(p)) {
	case ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle":
		return true
	}
	return false
}

// Glob is a huggingface_hub allow_patterns pattern (fnmatch): '*' matches any run of
// characters, '/' included; '?' one character; [abc], [a-z], [!abc] a class. A pattern
// ending in '/' matches everything under that folder.
type Glob struct {
	Pattern string
	re      *regexp.Regexp
}

// CompileGlob checks and compiles a pattern.
func CompileGlob(pattern string) (Glob, error) {
	p := pattern
	if strings.HasSuffix(p, "/") {
		p += "*"
	}
	var b strings.Builder
	b.WriteString(`^`)
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '[':
			// fnmatch: a ']' right after '[' or '[!' is a literal member of the class.
			k := i + 1
			if k < len(p) && p[k] == '!' {
				k++
			}
			if k < len(p) && p[k] == ']' {
				k++
			}
			j := strings.IndexByte(p[k:], ']')
			if j < 0 {
				return Glob{}, fmt.Errorf("hub: glob %q: '[' without ']'", pattern)
			}
			class := p[i+1 : k+j]
			b.WriteByte('[')
			if class[0] == '!' {
				b.WriteByte('^')
				class = class[1:]
			}
			for _, c := range []byte(class) {
				if c == '\\' || c == '[' || c == ']' || c == '^' {
					b.WriteByte('\\')
				}
				b.WriteByte(c)
			}
			b.WriteByte(']')
			i = k + j
		default:
			// A run of literal bytes at once: multi-byte UTF-8 stays whole.
			j := i + 1
			for j < len(p) && !strings.ContainsRune("*?[", rune(p[j])) {
				j++
			}
			b.WriteString(regexp.QuoteMeta(p[i:j]))
			i = j - 1
		}
	}
	b.WriteString(`$`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return Glob{}, fmt.Errorf("hub: glob %q: %v", pattern, err)
	}
	return Glob{Pattern: pattern, re: re}, nil
}

// Match reports whether the repository path p matches.
func (g Glob) Match(p string) bool { return g.re.MatchString(p) }

// selectFiles picks what a Download fetches. With include patterns: the files that
// match any of them (never pickles). Without: selectModel or selectDataset.
func selectFiles(info *Info, include []string) ([]File, error) {
	if len(include) > 0 {
		var globs []Glob
		for _, p := range include {
			g, err := CompileGlob(p)
			if err != nil {
				return nil, err
			}
			globs = append(globs, g)
		}
		var out []File
		pickles := 0
		for _, f := range info.Files {
			for _, g := range globs {
				if g.Match(f.Path) {
					if isPickle(f.Path) {
						pickles++
					} else {
						out = append(out, f)
					}
					break
				}
			}
		}
		if len(out) == 0 {
			why := ""
			if pickles > 0 {
				why = fmt.Sprintf(" (%d PyTorch pickle files matched; tune never downloads pickles)", pickles)
			}
			return nil, errorf(ErrNotFound, nil, "hub: %s: --include %s matches no file of the %d in the repo%s", info.Ref, strings.Join(include, ","), len(info.Files), why)
		}
		return out, nil
	}
	if info.Ref.Type == Dataset {
		return selectDataset(info)
	}
	return selectModel(info)
}

// selectModel: the top-level configs and tokenizer files, the safetensors index and
// every top-level *.safetensors (narrowed to the index's shards by narrowToIndex once
// the index is read). Subfolders (original/, onnx/, ...) are not fetched.
func selectModel(info *Info) ([]File, error) {
	var out, pickles, ggufs []File
	weights := 0
	for _, f := range info.Files {
		top := !strings.Contains(f.Path, "/")
		switch {
		case !top:
		case modelFiles[f.Path], strings.HasSuffix(f.Path, ".safetensors.index.json"):
			out = append(out, f)
		case strings.HasSuffix(f.Path, ".safetensors"):
			out = append(out, f)
			weights++
		case isPickle(f.Path):
			pickles = append(pickles, f)
		case strings.HasSuffix(f.Path, ".gguf"):
			ggufs = append(ggufs, f)
		}
	}
	if weights > 0 {
		return out, nil
	}
	switch {
	case len(pickles) > 0:
		return nil, errorf(ErrNoWeights, nil, "hub: %s has only PyTorch pickle weights (%s): tune never downloads pickles; use a safetensors version of this model", info.Ref, names(pickles))
	case len(ggufs) > 0:
		return nil, errorf(ErrNoWeights, nil, "hub: %s has GGUF files but no safetensors (%s): fetch one with `tune download %s --include FILE.gguf` and pass its path", info.Ref, names(ggufs), info.Ref)
	}
	return nil, errorf(ErrNoWeights, nil, "hub: %s has no *.safetensors weights at its top level (%d files)", info.Ref, len(info.Files))
}

func names(fs []File) string {
	var s []string
	for i, f := range fs {
		if i == 3 {
			s = append(s, fmt.Sprintf("and %d more", len(fs)-3))
			break
		}
		s = append(s, f.Path)
	}
	return strings.Join(s, ", ")
}

// narrowToIndex drops the top-level *.safetensors a sharded model's index does not name
// (Mistral repos also hold consolidated.safetensors, the same weights in another
// layout) and checks that every shard the index names is in the repo.
// adapter_model.safetensors is kept.
func narrowToIndex(ref Ref, sel []File, indexPath string, index []byte) ([]File, error) {
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(index, &idx); err != nil {
		return nil, errorf(ErrProtocol, err, "hub: %s: %s: %v", ref, indexPath, err)
	}
	shards := map[string]bool{}
	for _, s := range idx.WeightMap {
		shards[path.Join(path.Dir(indexPath), s)] = true
	}
	if len(shards) == 0 {
		return nil, errorf(ErrProtocol, nil, "hub: %s: %s has an empty weight_map", ref, indexPath)
	}
	have := map[string]bool{}
	var out []File
	for _, f := range sel {
		if strings.HasSuffix(f.Path, ".safetensors") && !shards[f.Path] && f.Path != "adapter_model.safetensors" {
			continue
		}
		have[f.Path] = true
		out = append(out, f)
	}
	var missing []string
	for s := range shards {
		if !have[s] {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, errorf(ErrNotFound, nil, "hub: %s: %s names shard %s, which the repo does not have", ref, indexPath, missing[0])
	}
	return out, nil
}

// selectDataset: the dataset's Parquet files (the Hub's data/<split>-*.parquet layout,
// any folder); else its JSONL/JSON files; else Arrow files.
func selectDataset(info *Info) ([]File, error) {
	groups := [][]string{{".parquet"}, {".jsonl", ".json"}, {".arrow"}}
	for _, exts := range groups {
		var out []File
		for _, f := range info.Files {
			base := path.Base(f.Path)
			if strings.HasPrefix(base, ".") || base == "dataset_infos.json" || base == "dataset_info.json" || base == "state.json" {
				continue
			}
			for _, e := range exts {
				if strings.HasSuffix(f.Path, e) {
					out = append(out, f)
				}
			}
		}
		if len(out) > 0 {
			// datasets.save_to_disk folders need their state.json and dataset_info.json.
			if exts[0] == ".arrow" {
				for _, f := range info.Files {
					if b := path.Base(f.Path); b == "state.json" || b == "dataset_info.json" {
						out = append(out, f)
					}
				}
			}
			return out, nil
		}
	}
	return nil, errorf(ErrNoWeights, nil, "hub: dataset %s has no Parquet, JSONL or Arrow files; the Hub's Parquet conversion may have them: %s@refs/convert/parquet", info.Ref, info.Ref.ID)
}

// shardRE is the Hub's shard name: <split>-00000-of-00003.<ext>.
var shardRE = regexp.MustCompile(`^(.+)-\d{5}-of-\d{5}\.[A-Za-z0-9.]+$`)

// convertedRE is a file of the Hub's Parquet conversion: <config>/<split>/0000.parquet
// (partial-<split> when the conversion stopped early).
var convertedRE = regexp.MustCompile(`^\d{4}\.parquet$`)

// SplitOf is the split a dataset file belongs to by the Hub's naming:
// data/train-00000-of-00002.parquet, default/train/0000.parquet and train.jsonl are
// all "train". "" when the name says nothing.
func SplitOf(p string) string {
	base := path.Base(p)
	if m := shardRE.FindStringSubmatch(base); m != nil {
		return m[1]
	}
	if convertedRE.MatchString(base) && strings.Contains(p, "/") {
		return strings.TrimPrefix(path.Base(path.Dir(p)), "partial-")
	}
	name := base
	if i := strings.IndexByte(name, '.'); i > 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation":
		return name
	}
	return ""
}

// pickSplit keeps the files of one split. When no file names a split the choice is
// moot and every file stays.
func pickSplit(ref Ref, files []File, split string) ([]File, error) {
	var out []File
	splits := map[string]bool{}
	for _, f := range files {
		s := SplitOf(f.Path)
		if s != "" {
			splits[s] = true
		}
		if s == split {
			out = append(out, f)
		}
	}
	if len(splits) == 0 {
		return files, nil
	}
	if len(out) == 0 {
		names := make([]string, 0, len(splits))
		for s := range splits {
			names = append(names, s)
		}
		sort.Strings(names)
		return nil, errorf(ErrNoSplit, nil, "hub: dataset %s has no split %q; its splits: %s (name one as %s:%s)", ref, split, strings.Join(names, ", "), ref, names[0])
	}
	return out, nil
}
