package recipes

import (
	"fmt"
	"github.com/tunellm/tune/hub"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// key is one recipe key: its type, default (as YAML), doc line, and the field
// it fills.
type key struct {
	name string
	kind string // string, path, int, number, bool, list, ints, map, fraction|path
	def  string
	doc  string
	ptr  func(r *Recipe) any
}

// keys is the recipe's contract: every key, in the order Explain and YAML
// print them. Defaults follow PEFT's and transformers' usual LoRA settings.
var keys = []key{
	{"model.path", "path", "", "Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a Hub id org/name[@rev] (downloaded to the HF cache)", func(r *Recipe) any { return &r.Model.Path }},

	{"dataset.path", "path", "", "training data: a .jsonl/.json/.parquet/.arrow file, a folder, a glob, or a Hub dataset id org/name[:split]", func(r *Recipe) any { return &r.Dataset.Path }},
	{"dataset.format", "string", "chat", "row format: chat (messages), instruction, completion or text", func(r *Recipe) any { return &r.Dataset.Format }},
	{"dataset.columns", "map", "{}", "field -> column name (messages, text, instruction, input, output, prompt, completion)", func(r *Recipe) any { return &r.Dataset.Columns }},
	{"dataset.validation", "fraction|path", "0", "held-out data: a fraction of the rows in [0, 1), or a file of its own", func(r *Recipe) any { return &r.Dataset.Validation }},
	{"dataset.system_prompt", "string", "", "system message added to conversations that have none", func(r *Recipe) any { return &r.Dataset.SystemPrompt }},
	{"dataset.add_eos", "bool", "true", "end each example with the tokenizer's EOS when the template does not", func(r *Recipe) any { return &r.Dataset.AddEOS }},
	{"dataset.train_on", "string", "assistant", "tokens that take loss: assistant (replies / completions) or all", func(r *Recipe) any { return &r.Dataset.TrainOn }},
	{"dataset.role_map", "map", "{}", "ShareGPT \"from\" value -> chat role, over the defaults (human, gpt, ...)", func(r *Recipe) any { return &r.Dataset.RoleMap }},
	{"dataset.skip_bad_rows", "bool", "false", "skip (and count) rows that cannot become examples instead of failing", func(r *Recipe) any { return &r.Dataset.SkipBadRows }},
	{"dataset.cache_dir", "path", "", "tokenized-data cache folder (default: the user cache folder)", func(r *Recipe) any { return &r.Dataset.CacheDir }},
	{"dataset.chat_template", "string", "", "a Jinja chat template replacing the tokenizer's", func(r *Recipe) any { return &r.Dataset.ChatTemplate }},

	{"lora.r", "int", "16", "rank of the low-rank update B·A", func(r *Recipe) any { return &r.LoRA.R }},
	{"lora.alpha", "number", "32", "scale numerator: the update is (alpha/r)·B·A (alpha/sqrt(r) with use_rslora)", func(r *Recipe) any { return &r.LoRA.Alpha }},
	{"lora.dropout", "number", "0.05", "dropout on the adapter's input while training", func(r *Recipe) any { return &r.LoRA.Dropout }},
	{"lora.target_modules", "list", "all-linear", "linear layers to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or all-linear", func(r *Recipe) any { return &r.LoRA.TargetModules }},
	{"lora.layers_to_transform", "ints", "[]", "decoder layers to adapt (empty: all)", func(r *Recipe) any { return &r.LoRA.LayersToTransform }},
	{"lora.use_rslora", "bool", "false", "rank-stabilized scale alpha/sqrt(r)", func(r *Recipe) any { return &r.LoRA.UseRSLoRA }},
	{"lora.rank_pattern", "map", "{}", "module regex -> rank over lora.r (PEFT rank_pattern: (.*\\.)?(key)$ matched on model.layers.N.self_attn.q_proj, first match wins)", func(r *Recipe) any { return &r.LoRA.RankPattern }},
	{"lora.alpha_pattern", "map", "{}", "module regex -> alpha over lora.alpha (PEFT alpha_pattern)", func(r *Recipe) any { return &r.LoRA.AlphaPattern }},
	{"lora.use_dora", "bool", "false", "weight-decomposed LoRA (DoRA, PEFT use_dora): a trained magnitude per output row", func(r *Recipe) any { return &r.LoRA.UseDoRA }},
	{"lora.init_adapter", "path", "", "continue training from this PEFT adapter folder", func(r *Recipe) any { return &r.LoRA.InitAdapter }},
	{"lora.base_quant", "string", "none", "QLoRA: store the frozen base's linear layers quantized (nf4: bitsandbytes NF4 with double quantization; int4, int8: tune quantize --format safetensors' codes; q4_k, q8_0: GGUF blocks), dequantized inside the matmuls", func(r *Recipe) any { return &r.LoRA.BaseQuant }},
	{"lora.base_quant_group", "int", "0", "int4/int8 base: input columns per scale, -1 per output channel, 0 tune quantize's default (128 for int4, -1 for int8)", func(r *Recipe) any { return &r.LoRA.BaseQuantGroup }},
	{"lora.base_quant_sym", "bool", "true", "int4/int8 base: symmetric codes (false: zero points, as tune quantize --sym=false)", func(r *Recipe) any { return &r.LoRA.BaseQuantSym }},
	{"lora.base_from", "path", "", "QLoRA on a pre-quantized base, read as stored: a folder from tune quantize --format safetensors (GPTQ or compressed-tensors) or a GGUF; model.path stays the full-precision base the adapter is for", func(r *Recipe) any { return &r.LoRA.BaseFrom }},
	{"lora.base_quant_max_kld", "number|off", "0.1", "gate (with validate.data): mean KL divergence (nats) of the adapter on the full-precision base (what merging gives) from the adapter on the quantized base it was trained on", func(r *Recipe) any { return &r.LoRA.BaseQuantMaxKLD }},

	{"train.mode", "string", "lora", "lora (train an adapter) or full (train every weight)", func(r *Recipe) any { return &r.Train.Mode }},
	{"train.epochs", "int", "1", "passes over the training data (ignored when max_steps > 0)", func(r *Recipe) any { return &r.Train.Epochs }},
	{"train.max_steps", "int", "0", "optimizer steps to run, cycling the data (0: use epochs)", func(r *Recipe) any { return &r.Train.MaxSteps }},
	{"train.batch_size", "int", "1", "sequences per micro-batch", func(r *Recipe) any { return &r.Train.BatchSize }},
	{"train.grad_accum", "int", "1", "micro-batches per optimizer step", func(r *Recipe) any { return &r.Train.GradAccum }},
	{"train.max_seq_len", "int", "2048", "tokens per sequence: longer examples are cut, packed sequences are this long", func(r *Recipe) any { return &r.Train.MaxSeqLen }},
	{"train.packing", "bool", "true", "pack several examples per sequence (attention stays inside each)", func(r *Recipe) any { return &r.Train.Packing }},
	{"train.lr", "number", "2e-4", "peak learning rate", func(r *Recipe) any { return &r.Train.LR }},
	{"train.schedule", "string", "cosine", "learning-rate schedule after warmup: constant, linear or cosine (transformers' get_*_schedule_with_warmup)", func(r *Recipe) any { return &r.Train.Schedule }},
	{"train.warmup_steps", "int", "10", "steps of linear warmup from 0", func(r *Recipe) any { return &r.Train.WarmupSteps }},
	{"train.weight_decay", "number", "0", "AdamW decoupled weight decay", func(r *Recipe) any { return &r.Train.WeightDecay }},
	{"train.adam_beta1", "number", "0.9", "AdamW beta1", func(r *Recipe) any { return &r.Train.AdamBeta1 }},
	{"train.adam_beta2", "number", "0.999", "AdamW beta2", func(r *Recipe) any { return &r.Train.AdamBeta2 }},
	{"train.adam_eps", "number", "1e-8", "AdamW epsilon", func(r *Recipe) any { return &r.Train.AdamEps }},
	{"train.max_grad_norm", "number", "1.0", "clip the global gradient L2 norm to this (0: off)", func(r *Recipe) any { return &r.Train.MaxGradNorm }},
	{"train.seed", "int", "42", "seed of adapter init, dropout, shuffling and the validation split", func(r *Recipe) any { return &r.Train.Seed }},
	{"train.compute_dtype", "string", "f32", "the frozen base's matmuls on the CPU: f32 (exact), or bf16 as torch autocast computes them (activations rounded to bf16, bf16 weights as stored, fp32 sums with AVX512_BF16: about 1.6x faster a step, loss within ~1e-3; needs AVX512_BF16 and BF16 weights, else f32 with a warning); LoRA weights, attention, norms and the loss stay f32", func(r *Recipe) any { return &r.Train.ComputeDType }},
	{"train.device", "string", "cpu", "where to train: cpu, cuda (an NVIDIA GPU, driver and cuBLAS loaded at run time) or auto (cuda when a GPU is found, else cpu with a notice); --device overrides it", func(r *Recipe) any { return &r.Train.Device }},
	{"train.eval_every", "int", "100", "validation loss every N steps (and at the end; 0: only at the end)", func(r *Recipe) any { return &r.Train.EvalEvery }},
	{"train.save_every", "int", "100", "checkpoint every N steps (0: only on interrupt)", func(r *Recipe) any { return &r.Train.SaveEvery }},
	{"train.keep_checkpoints", "int", "3", "checkpoints kept (the oldest are removed)", func(r *Recipe) any { return &r.Train.KeepCheckpoints }},
	{"train.gradient_checkpointing", "bool", "false", "recompute activations in backward: less memory, about 1/3 more compute", func(r *Recipe) any { return &r.Train.GradientCheckpointing }},
	{"train.loss_chunk", "int", "0", "rows of logits computed at once in the loss (0: the model's default)", func(r *Recipe) any { return &r.Train.LossChunk }},

	{"output.dir", "path", "", "run folder: adapter/, checkpoints/, metrics.jsonl, recipe.yaml", func(r *Recipe) any { return &r.Output.Dir }},
	{"output.dtype", "string", "f32", "dtype of the saved adapter: f32, bf16 or f16", func(r *Recipe) any { return &r.Output.DType }},

	// The stages after training (package pipeline): a recipe that sets any
	// of these keys makes tune lora run them too; tune run always does.
	{"merge.enabled", "bool", "true", "fold the adapter into the base (merged/, as PEFT's merge_and_unload); quantize starts from it", func(r *Recipe) any { return &r.Merge.Enabled }},
	{"merge.dtype", "string", "", "dtype of the merged weights: bf16, f16 or f32 (empty: the base's)", func(r *Recipe) any { return &r.Merge.DType }},

	{"quantize", "outputs", "[]", "quantized outputs of the merged model, a list of {format: gguf, type: Q4_K_M} (a llama.cpp mix) or " +
		"{format: safetensors, bits: 4|8, group_size: 128 (-1: per channel), method: rtn|gptq, layout: gptq|compressed-tensors, sym: true, calib: FILE (gptq)}",
		func(r *Recipe) any { return &r.Quantize }},

	{"validate.data", "path", "", "held-out text (.txt, .jsonl/.json text field, .parquet text column) for perplexity, KL divergence and the merge check", func(r *Recipe) any { return &r.Checks.Data }},
	{"validate.ctx", "int", "512", "tokens per validation window", func(r *Recipe) any { return &r.Checks.Ctx }},
	{"validate.bench", "benches", "[]", "spot-checks run on every artifact and its reference: a list of {task: mmlu|arc|hellaswag|gsm8k|mcq, data: FILE, limit: 50, shots: 0}", func(r *Recipe) any { return &r.Checks.Bench }},
	{"validate.max_ppl_increase_pct", "number|off", "5", "gate: a quantized model's perplexity at most this % above the merged model's", func(r *Recipe) any { return &r.Checks.MaxPPLIncreasePct }},
	{"validate.max_mean_kld", "number|off", "0.1", "gate: mean KL divergence (nats) of a quantized model's next-token distributions from the merged model's", func(r *Recipe) any { return &r.Checks.MaxMeanKLD }},
	{"validate.min_top1_agreement", "number|off", "0.9", "gate: fraction of tokens whose argmax agrees between a quantized model and the merged model", func(r *Recipe) any { return &r.Checks.MinTop1Agreement }},
	{"validate.max_acc_drop", "number|off", "0.05", "gate: spot-check accuracy drop (a fraction) of any artifact from its reference", func(r *Recipe) any { return &r.Checks.MaxAccDrop }},
	{"validate.min_ppl_decrease_pct", "number|off", "off", "gate: the adapter's perplexity on validate.data at least this % below the base's (negative: at most -N % above)", func(r *Recipe) any { return &r.Checks.MinPPLDecreasePct }},
	{"validate.merge_logit_tol", "number|off", "0.01", "gate: max |logit difference| of the merged model from base+adapter on validate.data (raise for a bf16 merge of a big model)", func(r *Recipe) any { return &r.Checks.MergeLogitTol }},
}

func (k *key) setDefault(r *Recipe) error {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(k.def), &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return k.set(r, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: ""}, "")
	}
	return k.set(r, doc.Content[0], "")
}

