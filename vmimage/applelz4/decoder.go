package applelz4

import (
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// batchSize is the room a window keeps after the history. Decoded blocks
// accumulate there, so the history is moved once per batch rather than
// once per block, and a Decoder hands its destination few, large writes.
// It is small enough that a batch is still in the core's cache when the
// destination hashes, checks and writes it: with 4 MiB batches a Tart
// pull took 4-26% more CPU per GiB (six alternating pairs of
// BenchmarkPullTart runs), the bytes being read back from memory.
const batchSize = 256 << 10

// window holds decoded output; the HistorySize bytes before pos are the
// dictionary of the next block.
type window struct {
	buf []byte
	pos int
}

// room makes n bytes available at buf[pos:], keeping the history. The
// caller must be done with everything before pos except the history.
func (w *window) room(n int) {
	if w.pos+n <= len(w.buf) {
		return
	}
	keep := min(w.pos, HistorySize)
	if need := keep + n; len(w.buf) < need || (w.buf != nil && len(w.buf) < HistorySize+batchSize) {
		// The first allocation is only as big as the first block, so that
		// decoding a tiny stream stays cheap; a stream of several blocks
		// gets a batch-sized buffer.
		size := need
		if w.buf != nil {
			size = max(need, HistorySize+batchSize)
		}
		nb := make([]byte, size)
		copy(nb, w.buf[w.pos-keep:w.pos])
		w.buf = nb
	} else {
		copy(w.buf, w.buf[w.pos-keep:w.pos])
	}
	w.pos = keep
}

// decompress decodes one LZ4 block of exactly n plaintext bytes at pos,
// with the preceding output as its dictionary. room(n) must have run.
func (w *window) decompress(src []byte, n int) error {
	dst := w.buf[w.pos : w.pos+n : w.pos+n]
	dict := w.buf[max(0, w.pos-HistorySize):w.pos]
	if zeroBlock(src, n, dict) {
		clear(dst)
		w.pos += n
		return nil
	}
	got, err := lz4.UncompressBlockWithDict(src, dst, dict)
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("decoded %d bytes, header says %d", got, n)
	}
	w.pos += n
	return nil
}

// Decoder decodes a stream written to it and writes the plaintext to its
// destination, so that a download can be decoded while it arrives without
// a goroutine per stream. Its buffers are reused across blocks (and across
// streams with Reset).
type Decoder struct {
	dst     io.Writer
	win     window
	flushed int // win.buf[flushed:win.pos] is not yet written to dst

	hdr    [headerCompressed]byte
	nhdr   int
	hdrOff int64 // stream offset of the current block's header
	cur    header
	inBody bool
	got    int    // payload bytes of the current block received so far
	pend   []byte // a compressed payload that arrived in pieces

	block int   // index of the current block
	in    int64 // stream bytes consumed
	out   int64 // plaintext bytes the blocks so far announced
	limit int64 // most plaintext the stream may decode to; <0: no limit
	done  bool  // the end marker was read
	err   error
}

// NewDecoder returns a Decoder writing plaintext to dst. The caller must
// call Close to learn whether the stream was complete.
func NewDecoder(dst io.Writer) *Decoder {
	return &Decoder{dst: dst, limit: -1}
}

// Reset starts a new stream to dst, keeping the buffers; the new stream
// has no limit.
func (d *Decoder) Reset(dst io.Writer) {
	*d = Decoder{dst: dst, win: window{buf: d.win.buf}, pend: d.pend[:0], limit: -1}
}

// SetLimit bounds the plaintext of the stream to n bytes (n < 0: no
// bound). A block whose header announces more than what is left is
// corrupt, and is refused before anything is allocated or decoded for
// it: a stream whose plaintext size is known (a Tart chunk's annotation)
// cannot make the decoder allocate or write more.
func (d *Decoder) SetLimit(n int64) { d.limit = n }

// Write consumes stream bytes. Plaintext reaches the destination in
// batches, and all of it once the end marker has been written. After an
// error every call returns it again.
func (d *Decoder) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n := 0
	for n < len(p) {
		if d.done {
			// Apple: do not read data beyond the end-of-stream header. A
			// blob with more after it is not one stream.
			d.err = fmt.Errorf("%w: %d bytes after the end-of-stream marker at byte %d", ErrCorrupt, len(p)-n, d.in-4)
			return n, d.err
		}
		var used int
		var err error
		if d.inBody {
			used, err = d.body(p[n:])
		} else {
			used, err = d.header(p[n:])
		}
		n += used
		d.in += int64(used)
		if err != nil {
			d.err = err
			return n, err
		}
	}
	return n, nil
}

