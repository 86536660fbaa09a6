// Package applelz4 reads and writes the LZ4 framing of Apple's Compression
// framework (COMPRESSION_LZ4), the format Tart compresses its disk chunks
// with (NSData.compressed(using: .lz4)).
//
// Format facts, from Apple's documentation of COMPRESSION_LZ4
// (https://developer.apple.com/documentation/compression/compression_lz4):
//
//   - The stream is a sequence of blocks, each starting with a header.
//   - Compressed block: the octets 0x62 0x76 0x34 0x31 ("bv41"), the decoded
//     (plaintext) size and the encoded size, both as possibly unaligned
//     32-bit little-endian values, then that many bytes of raw LZ4 block
//     data (the open-source LZ4 block format, lz4_Block_format.md).
//   - Uncompressed block: the octets 0x62 0x76 0x34 0x2d ("bv4-"), one
//     32-bit little-endian plaintext size, then the plaintext itself (an
//     8-byte header; decoders of real Apple output, e.g. the parsers of
//     macOS unified-log chunksets, read it the same way).
//   - End of stream: the octets 0x62 0x76 0x34 0x24 ("bv4$"), with nothing
//     to read after it.
//   - "A compressed block may refer to data from the previous block, so the
//     (decoded) previous block must be available to the decoder." LZ4
//     offsets are 16-bit, so at most 65535 bytes of earlier output can be
//     referenced; the decoder here always keeps the last 64 KiB of output
//     as the block's dictionary, which is also correct for blocks that were
//     encoded independently.
package applelz4

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Block magics, in stream byte order.
const (
	MagicCompressed   = "bv41"
	MagicUncompressed = "bv4-"
	MagicEnd          = "bv4$"
)

const (
	// HistorySize is how much earlier output an LZ4 match can reach: the
	// block format's offsets are 16-bit.
	HistorySize = 64 << 10

	// MaxBlockSize bounds the decoded size a block header may announce, so
	// that a corrupt header cannot make the decoder allocate gigabytes.
	// Apple's encoder writes far smaller blocks; this leaves room for other
	// encoders that wrap big LZ4 blocks.
	MaxBlockSize = 64 << 20

	// DefaultBlockSize is the encoder's block size.
	DefaultBlockSize = 64 << 10

	headerCompressed   = 12 // magic, decoded size, encoded size
	headerUncompressed = 8  // magic, size
)

// maxBlock is MaxBlockSize; the fuzz test lowers it to keep each run
// cheap.
var maxBlock = MaxBlockSize

// ErrCorrupt is wrapped by every error about malformed stream content.
// Truncated streams wrap io.ErrUnexpectedEOF instead.
var ErrCorrupt = errors.New("applelz4: corrupt stream")

// maxEncodedSize is the LZ4 worst case for n input bytes (the bound of the
// reference implementation, LZ4_COMPRESSBOUND: n + n/255 + 16).
func maxEncodedSize(n int) int { return n + n/255 + 16 }

// header is a parsed block header.
type header struct {
	magic   string
	decoded int // plaintext size
	encoded int // payload size that follows the header
}

// headerLen returns the full header length for a magic, or 0 when the
// magic is unknown.
func headerLen(magic []byte) int {
	switch string(magic) {
	case MagicCompressed:
		return headerCompressed
	case MagicUncompressed:
		return headerUncompressed
	case MagicEnd:
		return 4
	}
	return 0
}

// parseHeader validates a complete header whose length headerLen chose.
func parseHeader(b []byte, block int, off int64) (header, error) {
	h := header{magic: string(b[:4])}
	switch h.magic {
	case MagicCompressed:
		dec := binary.LittleEndian.Uint32(b[4:])
		enc := binary.LittleEndian.Uint32(b[8:])
		if dec > uint32(maxBlock) {
			return h, fmt.Errorf("%w: block %d at byte %d: decoded size %d exceeds the %d limit", ErrCorrupt, block, off, dec, maxBlock)
		}
		if int(enc) > maxEncodedSize(int(dec)) {
			return h, fmt.Errorf("%w: block %d at byte %d: encoded size %d is impossible for %d decoded bytes", ErrCorrupt, block, off, enc, dec)
		}
		h.decoded, h.encoded = int(dec), int(enc)
	case MagicUncompressed:
		n := binary.LittleEndian.Uint32(b[4:])
		if n > uint32(maxBlock) {
			return h, fmt.Errorf("%w: block %d at byte %d: size %d exceeds the %d limit", ErrCorrupt, block, off, n, maxBlock)
		}
		h.decoded, h.encoded = int(n), int(n)
	case MagicEnd:
	default:
		return h, fmt.Errorf("%w: block %d at byte %d: bad magic %q", ErrCorrupt, block, off, b[:4])
	}
	return h, nil
}
