package dist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"syscall"
	"time"
)

// The TCP transport: rank 0 listens at MASTER_ADDR:MASTER_PORT, every other
// rank dials it and says who it is and where it listens; rank 0 sends back
// the table, and the ranks dial each other (rank r dials 1..r-1), so that
// every pair has one connection. A message is an 8-byte little-endian length
// and the payload.
//
// AllReduce gathers to rank 0, which adds in rank order ((b0+b1)+b2)+...,
// and sends the sum back: a fixed order, so the result does not depend on
// timing. It is a fallback for CPU ranks (tiny LoRA gradients), not a ring
// for GPUs.

const tcpMagic = "TUNEDST1"

type tcpComm struct {
	rank, size int
	conns      []net.Conn // by peer rank; nil at rank
	addrs      []string
	timeout    time.Duration
	ln         net.Listener
	tmp        []byte
}

// OpenTCP joins a group of size ranks over TCP, rank 0 listening on port
// (all interfaces) and reachable by the others at masterAddr.
func OpenTCP(rank, size int, masterAddr string, port int, timeout time.Duration) (Comm, error) {
	if size < 2 || rank < 0 || rank >= size {
		return nil, fmt.Errorf("dist: tcp: rank %d of %d: want 0 <= rank < size and size >= 2", rank, size)
	}
	c := &tcpComm{rank: rank, size: size, conns: make([]net.Conn, size), addrs: make([]string, size), timeout: timeout}
	fail := func(err error) (Comm, error) {
		c.closeAll()
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if rank == 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("dist: tcp: rank 0 cannot listen on MASTER_PORT %d: %w", port, err)
		}
		c.ln = ln
		for got := 1; got < size; got++ {
			conn, peer, lport, err := c.accept(deadline, fmt.Sprintf("%d more rank(s) to join at port %d", size-got, port))
			if err != nil {
				return fail(err)
			}
			if peer == 0 || c.conns[peer] != nil {
				conn.Close()
				return fail(fmt.Errorf("dist: tcp: two processes claim rank %d (check RANK on every rank)", peer))
			}
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			c.conns[peer], c.addrs[peer] = conn, net.JoinHostPort(host, strconv.Itoa(lport))
		}
		var table []byte
		for r := 1; r < size; r++ {
			table = binary.LittleEndian.AppendUint16(table, uint16(len(c.addrs[r])))
			table = append(table, c.addrs[r]...)
		}
		for r := 1; r < size; r++ {
			if err := c.write(r, table); err != nil {
				return fail(err)
			}
		}
		return c, nil
	}

	lport := 0
	if rank < size-1 {
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, fmt.Errorf("dist: tcp: rank %d cannot listen: %w", rank, err)
		}
		c.ln, lport = ln, ln.Addr().(*net.TCPAddr).Port
	}
	master := net.JoinHostPort(masterAddr, strconv.Itoa(port))
	var conn net.Conn
	for {
		var err error
		conn, err = net.DialTimeout("tcp", master, time.Until(deadline))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("dist: tcp: rank %d cannot reach rank 0 at MASTER_ADDR:MASTER_PORT %s within %v: %v", rank, master, timeout, err))
		}
		time.Sleep(50 * time.Millisecond) // rank 0 may not be listening yet
	}
	c.conns[0] = conn
	if err := c.hello(conn, lport); err != nil {
		return fail(err)
	}
	table, err := c.readMsg(0, -1)
	if err != nil {
		return fail(err)
	}
	for r := 1; r < size; r++ {
		if len(table) < 2 || len(table) < 2+int(binary.LittleEndian.Uint16(table)) {
			return fail(fmt.Errorf("dist: tcp: rank 0 sent a short address table"))
		}
		n := int(binary.LittleEndian.Uint16(table))
		c.addrs[r], table = string(table[2:2+n]), table[2+n:]
	}
	for r := 1; r < rank; r++ {
		conn, err := net.DialTimeout("tcp", c.addrs[r], time.Until(deadline))
		if err != nil {
			return fail(fmt.Errorf("dist: tcp: rank %d cannot reach rank %d at %s: %v", rank, r, c.addrs[r], err))
		}
		c.conns[r] = conn
		if err := c.hello(conn, 0); err != nil {
			return fail(err)
		}
	}
	for got := rank + 1; got < size; got++ {
		conn, peer, _, err := c.accept(deadline, fmt.Sprintf("ranks %d..%d to connect", rank+1, size-1))
		if err != nil {
			return fail(err)
		}
		if peer <= rank || c.conns[peer] != nil {
			conn.Close()
			return fail(fmt.Errorf("dist: tcp: rank %d: unexpected connection from rank %d", rank, peer))
		}
		c.conns[peer] = conn
	}
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
	return c, nil
}

