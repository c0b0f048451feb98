package main

import (
	"strings"
	"testing"
)

func TestChunks(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want []string
	}{
		{"empty", "", 10, nil},
		{"one short sentence", "Hello there.", 100, []string{"Hello there."}},
		{"cut at sentence ends", "One two three. Four five six. Seven.", 10, []string{"One two three.", "Four five six.", "Seven."}},
		{"long sentence cut at 2n", "a b c d e f g h i j k l", 5, []string{"a b c d e f", "g h i j k l"}},
		{"whitespace collapsed", "  Yes.\n\n\tNo?  ", 1, []string{"Yes.", "No?"}},
	}
	for _, tt := range tests {
		got := chunks(tt.in, tt.n)
		if strings.Join(got, "|") != strings.Join(tt.want, "|") || len(got) != len(tt.want) {
			t.Errorf("%s: chunks = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestReadTextsRejectsGarbage(t *testing.T) {
	if _, err := readTexts([]byte("not a gzip stream")); err == nil {
		t.Error("readTexts accepted bytes that are not a .tgz")
	}
}
