package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/tunellm/tune/model"
	"github.com/tunellm/tune/tokenizer"
)

// GenerateOptions are the inputs of `tune generate`.
type GenerateOptions struct {
	IO          *IOStreams
	ModelDir    string
	AdapterDir  string
	Prompt      string
	System      string
	Chat        bool
	Thinking    string
	MaxTokens   int
	Temperature float64
	TopP        float64
	TopK        int
	Seed        uint64
	Stats       bool
	IgnoreEOS   bool
}

func newCmdGenerate(f *Factory, runF func(*GenerateOptions) error) *cobra.Command {
	opts := &GenerateOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "generate --model PATH --prompt TEXT",
		Short: "Generate text from a prompt, streamed as it is produced",
		Long: `Generate runs the model on the CPU and streams the continuation of a prompt to
standard output. Each new token costs one token's forward pass (KV cache).

--temperature 0 is greedy decoding (argmax), the same tokens transformers'
generate(do_sample=False) picks. Otherwise tokens are sampled from
softmax(logits/temperature), restricted by --top-k and --top-p (nucleus), and
--seed makes the run repeatable. Generation stops at the model's end-of-sequence
tokens (config.json eos_token_id and the tokenizer's eos_token) or after
--max-tokens.

--model is a Hugging Face folder, a quantized (GPTQ / compressed-tensors) folder or a
.gguf file (its tokenizer and chat template come from its metadata; its quantized
matrices stay quantized in memory).

With --chat, the prompt is sent as a user message through the model's chat
template with the generation prompt added (--system adds a system message).`,
		Example: `  tune generate --model ./Qwen3-8B --prompt "The capital of France is" --temperature 0
  tune generate --model ./Qwen3-8B --chat --prompt "Write a haiku about rain." --thinking=false
  tune generate --model qwen3-8b-q4_k_m.gguf --chat --prompt "Write a haiku about rain."
  tune generate --model ./Qwen3-8B --chat --prompt "Tell a story" --temperature 0.7 --top-p 0.8 --seed 42
  tune generate --model ./Qwen3-8B --adapter ./out/legal/adapter --chat --prompt "What is consideration in contract law?"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ModelDir == "" {
				return flagErrorf("--model is required: a Hugging Face model folder, a quantized folder or a .gguf file")
			}
			if !cmd.Flags().Changed("prompt") {
				return flagErrorf("--prompt is required")
			}
			if opts.MaxTokens < 1 {
				return flagErrorf("--max-tokens: want at least 1, got %d", opts.MaxTokens)
			}
			if opts.Temperature < 0 {
				return flagErrorf("--temperature: want >= 0, got %g", opts.Temperature)
			}
			if opts.TopP <= 0 || opts.TopP > 1 {
				return flagErrorf("--top-p: want a value in (0, 1], got %g", opts.TopP)
			}
			if opts.TopK < 0 {
				return flagErrorf("--top-k: want >= 0 (0 = off), got %d", opts.TopK)
			}
			if opts.Thinking != "" {
				if _, err := strconv.ParseBool(opts.Thinking); err != nil {
					return flagErrorf("--thinking: want true or false, got %q", opts.Thinking)
				}
			}
			if (opts.System != "" || opts.Thinking != "") && !opts.Chat {
				return flagErrorf("--system and --thinking need --chat")
			}
			if runF != nil {
				return runF(opts)
			}
			return generateRun(opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&opts.ModelDir, "model", "", modelPathHelp)
	fl.StringVar(&opts.AdapterDir, "adapter", "", "PEFT LoRA adapter folder to apply, unmerged")
	fl.StringVar(&opts.Prompt, "prompt", "", "prompt text")
	fl.StringVar(&opts.System, "system", "", "with --chat: a system message")
	fl.BoolVar(&opts.Chat, "chat", false, "send the prompt through the model's chat template")
	fl.StringVar(&opts.Thinking, "thinking", "", "with --chat: pass enable_thinking=true|false to the template")
	fl.IntVar(&opts.MaxTokens, "max-tokens", 256, "stop after this many new tokens")
	fl.Float64Var(&opts.Temperature, "temperature", 0.7, "sampling temperature; 0 is greedy")
	fl.Float64Var(&opts.TopP, "top-p", 1.0, "nucleus sampling: keep the smallest set of tokens with this much probability")
	fl.IntVar(&opts.TopK, "top-k", 0, "keep only the k most likely tokens (0 = off)")
	fl.Uint64Var(&opts.Seed, "seed", 0, "random seed for sampling")
	fl.BoolVar(&opts.Stats, "stats", false, "print prompt and generation speed to stderr at the end")
	fl.BoolVar(&opts.IgnoreEOS, "ignore-eos", false, "do not stop at end-of-sequence tokens (for benchmarks)")
	return cmd
}

func generateRun(opts *GenerateOptions) error {
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	var prompt []int
	if opts.Chat {
		var msgs []tokenizer.Message
		if opts.System != "" {
			msgs = append(msgs, tokenizer.Message{"role": "system", "content": opts.System})
		}
		msgs = append(msgs, tokenizer.Message{"role": "user", "content": opts.Prompt})
		text, err := renderChat(tok, msgs, true, parseThinking(opts.Thinking))
		if err != nil {
			return err
		}
		prompt = tok.Encode(text, false)
	} else {
		prompt = tok.Encode(opts.Prompt, true)
	}
	if len(prompt) == 0 {
		return fmt.Errorf("generate: the prompt is empty after tokenization and the tokenizer adds no BOS token; give a non-empty --prompt")
	}
	m, err := loadModel(opts.ModelDir, opts.AdapterDir)
	if err != nil {
		return err
	}
	defer m.Close()

	stop, err := stopTokens(opts.ModelDir, m, tok)
	if err != nil {
		return err
	}
	if opts.IgnoreEOS {
		stop = nil
	}
	dec := tokenizer.NewStreamDecoder(tok)
	start := time.Now()
	var first time.Time
	n := 0
	err = m.Generate(prompt, opts.MaxTokens, stop, model.SampleOptions{
		Temperature: opts.Temperature, TopP: opts.TopP, TopK: opts.TopK, Seed: opts.Seed,
	}, func(id int) bool {
		if n == 0 {
			first = time.Now()
		}
		n++
		if !slices.Contains(stop, id) { // the end-of-sequence token is not text
			fmt.Fprint(opts.IO.Out, dec.Next(id))
		}
		return true
	})
	fmt.Fprint(opts.IO.Out, dec.Flush())
	fmt.Fprintln(opts.IO.Out)
	if err != nil {
		return err
	}
	if opts.Stats && n > 0 {
		end := time.Now()
		pp := first.Sub(start).Seconds()
		fmt.Fprintf(opts.IO.ErrOut, "prompt: %d tokens in %.2fs (%.1f tok/s); generated: %d tokens (%.1f tok/s)\n",
			len(prompt), pp, float64(len(prompt))/pp, n, float64(n-1)/end.Sub(first).Seconds())
	}
	return nil
}

// stopTokens are the ids that end generation, as transformers' generate() takes them:
// generation_config.json's eos_token_id when the folder has one (Qwen3 lists both
// <|im_end|> and <|endoftext|> there), else config.json's, plus the tokenizer's
// eos_token.
func stopTokens(dir string, m *model.Model, tok *tokenizer.Tokenizer) ([]int, error) {
	stop := append([]int(nil), m.Config.EOS...)
	if b, err := os.ReadFile(filepath.Join(dir, "generation_config.json")); err == nil {
		var gc struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if err := json.Unmarshal(b, &gc); err != nil {
			return nil, fmt.Errorf("generate: %s: %v", filepath.Join(dir, "generation_config.json"), err)
		}
		if len(gc.EOS) > 0 && string(gc.EOS) != "null" {
			var one int
			var many []int
			if json.Unmarshal(gc.EOS, &one) == nil {
				stop = append(stop, one)
			} else if json.Unmarshal(gc.EOS, &many) == nil {
				stop = append(stop, many...)
			} else {
				return nil, fmt.Errorf("generate: %s: eos_token_id: want an int or a list of ints, found %s", filepath.Join(dir, "generation_config.json"), gc.EOS)
			}
		}
	}
	if id, ok := tok.EOS(); ok {
		stop = append(stop, id)
	}
	return stop, nil
}
