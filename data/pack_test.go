package data

import (
	"math/rand/v2"
	"reflect"
	"testing"
)

// naiveBFD is best-fit decreasing written the slow, obvious way, with TRL's
// tie rules: items longest first (equal lengths in input order); the open
// sequence with the least room that fits, among equals the one that has had
// that room longest; else a new sequence.
func naiveBFD(lens []uint32, t int) [][]uint32 {
	type bin struct {
		items []uint32
		room  int
		since int // when the bin got its current room
	}
	var idx []uint32
	for i := range lens {
		idx = append(idx, uint32(i))
	}
	for i := 1; i < len(idx); i++ { // insertion sort, stable
		for j := i; j > 0 && lens[idx[j]] > lens[idx[j-1]]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	var bins []*bin
	for step, it := range idx {
		need := int(lens[it])
		var best *bin
		for _, b := range bins {
			if b.room >= need && b.room > 0 && (best == nil || b.room < best.room || b.room == best.room && b.since < best.since) {
				best = b
			}
		}
		if best == nil {
			best = &bin{room: t}
			bins = append(bins, best)
		}
		best.items = append(best.items, it)
		best.room -= need
		best.since = step
	}
	out := make([][]uint32, len(bins))
	for i, b := range bins {
		out[i] = b.items
	}
	return out
}

func TestPackBFDMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		t0 := 1 + r.IntN(64)
		n := r.IntN(80)
		lens := make([]uint32, n)
		for i := range lens {
			// Few distinct lengths, so ties happen.
			lens[i] = uint32(1 + r.IntN(min(t0, 1+r.IntN(16))))
		}
		got, want := packBFD(lens, t0), naiveBFD(lens, t0)
		if len(got) == 0 && len(want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("trial %d (T=%d, lens %v):\n got  %v\n want %v", trial, t0, lens, got, want)
		}
		for _, b := range got {
			sum := 0
			for _, i := range b {
				sum += int(lens[i])
			}
			if sum > t0 {
				t.Fatalf("trial %d: a sequence holds %d > %d tokens", trial, sum, t0)
			}
		}
	}
}

func TestFillSequence(t *testing.T) {
	var s Sequence
	fillSequence(&s, [][]int32{{1, 2, 3}, {4, 5}}, [][]int32{{1, -100, 3}, {4, 5}}, 7, 9)
	want := Sequence{
		IDs:       []int32{1, 2, 3, 4, 5, 9, 9},
		Labels:    []int32{-100, -100, 3, -100, 5, -100, -100},
		Positions: []int32{0, 1, 2, 0, 1, 0, 0},
		SegIDs:    []int32{0, 0, 0, 1, 1, -1, -1},
	}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
}