// set stores node n in the key's field; relative paths are joined to base.
func (k *key) set(r *Recipe, n *yaml.Node, base string) error {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // "key:" with no value keeps the default
	}
	switch p := k.ptr(r).(type) {
	case *string:
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("want a string, found %s", kindName(n))
		}
		v := n.Value
		k.noteHubID(r, v, base)
		if k.kind == "path" && v != "" && base != "" && !filepath.IsAbs(v) {
			v = filepath.Join(base, v)
		}
		*p = v
	case *int:
		v, err := intValue(n)
		if err != nil {
			return err
		}
		if v < math.MinInt32 || v > math.MaxInt32 {
			return fmt.Errorf("%d is out of range", v)
		}
		*p = int(v)
	case *uint64:
		v, err := intValue(n)
		if err != nil {
			return err
		}
		if v < 0 {
			return fmt.Errorf("want a non-negative integer, found %d", v)
		}
		*p = uint64(v)
	case *float64:
		if k.kind == "number|off" {
			return setThreshold(p, n)
		}
		v, err := floatValue(n)
		if err != nil {
			return err
		}
		*p = v
	case *bool:
		return setBool(p, n)
	case *[]QuantizeOutput:
		return setQuantize(p, n, base)
	case *[]BenchSpec:
		return setBench(p, n, base)
	case *[]string:
		// PEFT accepts one string ("all-linear") or a list.
		switch n.Kind {
		case yaml.ScalarNode:
			*p = []string{n.Value}
		case yaml.SequenceNode:
			out := make([]string, 0, len(n.Content))
			for _, c := range n.Content {
				if c.Kind != yaml.ScalarNode || c.Tag == "!!null" {
					return fmt.Errorf("want a list of strings, found %s at line %d", kindName(c), c.Line)
				}
				out = append(out, c.Value)
			}
			*p = out
		default:
			return fmt.Errorf("want a string or a list of strings, found %s", kindName(n))
		}
	case *[]int:
		var items []*yaml.Node
		switch n.Kind {
		case yaml.ScalarNode:
			items = []*yaml.Node{n}
		case yaml.SequenceNode:
			items = n.Content
		default:
			return fmt.Errorf("want a list of integers, found %s", kindName(n))
		}
		out := make([]int, 0, len(items))
		for _, c := range items {
			v, err := intValue(c)
			if err != nil {
				return fmt.Errorf("list item: %w", err)
			}
			out = append(out, int(v))
		}
		*p = out
	case *map[string]string:
		if n.Kind != yaml.MappingNode {
			return fmt.Errorf("want a mapping (name: value), found %s", kindName(n))
		}
		m := map[string]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kv := n.Content[i+1]
			if kv.Kind != yaml.ScalarNode {
				return fmt.Errorf("%s: want a string, found %s", n.Content[i].Value, kindName(kv))
			}
			m[n.Content[i].Value] = kv.Value
		}
		*p = m
	case *Validation:
		if n.Kind != yaml.ScalarNode {
			return fmt.Errorf("want a fraction or a path, found %s", kindName(n))
		}
		if f, err := strconv.ParseFloat(n.Value, 64); err == nil && n.Tag != "!!str" {
			*p = Validation{Fraction: f}
			return nil
		}
		v := n.Value
		if v != "" && base != "" && !filepath.IsAbs(v) {
			v = filepath.Join(base, v)
		}
		*p = Validation{Path: v}
	default:
		panic(fmt.Sprintf("recipes: key %s: unhandled field type %T", k.name, p))
	}
	return nil
}

