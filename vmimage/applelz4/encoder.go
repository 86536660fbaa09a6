package applelz4

import (
	"encoding/binary"
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// Encoder writes the framing for test fixtures and benchmarks. Its blocks
// are compressed independently (none refers to an earlier block), which
// any conforming decoder accepts. An Encoder is not safe for concurrent
// use; its zero value uses DefaultBlockSize.
type Encoder struct {
	// BlockSize is the plaintext size of each block but the last.
	BlockSize int
	c         lz4.Compressor
}

// AppendBlocks appends src as a sequence of blocks without the end
// marker: bv41 blocks, or bv4- where LZ4 does not make a block smaller.
// Since the blocks are independent, the output of several calls (even on
// several Encoders in parallel) can be concatenated and ended with
// AppendEnd.
func (e *Encoder) AppendBlocks(dst, src []byte) []byte {
	bs := e.BlockSize
	if bs <= 0 {
		bs = DefaultBlockSize
	}
	if bs > MaxBlockSize {
		panic(fmt.Sprintf("applelz4: block size %d exceeds %d", bs, MaxBlockSize))
	}
	for len(src) > 0 {
		blk := src[:min(bs, len(src))]
		src = src[len(blk):]
		dst = e.appendBlock(dst, blk)
	}
	return dst
}

func (e *Encoder) appendBlock(dst, blk []byte) []byte {
	start := len(dst)
	bound := lz4.CompressBlockBound(len(blk))
	dst = grow(dst, headerCompressed+bound)
	payload := dst[start+headerCompressed : start+headerCompressed+bound]
	n, err := e.c.CompressBlock(blk, payload)
	if err != nil || n == 0 || n >= len(blk) {
		// Incompressible: store it (bv4-, magic + size + plaintext).
		dst = dst[:start]
		dst = append(dst, MagicUncompressed...)
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(blk)))
		return append(dst, blk...)
	}
	dst = dst[:start+headerCompressed+n]
	copy(dst[start:], MagicCompressed)
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(blk)))
	binary.LittleEndian.PutUint32(dst[start+8:], uint32(n))
	return dst
}

// AppendEnd appends the end-of-stream marker.
func AppendEnd(dst []byte) []byte { return append(dst, MagicEnd...) }

// Encode returns a complete stream holding src.
func (e *Encoder) Encode(src []byte) []byte {
	dst := make([]byte, 0, len(src)/2+64)
	return AppendEnd(e.AppendBlocks(dst, src))
}

// Encode returns a complete stream holding src in blocks of blockSize
// (DefaultBlockSize when 0).
func Encode(src []byte, blockSize int) []byte {
	e := Encoder{BlockSize: blockSize}
	return e.Encode(src)
}

// grow extends b's length by n, reallocating if needed.
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), 2*cap(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}