// hello is magic, rank, size, listening port.
func (c *tcpComm) hello(conn net.Conn, lport int) error {
	b := append([]byte(tcpMagic), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[8:], uint32(c.rank))
	binary.LittleEndian.PutUint32(b[12:], uint32(c.size))
	binary.LittleEndian.PutUint32(b[16:], uint32(lport))
	conn.SetDeadline(time.Now().Add(c.timeout))
	_, err := conn.Write(b)
	return err
}

func (c *tcpComm) accept(deadline time.Time, waiting string) (net.Conn, int, int, error) {
	if tl, ok := c.ln.(*net.TCPListener); ok {
		tl.SetDeadline(deadline)
	}
	conn, err := c.ln.Accept()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("dist: tcp: rank %d waited %v for %s: %v (did a rank fail to start? TUNE_DIST_TIMEOUT)", c.rank, c.timeout, waiting, err)
	}
	conn.SetDeadline(time.Now().Add(c.timeout))
	b := make([]byte, 20)
	if _, err := io.ReadFull(conn, b); err != nil || string(b[:8]) != tcpMagic {
		conn.Close()
		return nil, 0, 0, fmt.Errorf("dist: tcp: rank %d: a connection from %s is not a tune rank (MASTER_PORT taken by another program?)", c.rank, conn.RemoteAddr())
	}
	peer, size, lport := int(binary.LittleEndian.Uint32(b[8:])), int(binary.LittleEndian.Uint32(b[12:])), int(binary.LittleEndian.Uint32(b[16:]))
	if size != c.size {
		conn.Close()
		return nil, 0, 0, fmt.Errorf("dist: tcp: rank %d says WORLD_SIZE=%d, rank %d has %d", peer, size, c.rank, c.size)
	}
	if peer >= size {
		conn.Close()
		return nil, 0, 0, fmt.Errorf("dist: tcp: a process says RANK=%d with WORLD_SIZE=%d", peer, size)
	}
	return conn, peer, lport, nil
}

func (c *tcpComm) closeAll() {
	for i, conn := range c.conns {
		if conn != nil {
			conn.Close()
			c.conns[i] = nil
		}
	}
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
}

// peerErr names the peer of a failed read or write.
// It closes every connection: a group with a failed rank is over, and the
// other ranks should learn it now rather than at their timeout.
func (c *tcpComm) peerErr(peer int, op string, err error) error {
	c.closeAll()
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("dist: tcp: rank %d: %s rank %d: nothing for %v (is rank %d hung? raise TUNE_DIST_TIMEOUT if its steps are that slow)", c.rank, op, peer, c.timeout, peer)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("dist: tcp: rank %d: rank %d is gone (it died or stopped on an error; see its log): %s: %v", c.rank, peer, op, err)
	}
	return fmt.Errorf("dist: tcp: rank %d: %s rank %d: %v", c.rank, op, peer, err)
}

func (c *tcpComm) write(peer int, b []byte) error {
	conn := c.conns[peer]
	if conn == nil {
		return fmt.Errorf("dist: tcp: rank %d has no connection to rank %d (closed)", c.rank, peer)
	}
	conn.SetDeadline(time.Now().Add(c.timeout))
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(len(b)))
	bufs := net.Buffers{hdr[:], b}
	if _, err := bufs.WriteTo(conn); err != nil {
		return c.peerErr(peer, "send to", err)
	}
	return nil
}

