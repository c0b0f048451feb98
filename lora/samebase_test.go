package lora

import (
	"strings"
	"testing"
)

func TestSameBase(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"Qwen/Qwen3-8B", "Qwen/Qwen3-8B", true},
		{"Qwen/Qwen3-8B", "/models/Qwen3-8B/", true},
		{"Qwen/Qwen3-8B@main", "qwen/qwen3-8b", true},
		{"/home/u/.cache/huggingface/hub/models--Qwen--Qwen3-8B/snapshots/0123abc", "Qwen/Qwen3-8B", true},
		{"../testdata/models/qwen3-tied", "/work/testdata/models/qwen3-tied", true},
		{"Qwen/Qwen3-8B", "Qwen/Qwen3-4B", false},
		{"/models/llama", "/models/mistral", false},
	} {
		if got := SameBase(tc.a, tc.b); got != tc.same {
			t.Errorf("SameBase(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
	a := &Adapter{cfg: Config{BaseModel: "Qwen/Qwen3-8B"}}
	if err := a.CheckBase("/m/Qwen3-8B"); err != nil {
		t.Error(err)
	}
	if err := a.CheckBase("Qwen/Qwen3-4B"); err == nil || !strings.Contains(err.Error(), "adapter was trained on Qwen/Qwen3-8B (base_model_name_or_path), not on Qwen/Qwen3-4B") {
		t.Errorf("%v", err)
	}
	if err := (&Adapter{}).CheckBase("x"); err != nil {
		t.Errorf("no recorded base: %v", err)
	}
}