func (d *Decoder) header(q []byte) (int, error) {
	if d.nhdr == 0 {
		d.hdrOff = d.in
	}
	used := 0
	if d.nhdr < 4 {
		c := copy(d.hdr[d.nhdr:4], q)
		d.nhdr += c
		used += c
		if d.nhdr < 4 {
			return used, nil
		}
	}
	hl := headerLen(d.hdr[:4])
	if hl == 0 {
		_, err := parseHeader(d.hdr[:4], d.block, d.hdrOff)
		return used, err
	}
	c := copy(d.hdr[d.nhdr:hl], q[used:])
	d.nhdr += c
	used += c
	if d.nhdr < hl {
		return used, nil
	}
	d.nhdr = 0
	h, err := parseHeader(d.hdr[:hl], d.block, d.hdrOff)
	if err != nil {
		return used, err
	}
	if h.magic == MagicEnd {
		d.done = true
		return used, d.flush()
	}
	if d.limit >= 0 && int64(h.decoded) > d.limit-d.out {
		return used, fmt.Errorf("%w: block %d at byte %d would make the plaintext larger than the %d bytes it may have (the block announces %d bytes, %d are left)", ErrCorrupt, d.block, d.hdrOff, d.limit, h.decoded, d.limit-d.out)
	}
	d.out += int64(h.decoded)
	if d.win.pos+h.decoded > len(d.win.buf) {
		// Moving the history overwrites output not yet handed on.
		if err := d.flush(); err != nil {
			return used, err
		}
		d.win.room(h.decoded)
		d.flushed = d.win.pos
	}
	d.cur, d.inBody, d.got, d.pend = h, true, 0, d.pend[:0]
	if h.encoded == 0 {
		return used, d.endBody(nil)
	}
	return used, nil
}

func (d *Decoder) body(q []byte) (int, error) {
	h := &d.cur
	c := min(h.encoded-d.got, len(q))
	if h.magic == MagicUncompressed {
		// Plaintext goes straight into the window: it is history too.
		copy(d.win.buf[d.win.pos+d.got:], q[:c])
		d.got += c
		if d.got == h.encoded {
			return c, d.endBody(nil)
		}
		return c, nil
	}
	if d.got == 0 && c == h.encoded {
		// The common case with large writes: no copy of the payload.
		d.got = c
		return c, d.endBody(q[:c])
	}
	d.pend = append(d.pend, q[:c]...)
	d.got += c
	if d.got == h.encoded {
		return c, d.endBody(d.pend)
	}
	return c, nil
}

// endBody finishes the current block; src is its LZ4 payload (nil for an
// uncompressed block, already in the window).
func (d *Decoder) endBody(src []byte) error {
	h := &d.cur
	d.inBody = false
	d.block++
	if h.magic == MagicUncompressed {
		d.win.pos += h.decoded
		return nil
	}
	if err := d.win.decompress(src, h.decoded); err != nil {
		return fmt.Errorf("%w: block %d at byte %d: %v", ErrCorrupt, d.block-1, d.hdrOff, err)
	}
	return nil
}

func (d *Decoder) flush() error {
	if d.flushed == d.win.pos {
		return nil
	}
	b := d.win.buf[d.flushed:d.win.pos]
	d.flushed = d.win.pos
	if _, err := d.dst.Write(b); err != nil {
		return fmt.Errorf("applelz4: writing decoded data: %w", err)
	}
	return nil
}

// Close reports whether the stream ended properly: an error wrapping
// io.ErrUnexpectedEOF when the input stopped inside a block or before the
// end marker, or the first error Write returned.
func (d *Decoder) Close() error {
	if d.err != nil {
		return d.err
	}
	if !d.done {
		if d.inBody || d.nhdr > 0 {
			d.err = fmt.Errorf("applelz4: stream truncated inside block %d (header at byte %d): %w", d.block, d.hdrOff, io.ErrUnexpectedEOF)
		} else {
			d.err = fmt.Errorf("applelz4: stream ends at byte %d without the %q end marker: %w", d.in, MagicEnd, io.ErrUnexpectedEOF)
		}
		return d.err
	}
	return nil
}
