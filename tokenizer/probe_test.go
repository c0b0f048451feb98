package tokenizer

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

func TestProbe(t *testing.T) {
	f := os.Getenv("PROBE")
	if f == "" {
		t.Skip()
	}
	b, _ := os.ReadFile(f)
	var texts []string
	json.Unmarshal(b, &texts)
	res := runOracle(t, texts)
	for _, name := range oracleNames {
		tk := loadOracleTokenizer(t, name)
		for i, s := range texts {
			ids := tk.Encode(s, false)
			if !slices.Equal(ids, res[name].IDs[i]) {
				t.Logf("%s %q: got %v want %v", name, s, ids, res[name].IDs[i])
			}
		}
	}
}
