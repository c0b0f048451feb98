package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// TokenizeOptions are the inputs of `tune tokenize`.
type TokenizeOptions struct {
	IO        *IOStreams
	ModelDir  string
	Chat      bool
	Thinking  string // "", "true" or "false": enable_thinking passed to the chat template
	NoSpecial bool
	JSON      bool
}

func newCmdTokenize(f *Factory, runF func(*TokenizeOptions) error) *cobra.Command {
	opts := &TokenizeOptions{IO: f.IO}
	cmd := &cobra.Command{
		Use:   "tokenize --model DIR",
		Short: "Turn text from stdin into token ids with the model's own tokenizer",
		Long: `Tokenize reads text from standard input and prints its token ids, computed as
Hugging Face tokenizers computes them from the model's tokenizer.json: special tokens
the tokenizer adds (Llama 3's <|begin_of_text|>) are added unless --no-special.

With --chat, standard input is a JSON list of {"role", "content"} messages; they are
rendered with the model's chat template (tokenizer_config.json or chat_template.jinja)
with the generation prompt added, exactly as transformers' apply_chat_template(...,
add_generation_prompt=True, tokenize=True) does. --thinking=false passes
enable_thinking=False to templates that support it (Qwen3).`,
		Example: `  echo -n "Hello world" | tune tokenize --model ./Qwen3-8B
  echo '[{"role":"user","content":"Hi"}]' | tune tokenize --model ./Qwen3-8B --chat --json
  echo '[{"role":"user","content":"2+2?"}]' | tune tokenize --model ./Qwen3-8B --chat --thinking=false`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ModelDir == "" {
				return flagErrorf("--model is required: a Hugging Face model folder with tokenizer.json")
			}
			if opts.Thinking != "" {
				if _, err := strconv.ParseBool(opts.Thinking); err != nil {
					return flagErrorf("--thinking: want true or false, got %q", opts.Thinking)
				}
				if !opts.Chat {
					return flagErrorf("--thinking needs --chat")
				}
			}
			if runF != nil {
				return runF(opts)
			}
			return tokenizeRun(opts)
		},
	}
	cmd.Flags().StringVar(&opts.ModelDir, "model", "", "model folder with tokenizer.json (and tokenizer_config.json)")
	cmd.Flags().BoolVar(&opts.Chat, "chat", false, "stdin is a JSON list of messages; apply the chat template with the generation prompt")
	cmd.Flags().StringVar(&opts.Thinking, "thinking", "", "with --chat: pass enable_thinking=true|false to the template")
	cmd.Flags().BoolVar(&opts.NoSpecial, "no-special", false, "do not add the tokenizer's special tokens (BOS) to plain text")
	cmd.Flags().BoolVar(&opts.JSON, "json", false, `print {"ids":[...]}`)
	return cmd
}

func tokenizeRun(opts *TokenizeOptions) error {
	if err := resolveModelArgs(context.Background(), opts.IO, &opts.ModelDir); err != nil {
		return err
	}
	tok, err := loadTokenizer(opts.ModelDir)
	if err != nil {
		return err
	}
	in, err := io.ReadAll(opts.IO.In)
	if err != nil {
		return fmt.Errorf("tokenize: read stdin: %w", err)
	}
	var ids []int
	if opts.Chat {
		text, err := renderChatJSON(tok, in, true, parseThinking(opts.Thinking))
		if err != nil {
			return err
		}
		ids = tok.Encode(text, false)
	} else {
		ids = tok.Encode(string(in), !opts.NoSpecial)
	}
	if opts.JSON {
		return json.NewEncoder(opts.IO.Out).Encode(struct {
			IDs []int `json:"ids"`
		}{IDs: nonNil(ids)})
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	_, err = fmt.Fprintln(opts.IO.Out, strings.Join(s, " "))
	return err
}

func nonNil(ids []int) []int {
	if ids == nil {
		return []int{}
	}
	return ids
}

func parseThinking(s string) *bool {
	if s == "" {
		return nil
	}
	b, _ := strconv.ParseBool(s)
	return &b
}
