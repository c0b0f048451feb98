package data

// Packing: padding-free sequences of several examples.
//
// The strategy is TRL's "bfd" (best-fit decreasing, SFTConfig
// packing_strategy="bfd", the default): examples already truncated to T =
// max_seq_len are taken longest first (ties in stream order) and each goes
// into the open sequence with the least room that still fits it, or a new
// one. Sequences keep their creation order and their examples the order they
// were placed in. Unlike TRL, which packs each 1,000-row map batch apart, the
// whole split is packed at once: it only needs the lengths (4 bytes an
// example), and fewer, fuller sequences come out.
//
// Inside a sequence positions restart at 0 for each example and SegIDs number
// the examples 0, 1, 2, ... so attention can stay inside each (a document
// mask); the first token of each example has label -100, as transformers'
// DataCollatorWithFlattening does, so no example is trained to follow the one
// before it. Padding after the last example has id pad, label -100, position
// 0 and SegID -1.

// Sequence is one training sequence of T tokens.
type Sequence struct {
	IDs, Labels, Positions, SegIDs []int32 // [T]
}

// packBFD returns the sequences as lists of example indices (into lens).
// Every lens[i] must be in [1, t].
func packBFD(lens []uint32, t int) [][]uint32 {
	order := make([]uint32, len(lens))
	for i := range order {
		order[i] = uint32(i)
	}
	// Stable: equal lengths keep stream order.
	sortStable(order, func(a, b uint32) bool { return lens[a] > lens[b] })
	// byRoom[r] holds the open sequences with exactly r tokens of room;
	// tree finds the smallest r >= need with one.
	byRoom := make([][]int, t+1)
	tree := newMinRoomTree(t + 1)
	var bins [][]uint32
	for _, ex := range order {
		need := int(lens[ex])
		r := tree.firstAtLeast(need)
		var b int
		if r < 0 {
			b = len(bins)
			bins = append(bins, nil)
			r = t
		} else {
			list := byRoom[r]
			b = list[0] // oldest first: deterministic and closest to TRL's order
			byRoom[r] = list[1:]
			if len(byRoom[r]) == 0 {
				tree.set(r, false)
			}
		}
		bins[b] = append(bins[b], ex)
		if left := r - need; left > 0 {
			byRoom[left] = append(byRoom[left], b)
			tree.set(left, true)
		}
	}
	return bins
}

func sortStable(s []uint32, less func(a, b uint32) bool) {
	// A merge sort, so the order does not depend on sort.SliceStable's
	// internals (stable sorts agree anyway; this keeps it allocation-plain).
	if len(s) < 2 {
		return
	}
	tmp := make([]uint32, len(s))
	for w := 1; w < len(s); w *= 2 {
		for lo := 0; lo < len(s); lo += 2 * w {
			mid, hi := min(lo+w, len(s)), min(lo+2*w, len(s))
			i, j, k := lo, mid, lo
			for i < mid && j < hi {
				if less(s[j], s[i]) {
					tmp[k] = s[j]
					j++
				} else {
					tmp[k] = s[i]
					i++
				}
				k++
			}
			k += copy(tmp[k:], s[i:mid])
			copy(tmp[k:], s[j:hi])
		}
		copy(s, tmp)
	}
}

// minRoomTree is a segment tree over room sizes 0..n-1 answering "the
// smallest r >= need that has an open sequence".
type minRoomTree struct {
	size int
	on   []bool // on[node]: some leaf below is set
}

func newMinRoomTree(n int) *minRoomTree {
	size := 1
	for size < n {
		size *= 2
	}
	return &minRoomTree{size: size, on: make([]bool, 2*size)}
}

func (t *minRoomTree) set(r int, v bool) {
	i := r + t.size
	t.on[i] = v
	for i /= 2; i >= 1; i /= 2 {
		t.on[i] = t.on[2*i] || t.on[2*i+1]
	}
}

func (t *minRoomTree) firstAtLeast(need int) int {
	return t.find(1, 0, t.size, need)
}

func (t *minRoomTree) find(node, lo, hi, need int) int {
	if hi <= need || !t.on[node] {
		return -1
	}
	if hi-lo == 1 {
		return lo
	}
	mid := (lo + hi) / 2
	if r := t.find(2*node, lo, mid, need); r >= 0 {
		return r
	}
	return t.find(2*node+1, mid, hi, need)
}

// fillSequence writes the examples (ids, labels pairs) into s, T long.
func fillSequence(s *Sequence, exIDs, exLabels [][]int32, t int, pad int32) {
	s.IDs, s.Labels, s.Positions, s.SegIDs = s.IDs[:0], s.Labels[:0], s.Positions[:0], s.SegIDs[:0]
	for k := range exIDs {
		for i, id := range exIDs[k] {
			lab := exLabels[k][i]
			if i == 0 {
				lab = IgnoreIndex
			}
			s.IDs = append(s.IDs, id)
			s.Labels = append(s.Labels, lab)
			s.Positions = append(s.Positions, int32(i))
			s.SegIDs = append(s.SegIDs, int32(k))
		}
	}
	for len(s.IDs) < t {
		s.IDs = append(s.IDs, pad)
		s.Labels = append(s.Labels, IgnoreIndex)
		s.Positions = append(s.Positions, 0)
		s.SegIDs = append(s.SegIDs, -1)
	}
}
