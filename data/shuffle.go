package data

import "math/rand/v2"

// Permutation returns the order in which epoch visits n sequences: a
// Fisher-Yates shuffle driven by math/rand/v2's PCG seeded with (seed,
// epoch), walking i from n-1 down to 1 and swapping i with IntN(i+1). Only
// the index is shuffled (4 bytes a sequence), never the tokens, so it works
// for datasets larger than memory, and the order is a pure function of
// (seed, epoch, n): a restart reproduces it.
func Permutation(seed uint64, epoch, n int) []uint32 {
	p := make([]uint32, n)
	for i := range p {
		p[i] = uint32(i)
	}
	r := rand.New(rand.NewPCG(seed, uint64(epoch)))
	for i := n - 1; i > 0; i-- {
		j := r.IntN(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// isValidation says whether the row at (file, index) goes to the validation
// split when dataset.validation is a fraction: splitmix64 of the seed, the
// file's position in the source and the row index, read as a number in
// [0, 1). It depends on where the row is, not on anything else read before
// it, so the split is stable when rows are added to other files.
func isValidation(seed uint64, file int, index int64, frac float64) bool {
	if frac <= 0 {
		return false
	}
	x := splitmix64(seed ^ 0x9e3779b97f4a7c15*uint64(file+1) ^ splitmix64(uint64(index)))
	return float64(x>>11)/(1<<53) < frac
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
