package vmimage

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// A disk image is written once and then only cloned, yet its bytes went
// through the page cache: a copy into newly allocated pages, writers of
// one disk taking turns on its inode lock (the kernel spins waiting for
// it), and their writeback. In a process that had written other disks
// before, a Tart pull through a 1 Gbit/s link took 4.6–5.6 CPU-seconds
// per GiB that way against 2.0–2.4 with direct writes
// (BenchmarkPullTartLink after BenchmarkPullTart), and every pull evicted
// as much of what the machine had cached as the image holds (tens of GiB
// for macOS). The unpacker now writes a disk's whole aligned blocks with
// direct I/O (O_DIRECT on Linux, F_NOCACHE on macOS), gathered in an
// aligned stage; the partial blocks at the edges of a run of data go
// through the cache as before. A file system that refuses direct I/O
// (tmpfs) keeps the cached writes.

const (
	// directAlign is the offset, length and memory alignment of a direct
	// write: the page size, a multiple of the logical block size of the
	// disks images live on.
	directAlign = 4096
	// directStageSize is how much a stage gathers before writing it.
	directStageSize = 1 << 20
)

var stagePool = sync.Pool{New: func() any {
	b := make([]byte, directStageSize+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+directStageSize : skip+directStageSize]
}}

// directStage gathers one writer's runs of data and writes them: whole
// aligned blocks through d (the file opened for direct I/O), the partial
// blocks at a run's edges through f. buf[lo:hi] holds the bytes pending
// for [start+lo, start+hi); start is aligned, so an aligned offset in the
// file is an aligned address in buf (the pool's buffers are aligned).
type directStage struct {
	f      *os.File
	d      io.WriterAt // nil once d refused a write: all goes through f
	buf    []byte
	start  int64
	lo, hi int
}

// newDirectStage stages writes to f for d, its direct-I/O twin; nil (no
// staging: the caller writes f itself) when there is none.
func newDirectStage(f, d *os.File) *directStage {
	if d == nil {
		return nil
	}
	return &directStage{f: f, d: d}
}

// writeAt stages p for offset off. A run that does not continue the
// pending one sends that one first; a full stage is sent as it fills.
func (s *directStage) writeAt(p []byte, off int64) error {
	for len(p) > 0 {
		if s.hi > s.lo && off != s.start+int64(s.hi) {
			if err := s.flush(); err != nil {
				return err
			}
		}
		if s.buf == nil {
			s.buf = stagePool.Get().([]byte)
		}
		if s.hi == s.lo {
			s.start = off &^ (directAlign - 1)
			s.lo = int(off - s.start)
			s.hi = s.lo
		}
		n := copy(s.buf[s.hi:], p)
		s.hi += n
		p, off = p[n:], off+int64(n)
		if s.hi == len(s.buf) {
			if err := s.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes what is pending: its whole blocks directly, a partial
// first or last block through the cache.
func (s *directStage) flush() error {
	lo, hi := s.lo, s.hi
	s.lo, s.hi = 0, 0
	if hi <= lo {
		return nil
	}
	a := min(alignUp(lo), hi) // the end of a partial first block
	b := max(hi&^(directAlign-1), a)
	if a > lo {
		if _, err := s.f.WriteAt(s.buf[lo:a], s.start+int64(lo)); err != nil {
			return err
		}
	}
	if b > a {
		if err := s.direct(s.buf[a:b], s.start+int64(a)); err != nil {
			return err
		}
	}
	if hi > b {
		if _, err := s.f.WriteAt(s.buf[b:hi], s.start+int64(b)); err != nil {
			return err
		}
	}
	return nil
}

// direct writes whole blocks through d. A file system that turns a
// direct write down after all (EINVAL: it wants another alignment) gets
// them, and the rest of this writer's, through the cache.
func (s *directStage) direct(p []byte, off int64) error {
	if s.d != nil {
		_, err := s.d.WriteAt(p, off)
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		s.d = nil
	}
	_, err := s.f.WriteAt(p, off)
	return err
}

// close sends what is pending and gives the buffer back; the stage can
// be closed again (a no-op).
func (s *directStage) close() error {
	err := s.flush()
	if s.buf != nil {
		stagePool.Put(s.buf) //nolint:staticcheck // a slice header: the pool's usual price
		s.buf = nil
	}
	return err
}

func alignUp(n int) int { return (n + directAlign - 1) &^ (directAlign - 1) }

// closeFiles closes a layer's file and its direct twin (nil when there
// is none), returning the file's error.
func closeFiles(f, d *os.File) error {
	if d != nil {
		d.Close()
	}
	return f.Close()
}
