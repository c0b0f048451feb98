package main

import (
	"bytes"
	"strings"
	"testing"
)

// testFactory returns a Factory over buffers: stdin, stdout, stderr.
func testFactory(stdin string) (*Factory, *bytes.Buffer, *bytes.Buffer) {
	out, errOut := &bytes.Buffer{}, &bytes.Buffer{}
	return &Factory{IO: &IOStreams{In: strings.NewReader(stdin), Out: out, ErrOut: errOut}}, out, errOut
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
			f, _, _ := testFactory("")
			var got *GenerateOptions
			cmd := newCmdGenerate(f, func(o *GenerateOptions) error { got = o; return nil })
			cmd.SetArgs(tt.args)
			cmd.SetOut(&bytes.Buffer{})
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if *got != tt.want {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
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
			f, _, _ := testFactory("")
			var got *EvalPPLOptions
			cmd := newCmdEvalPPL(f, func(o *EvalPPLOptions) error { got = o; return nil })
			cmd.SetArgs(tt.args)
			cmd.SetOut(&bytes.Buffer{})
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if *got != tt.want {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
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
			f, _, _ := testFactory("")
			var got *TokenizeOptions
			cmd := newCmdTokenize(f, func(o *TokenizeOptions) error { got = o; return nil })
			cmd.SetArgs(tt.args)
			cmd.SetOut(&bytes.Buffer{})
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if *got != tt.want {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
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
