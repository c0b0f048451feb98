//go:build !amd64 || noasm

package cpu

import "github.com/tunellm/tune/kernels"

var qint8ASM, qint8VNNI = false, false

func qdotRows(dt kernels.DType, row []byte, kr *kRow, a *q8Rows, C, t0 int, dst []float32) {
	qdotRowsGo(dt, row, kr, a, C, t0, dst)
}

func (m *qmmTask) qdotChunk(wk *worker, r0, r1, t0, t1 int) { m.rowsChunk(wk, r0, r1, t0, t1) }

type k8Group struct{}

var useAVX2Default = false

func (m *qmmTask) quantRowFast(t int) bool { return false }