// readInto reads one message of exactly len(dst) bytes.
func (c *tcpComm) readInto(peer int, dst []byte) error {
	conn := c.conns[peer]
	if conn == nil {
		return fmt.Errorf("dist: tcp: rank %d has no connection to rank %d (closed)", c.rank, peer)
	}
	conn.SetDeadline(time.Now().Add(c.timeout))
	var hdr [8]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return c.peerErr(peer, "receive from", err)
	}
	if n := binary.LittleEndian.Uint64(hdr[:]); n != uint64(len(dst)) {
		return fmt.Errorf("dist: tcp: rank %d: rank %d sent %d bytes, want %d (the ranks run different code or recipes?)", c.rank, peer, n, len(dst))
	}
	if _, err := io.ReadFull(conn, dst); err != nil {
		return c.peerErr(peer, "receive from", err)
	}
	return nil
}

// readMsg reads one message of any length up to max (-1: 1 MiB).
func (c *tcpComm) readMsg(peer int, max int) ([]byte, error) {
	if max < 0 {
		max = 1 << 20
	}
	conn := c.conns[peer]
	conn.SetDeadline(time.Now().Add(c.timeout))
	var hdr [8]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, c.peerErr(peer, "receive from", err)
	}
	n := binary.LittleEndian.Uint64(hdr[:])
	if n > uint64(max) {
		return nil, fmt.Errorf("dist: tcp: rank %d: rank %d sent %d bytes, want at most %d", c.rank, peer, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(conn, b); err != nil {
		return nil, c.peerErr(peer, "receive from", err)
	}
	return b, nil
}

func (c *tcpComm) Rank() int       { return c.rank }
func (c *tcpComm) Size() int       { return c.size }
func (c *tcpComm) Backend() string { return "tcp" }

func (c *tcpComm) scratch(n int) []byte {
	if cap(c.tmp) < n {
		c.tmp = make([]byte, n)
	}
	return c.tmp[:n]
}

// allReduce is the gather-add-scatter both float widths share; add folds
// a peer's bytes into buf.
func (c *tcpComm) allReduce(buf []byte, add func(peer []byte)) error {
	if c.rank != 0 {
		if err := c.write(0, buf); err != nil {
			return err
		}
		return c.readInto(0, buf)
	}
	tmp := c.scratch(len(buf))
	for r := 1; r < c.size; r++ {
		if err := c.readInto(r, tmp); err != nil {
			return err
		}
		add(tmp)
	}
	for r := 1; r < c.size; r++ {
		if err := c.write(r, buf); err != nil {
			return err
		}
	}
	return nil
}

func (c *tcpComm) AllReduceF64(buf []float64) error {
	return c.allReduce(f64Bytes(buf), func(p []byte) {
		for i := range buf {
			buf[i] += math.Float64frombits(binary.LittleEndian.Uint64(p[8*i:]))
		}
	})
}

func (c *tcpComm) AllReduceF32(buf []float32) error {
	return c.allReduce(f32Bytes(buf), func(p []byte) {
		for i := range buf {
			buf[i] += math.Float32frombits(binary.LittleEndian.Uint32(p[4*i:]))
		}
	})
}

func (c *tcpComm) Broadcast(buf []byte, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("dist: broadcast from rank %d of %d", root, c.size)
	}
	if c.rank != root {
		return c.readInto(root, buf)
	}
	for r := 0; r < c.size; r++ {
		if r != root {
			if err := c.write(r, buf); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *tcpComm) SendF32(buf []float32, to int) error {
	if to < 0 || to >= c.size || to == c.rank {
		return fmt.Errorf("dist: rank %d: send to rank %d of %d", c.rank, to, c.size)
	}
	return c.write(to, f32Bytes(buf))
}

func (c *tcpComm) RecvF32(buf []float32, from int) error {
	if from < 0 || from >= c.size || from == c.rank {
		return fmt.Errorf("dist: rank %d: receive from rank %d of %d", c.rank, from, c.size)
	}
	return c.readInto(from, f32Bytes(buf))
}

func (c *tcpComm) Barrier() error {
	var x [1]float64
	return c.AllReduceF64(x[:])
}

func (c *tcpComm) Close() error {
	c.closeAll()
	return nil
}

func (c *tcpComm) Abort(code int) { c.closeAll() }
