package main

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParagraphsAndPassages(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", "", nil},
		{"blank lines only", "\n \n\t\n", nil},
		{"wrapped lines joined", "  one two\n   three\n\nfour  five\r\n", []string{"one two three", "four five"}},
	}
	for _, tt := range tests {
		if got := paragraphs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("paragraphs(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
	long := strings.Repeat("This sentence is part of a long clause. ", 40)
	ps := passages([]string{"TERMS", long, "tail"})
	if len(ps) < 3 {
		t.Fatalf("passages: a %d-byte paragraph was not cut: %q", len(long), ps)
	}
	if !strings.HasPrefix(ps[0], "TERMS\nThis sentence") {
		t.Errorf("the heading is not joined to the next paragraph: %q", ps[0])
	}
	for _, p := range ps {
		if len(p) > 650 {
			t.Errorf("passage of %d bytes, expected at most about 600", len(p))
		}
	}
	if ps[len(ps)-1] != "tail" {
		t.Errorf("a short last paragraph is lost: %q", ps[len(ps)-1])
	}
	if got := strings.Join(ps, " "); strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields("TERMS "+long+" tail"), " ") {
		t.Error("passages lost or changed words")
	}
}

func TestDep5Licenses(t *testing.T) {
	const file = `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: x

Files: *
Copyright: 2020 Someone
License: Expat
 This stanza has Files: and is skipped.

License: Expat
 Permission is hereby granted,
 free of charge.
 .
 THE SOFTWARE IS PROVIDED "AS IS".

License: ISC
	Tab-indented text.
Comment: not part of it
`
	got := dep5Licenses([]byte(file))
	want := map[string]string{
		"Expat": "Permission is hereby granted,\nfree of charge.\n\nTHE SOFTWARE IS PROVIDED \"AS IS\".",
		"ISC":   "Tab-indented text.",
	}
	if !maps.Equal(got, want) {
		t.Errorf("dep5Licenses:\n got %q\nwant %q", got, want)
	}
	if got := dep5Licenses([]byte("License: Expat\n text\n")); len(got) != 0 {
		t.Errorf("a file without Format: is not DEP-5, got %q", got)
	}
}

func TestChoiceRow(t *testing.T) {
	rng := newRNG(3)
	seen := map[int64]bool{}
	for range 200 {
		r := choiceRow(rng, "q", "right", []string{"a", "b", "c"}, "train")
		if len(r.Choices) != 4 || r.Choices[r.Answer] != "right" {
			t.Fatalf("choiceRow: %+v", r)
		}
		seen[r.Answer] = true
	}
	if len(seen) != 4 {
		t.Errorf("the right answer only lands at %v", seen)
	}
}

func FuzzDep5Licenses(f *testing.F) {
	f.Add([]byte("Format: x\n\nLicense: MIT\n text\n .\n more\n"))
	f.Add([]byte("Format:\n\nFiles: *\nLicense: A\n\nLicense:\n \n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for k, v := range dep5Licenses(b) {
			if k == "" || v != strings.TrimSpace(v) {
				t.Fatalf("key %q text %q", k, v)
			}
		}
		for _, p := range passages(paragraphs(string(b))) {
			if p == "" {
				t.Fatal("empty passage")
			}
		}
	})
}
