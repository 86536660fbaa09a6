package applelz4

import (
	"errors"
	"fmt"
	"io"
)

// Reader decodes a stream read from an io.Reader. It stops reading its
// source at the end marker.
type Reader struct {
	src   io.Reader
	win   window
	rpos  int // win.buf[rpos:win.pos] is decoded but not yet read
	hdr   [headerCompressed]byte
	pend  []byte
	block int
	in    int64
	done  bool
	err   error
}

// NewReader returns a Reader decoding src.
func NewReader(src io.Reader) *Reader {
	return &Reader{src: src}
}

// Reset starts decoding a new stream from src, keeping the buffers.
func (r *Reader) Reset(src io.Reader) {
	*r = Reader{src: src, win: window{buf: r.win.buf}, pend: r.pend[:0]}
}

// Read returns decoded bytes, io.EOF after the end marker, or an error
// wrapping ErrCorrupt or io.ErrUnexpectedEOF.
func (r *Reader) Read(p []byte) (int, error) {
	for r.rpos == r.win.pos {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.err = r.next()
	}
	n := copy(p, r.win.buf[r.rpos:r.win.pos])
	r.rpos += n
	return n, nil
}

// WriteTo decodes the rest of the stream into w without the copy Read
// makes.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.rpos < r.win.pos {
			n, err := w.Write(r.win.buf[r.rpos:r.win.pos])
			r.rpos += n
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if r.err != nil {
			return total, r.err
		}
		if r.done {
			return total, nil
		}
		r.err = r.next()
	}
}

// readFull reads len(b) bytes of block content; running out is truncation.
func (r *Reader) readFull(b []byte, what string, off int64) error {
	n, err := io.ReadFull(r.src, b)
	r.in += int64(n)
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("applelz4: stream truncated in the %s of block %d (header at byte %d): %w", what, r.block, off, io.ErrUnexpectedEOF)
	}
	return err
}

// next decodes one block into the window; all earlier output was read.
func (r *Reader) next() error {
	off := r.in
	n, err := io.ReadFull(r.src, r.hdr[:4])
	r.in += int64(n)
	if n == 0 && errors.Is(err, io.EOF) {
		return fmt.Errorf("applelz4: stream ends at byte %d without the %q end marker: %w", off, MagicEnd, io.ErrUnexpectedEOF)
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("applelz4: stream truncated in the header of block %d (at byte %d): %w", r.block, off, io.ErrUnexpectedEOF)
		}
		return err
	}
	hl := headerLen(r.hdr[:4])
	if hl == 0 {
		_, err := parseHeader(r.hdr[:4], r.block, off)
		return err
	}
	if err := r.readFull(r.hdr[4:hl], "header", off); err != nil {
		return err
	}
	h, err := parseHeader(r.hdr[:hl], r.block, off)
	if err != nil {
		return err
	}
	if h.magic == MagicEnd {
		r.done = true
		return nil
	}
	r.win.room(h.decoded)
	r.rpos = r.win.pos
	if h.magic == MagicUncompressed {
		if err := r.readFull(r.win.buf[r.win.pos:r.win.pos+h.decoded], "data", off); err != nil {
			return err
		}
		r.win.pos += h.decoded
		r.block++
		return nil
	}
	if cap(r.pend) < h.encoded {
		r.pend = make([]byte, h.encoded)
	}
	r.pend = r.pend[:h.encoded]
	if err := r.readFull(r.pend, "data", off); err != nil {
		return err
	}
	if err := r.win.decompress(r.pend, h.decoded); err != nil {
		return fmt.Errorf("%w: block %d at byte %d: %v", ErrCorrupt, r.block, off, err)
	}
	r.block++
	return nil
}

// Decode decodes a whole stream held in memory and appends the plaintext
// to dst. Bytes after the end marker are an error.
func Decode(dst, src []byte) ([]byte, error) {
	w := appendWriter{b: dst}
	d := NewDecoder(&w)
	if _, err := d.Write(src); err != nil {
		return w.b, err
	}
	return w.b, d.Close()
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
