package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// testFactory returns a Factory over buffers: stdin, stdout, stderr.
func testFactory(stdin string) (*Factory, *bytes.Buffer, *bytes.Buffer) {
	out, errOut := &bytes.Buffer{}, &bytes.Buffer{}
	return &Factory{IO: &IOStreams{In: strings.NewReader(stdin), Out: out, ErrOut: errOut}}, out, errOut
}

// parseFlags runs a command constructor's flag parsing and validation with a runF that
// captures the options, and returns them (IO cleared) or the error.
func parseFlags[O any](t *testing.T, newCmd func(*Factory, func(*O) error) *cobra.Command, args []string) (O, error) {
	t.Helper()
	f, _, _ := testFactory("")
	var got *O
	cmd := newCmd(f, func(o *O) error { got = o; return nil })
	cmd.SetArgs(args)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	var zero O
	if err := cmd.Execute(); err != nil {
		return zero, err
	}
	return *got, nil
}

// checkParse compares parseFlags' result with a table row's want or wantErr.
func checkParse[O comparable](t *testing.T, got O, err error, want O, wantErr string, clearIO func(*O)) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	clearIO(&got)
	if got != want {
		t.Fatalf("options\n got %+v\nwant %+v", got, want)
	}
}

// runCLI runs the root command with args as a user would (through cobra) and returns
// stdout, stderr and the error main would print.
func runCLI(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	f, out, errOut := testFactory(stdin)
	root := newRootCmd(f)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func TestNewCmdGenerate(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    GenerateOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--prompt", "hi"},
			want: GenerateOptions{ModelDir: "m", Prompt: "hi", MaxTokens: 256, Temperature: 0.7, TopP: 1}},
		{name: "greedy chat", args: []string{"--model", "m", "--prompt", "", "--chat", "--temperature", "0", "--max-tokens", "5", "--thinking=false", "--system", "be brief"},
			want: GenerateOptions{ModelDir: "m", Chat: true, Thinking: "false", System: "be brief", MaxTokens: 5, Temperature: 0, TopP: 1}},
		{name: "sampling", args: []string{"--model", "m", "--prompt", "x", "--top-p", "0.8", "--top-k", "20", "--seed", "7"},
			want: GenerateOptions{ModelDir: "m", Prompt: "x", MaxTokens: 256, Temperature: 0.7, TopP: 0.8, TopK: 20, Seed: 7}},
		{name: "bench flags", args: []string{"--model", "m", "--prompt", "x", "--stats", "--ignore-eos"},
			want: GenerateOptions{ModelDir: "m", Prompt: "x", MaxTokens: 256, Temperature: 0.7, TopP: 1, Stats: true, IgnoreEOS: true}},
		{name: "no model", args: []string{"--prompt", "x"}, wantErr: "--model is required"},
		{name: "no prompt", args: []string{"--model", "m"}, wantErr: "--prompt is required"},
		{name: "bad top-p", args: []string{"--model", "m", "--prompt", "x", "--top-p", "1.5"}, wantErr: "--top-p: want a value in (0, 1], got 1.5"},
		{name: "negative temperature", args: []string{"--model", "m", "--prompt", "x", "--temperature", "-1"}, wantErr: "--temperature: want >= 0, got -1"},
		{name: "zero max tokens", args: []string{"--model", "m", "--prompt", "x", "--max-tokens", "0"}, wantErr: "--max-tokens: want at least 1, got 0"},
		{name: "thinking without chat", args: []string{"--model", "m", "--prompt", "x", "--thinking", "true"}, wantErr: "need --chat"},
		{name: "bad thinking", args: []string{"--model", "m", "--prompt", "x", "--chat", "--thinking", "maybe"}, wantErr: `--thinking: want true or false, got "maybe"`},
		{name: "unknown flag", args: []string{"--model", "m", "--prompt", "x", "--temp", "1"}, wantErr: "unknown flag: --temp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdGenerate, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *GenerateOptions) { o.IO = nil })
		})
	}
}

func TestNewCmdEvalPPL(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    EvalPPLOptions
		wantErr string
	}{
		{name: "defaults", args: []string{"--model", "m", "--data", "d.txt"}, want: EvalPPLOptions{ModelDir: "m", Data: "d.txt", Column: "text", Ctx: 512}},
		{name: "all", args: []string{"--model", "m", "--data", "d.parquet", "--column", "body", "--ctx", "64", "--max-tokens", "1000", "--json"},
			want: EvalPPLOptions{ModelDir: "m", Data: "d.parquet", Column: "body", Ctx: 64, MaxTokens: 1000, JSON: true}},
		{name: "ctx too small", args: []string{"--model", "m", "--data", "d", "--ctx", "1"}, wantErr: "--ctx: want at least 2 tokens, got 1"},
		{name: "no data", args: []string{"--model", "m"}, wantErr: "--data is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdEvalPPL, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *EvalPPLOptions) { o.IO = nil })
		})
	}
}

func TestNewCmdTokenize(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    TokenizeOptions
		wantErr string
	}{
		{name: "plain", args: []string{"--model", "m"}, want: TokenizeOptions{ModelDir: "m"}},
		{name: "chat json", args: []string{"--model", "m", "--chat", "--json", "--thinking=false"}, want: TokenizeOptions{ModelDir: "m", Chat: true, JSON: true, Thinking: "false"}},
		{name: "no special", args: []string{"--model", "m", "--no-special"}, want: TokenizeOptions{ModelDir: "m", NoSpecial: true}},
		{name: "no model", args: nil, wantErr: "--model is required"},
		{name: "thinking without chat", args: []string{"--model", "m", "--thinking", "true"}, wantErr: "--thinking needs --chat"},
		{name: "positional", args: []string{"--model", "m", "text"}, wantErr: `unknown command "text"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(t, newCmdTokenize, tt.args)
			checkParse(t, got, err, tt.want, tt.wantErr, func(o *TokenizeOptions) { o.IO = nil })
		})
	}
}

// Every command teaches by example: --help of each has an Examples section.
func TestHelpHasExamples(t *testing.T) {
	f, _, _ := testFactory("")
	root := newRootCmd(f)
	for _, c := range allCommands(root) {
		if c.Example == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
	}
}
