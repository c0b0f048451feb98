package export

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestModelfileRoundTrip(t *testing.T) {
	mf := &Modelfile{From: "./model dir/m.gguf", Adapter: "adapter.gguf", Template: qwen3Template, Stop: chatMLStop,
		System: "You are terse.\nVery.", Comment: []string{"written by tune"}, Params: [][2]string{{"temperature", "0.6"}}}
	dir := t.TempDir()
	if err := WriteModelfile(dir, mf); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "Modelfile"))
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := ParseModelfile(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Command{
		{"FROM", "./model dir/m.gguf"}, {"ADAPTER", "adapter.gguf"}, {"TEMPLATE", qwen3Template},
		{"PARAMETER", "stop <|im_start|>"}, {"PARAMETER", "stop <|im_end|>"}, {"PARAMETER", "temperature 0.6"},
		{"SYSTEM", "You are terse.\nVery."},
	}
	if !reflect.DeepEqual(cmds, want) {
		t.Fatalf("parsed\n%q\nwant\n%q\nfile:\n%s", cmds, want, b)
	}
}

func TestParseModelfileErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"FROM x\nBOGUS y\n", "line 2: unknown instruction"},
		{"FROM x\nTEMPLATE \"\"\"abc\n", "unterminated"},
		{"FROM\n", "line 1"},
		{"PARAMETER stop\n", "needs a name and a value"},
		{"SYSTEM \"unterminated\n", "bad quoted value"},
		{"TEMPLATE \"\"\"a\"\"\" junk\n", "text after closing"},
	} {
		if _, err := ParseModelfile([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.in, err, tc.want)
		}
	}
	cmds, err := ParseModelfile([]byte("# c\nfrom llama3\n\nparameter num_ctx 4096\nSYSTEM \"a \\\"b\\\"\"\n"))
	if err != nil || len(cmds) != 3 || cmds[0] != (Command{"FROM", "llama3"}) || cmds[1].Args != "num_ctx 4096" || cmds[2].Args != `a "b"` {
		t.Fatalf("got %q, %v", cmds, err)
	}
}

func TestModelfileValidate(t *testing.T) {
	if err := (&Modelfile{From: "m", Template: "{{ if }}"}).Validate(); err == nil {
		t.Error("a broken template validated")
	}
	if err := (&Modelfile{From: "m", Template: "x", System: `say """hi"""`}).Validate(); err == nil {
		t.Error(`a SYSTEM with """ validated`)
	}
}

func FuzzParseModelfile(f *testing.F) {
	f.Add([]byte("FROM x.gguf\nTEMPLATE \"\"\"{{ .Prompt }}\"\"\"\nPARAMETER stop \"<|im_end|>\"\n"))
	f.Add([]byte("# c\nSYSTEM hi\nMESSAGE user hello\n"))
	f.Add([]byte("TEMPLATE \"\"\"\n\"\"\"\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cmds, err := ParseModelfile(b)
		if err != nil {
			return
		}
		for _, c := range cmds {
			if c.Name == "" {
				t.Fatalf("empty instruction name in %q", b)
			}
		}
	})
}

func FuzzParsePEFTConfig(f *testing.F) {
	f.Add([]byte(`{"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {}}`))
	f.Add([]byte(`{"r": 8, "rank_pattern": {"(": 4}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parsePEFTConfig("adapter_config.json", b)
		if err != nil {
			return
		}
		if c.R <= 0 || !(c.Alpha > 0) {
			t.Fatalf("accepted r=%d alpha=%g", c.R, c.Alpha)
		}
		if _, _, _, err := c.lc.ModuleRank("model.layers.0.self_attn.q_proj"); err != nil {
			t.Fatalf("parsed, but the patterns do not compile: %v", err)
		}
	})
}
