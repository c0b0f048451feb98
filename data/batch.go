package data

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// Batch is B sequences of T tokens, row-major. Padding has label -100 and
// SegID -1; Positions restart at 0 for each example.
type Batch struct {
	B, T                           int
	IDs, Labels, Positions, SegIDs []int32 // [B*T]
}

// megaBatch is how many batches of the unpacked length-grouped order are
// sorted together, as transformers' LengthGroupedSampler (mega-batches of 50
// batches sorted by length) does: batches of like lengths pad little while the
// order stays random at the scale of an epoch.
const megaBatch = 50

// Batches yields the batches of split for epoch (0-based), batchSize
// sequences each (the last one may be smaller).
//
// Packed: every batch is [B, max_seq_len]; the train split's sequences come
// in Permutation(seed, epoch) order, validation's in stored order.
// Unpacked: each sequence is one example; the order is cut into mega-batches
// of 50 batches, each sorted by length (longest first, stable), then cut into
// batches padded to their longest example.
//
// An error reading the cache stops the iteration; Err reports it.
func (d *Dataset) Batches(split string, epoch, batchSize int) func(yield func(Batch) bool) {
	return func(yield func(Batch) bool) {
		seqs, ok := d.seqs[split]
		if !ok {
			d.setErr(fmt.Errorf("data: no split %q (splits: train, validation)", split))
			return
		}
		if batchSize <= 0 {
			d.setErr(fmt.Errorf("data: batch size must be positive, found %d", batchSize))
			return
		}
		order := make([]uint32, len(seqs))
		if split == SplitTrain {
			order = Permutation(d.seed, epoch, len(seqs))
		} else {
			for i := range order {
				order[i] = uint32(i)
			}
		}
		if !d.packed {
			seqLen := func(s uint32) uint32 { return d.examples[seqs[s][0]].n }
			for lo := 0; lo < len(order); lo += megaBatch * batchSize {
				m := order[lo:min(len(order), lo+megaBatch*batchSize)]
				sort.SliceStable(m, func(a, b int) bool { return seqLen(m[a]) > seqLen(m[b]) })
			}
		}
		var s Sequence
		for lo := 0; lo < len(order); lo += batchSize {
			idx := order[lo:min(len(order), lo+batchSize)]
			t := d.maxLen
			if !d.packed {
				t = 0
				for _, i := range idx {
					t = max(t, int(d.examples[seqs[i][0]].n))
				}
			}
			b := Batch{B: len(idx), T: t}
			n := b.B * b.T
			b.IDs, b.Labels, b.Positions, b.SegIDs = make([]int32, 0, n), make([]int32, 0, n), make([]int32, 0, n), make([]int32, 0, n)
			for _, i := range idx {
				if err := d.sequence(&s, seqs[i], t); err != nil {
					d.setErr(err)
					return
				}
				b.IDs = append(b.IDs, s.IDs...)
				b.Labels = append(b.Labels, s.Labels...)
				b.Positions = append(b.Positions, s.Positions...)
				b.SegIDs = append(b.SegIDs, s.SegIDs...)
			}
			if !yield(b) {
				return
			}
		}
	}
}

// Sequence returns sequence i of split in stored order (max_seq_len long
// when packed, the example's length when not).
func (d *Dataset) Sequence(split string, i int) (Sequence, error) {
	seqs := d.seqs[split]
	if i < 0 || i >= len(seqs) {
		return Sequence{}, fmt.Errorf("data: %s sequence %d out of range [0, %d)", split, i, len(seqs))
	}
	t := d.maxLen
	if !d.packed {
		t = int(d.examples[seqs[i][0]].n)
	}
	var s Sequence
	err := d.sequence(&s, seqs[i], t)
	return s, err
}

func (d *Dataset) sequence(s *Sequence, members []uint32, t int) error {
	ids := make([][]int32, len(members))
	labels := make([][]int32, len(members))
	for k, m := range members {
		e := d.examples[m]
		ids[k], labels[k] = make([]int32, e.n), make([]int32, e.n)
		if err := d.readExample(e, ids[k], labels[k]); err != nil {
			return err
		}
	}
	fillSequence(s, ids, labels, t, d.pad)
	return nil
}

// readExample reads an example's ids and rebuilds its labels from the mask.
func (d *Dataset) readExample(e exampleRec, ids, labels []int32) error {
	if e.n == 0 {
		return nil
	}
	buf := make([]byte, 4*int(e.n))
	if _, err := d.tokens.ReadAt(buf, int64(e.start)*4); err != nil {
		return fmt.Errorf("data: cache %s: tokens.bin: %v", d.dir, err)
	}
	lo, hi := e.start/8, (e.start+uint64(e.n)+7)/8
	mb := make([]byte, hi-lo)
	if _, err := d.mask.ReadAt(mb, int64(lo)); err != nil {
		return fmt.Errorf("data: cache %s: mask.bin: %v", d.dir, err)
	}
	for i := range ids {
		ids[i] = int32(binary.LittleEndian.Uint32(buf[4*i:]))
		bit := e.start + uint64(i)
		if mb[bit/8-lo]>>(bit%8)&1 == 1 {
			labels[i] = ids[i]
		} else {
			labels[i] = IgnoreIndex
		}
	}
	return nil
}