func setBool(p *bool, n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want true or false, found %s", kindName(n))
	}
	switch strings.ToLower(n.Value) {
	case "true", "yes", "on":
		*p = true
	case "false", "no", "off":
		*p = false
	default:
		return fmt.Errorf("want true or false, found %q", n.Value)
	}
	return nil
}

func intValue(n *yaml.Node) (int64, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("want an integer, found %s", kindName(n))
	}
	s := strings.ReplaceAll(n.Value, "_", "")
	v, err := strconv.ParseInt(s, 0, 64)
	if err == nil && n.Tag != "!!str" {
		return v, nil
	}
	// 1e3 or 100.0 are integers written as numbers.
	if f, ferr := strconv.ParseFloat(s, 64); ferr == nil && n.Tag != "!!str" && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return int64(f), nil
	}
	return 0, fmt.Errorf("want an integer, found %q", n.Value)
}

func floatValue(n *yaml.Node) (float64, error) {
	if n.Kind != yaml.ScalarNode {
		return 0, fmt.Errorf("want a number, found %s", kindName(n))
	}
	if n.Tag != "!!str" {
		if v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64); err == nil {
			return v, nil
		}
	}
	return 0, fmt.Errorf("want a number, found %q", n.Value)
}

// format writes the key's value in r as YAML.
func (k *key) format(r *Recipe) string {
	switch p := k.ptr(r).(type) {
	case *string:
		if *p == "" {
			return `""`
		}
		return yamlScalar(*p)
	case *int:
		return strconv.Itoa(*p)
	case *uint64:
		return strconv.FormatUint(*p, 10)
	case *float64:
		if math.IsNaN(*p) {
			return "off"
		}
		return strconv.FormatFloat(*p, 'g', -1, 64)
	case *bool:
		return strconv.FormatBool(*p)
	case *[]string:
		if len(*p) == 1 && (*p)[0] == "all-linear" {
			return "all-linear"
		}
		q := make([]string, len(*p))
		for i, s := range *p {
			q[i] = yamlScalar(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case *[]int:
		q := make([]string, len(*p))
		for i, v := range *p {
			q[i] = strconv.Itoa(v)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case *map[string]string:
		ks := make([]string, 0, len(*p))
		for k := range *p {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		q := make([]string, len(ks))
		for i, k := range ks {
			q[i] = yamlScalar(k) + ": " + yamlScalar((*p)[k])
		}
		return "{" + strings.Join(q, ", ") + "}"
	case *[]QuantizeOutput:
		return formatQuantize(*p)
	case *[]BenchSpec:
		return formatBench(*p)
	case *Validation:
		if p.Path != "" {
			return yamlScalar(p.Path)
		}
		return strconv.FormatFloat(p.Fraction, 'g', -1, 64)
	}
	return "?"
}

// yamlScalar quotes s when plain YAML would read it as something else.
func yamlScalar(s string) string {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err == nil && len(n.Content) == 1 &&
		n.Content[0].Kind == yaml.ScalarNode && n.Content[0].Tag == "!!str" && n.Content[0].Value == s &&
		!strings.ContainsAny(s, "\n#:{}[],&*!|>'\"%@`") {
		return s
	}
	return strconv.Quote(s)
}

// noteHubID records, for model.path and dataset.path, a value shaped like a
// Hugging Face Hub id ("Qwen/Qwen3-8B", "org/name@rev", "org/data:split")
// that names no path beside the recipe (nor, from --set, in the working
// folder): the command downloads that repository (or finds it in the cache)
// before training, unless the path appears by then.
func (k *key) noteHubID(r *Recipe, v, base string) {
	var id *string
	switch k.name {
	case "model.path":
		id = &r.Model.ID
	case "dataset.path":
		id = &r.Dataset.ID
	default:
		return
	}
	*id = ""
	repo := v
	if i := strings.LastIndexByte(repo, ':'); i > 0 && k.name == "dataset.path" {
		repo = repo[:i]
	}
	if !hub.LooksLikeID(repo) || filepath.IsAbs(v) {
		return
	}
	if _, err := os.Lstat(filepath.Join(base, v)); err != nil {
		*id = v
	}
}
