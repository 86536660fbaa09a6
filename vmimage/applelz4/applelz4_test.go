package applelz4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"
	"testing/iotest"
)

// The vectors below are assembled byte by byte from Apple's framing
// description (see the package comment) and the LZ4 block format
// (lz4_Block_format.md): a sequence is a token (high nibble literal
// length, low nibble match length minus 4, 15 meaning "more length bytes
// follow"), literal-length bytes, the literals, a 2-byte little-endian
// offset, then match-length bytes; the block ends with a literals-only
// sequence. None of them comes from this package's encoder.

func le32(n int) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(n)) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func rawBlock(data []byte) []byte { return cat([]byte("bv4-"), le32(len(data)), data) }

func lz4Block(decoded int, payload []byte) []byte {
	return cat([]byte("bv41"), le32(decoded), le32(len(payload)), payload)
}

var end = []byte("bv4$")

// handStream has four blocks: a stored one, then compressed blocks whose
// matches reach into the previous block, two blocks back, and across the
// boundary between the previous output and the block being decoded.
func handStream() (stream, want []byte) {
	a := []byte("Hello, Apple LZ4!") // 17 bytes, output 0..16
	// Block B (output 17..36): "XY", 13 bytes copied from output 0
	// (offset 19 from position 19), then the literals "tail!".
	b := []byte{
		0x29, 'X', 'Y', 0x13, 0x00, // 2 literals, match length 9+4, offset 19
		0x50, 't', 'a', 'i', 'l', '!', // last 5 literals
	}
	bOut := "XY" + "Hello, Apple " + "tail!"
	// Block C (output 37..51): an overlapping match of 10 bytes at offset
	// 5, entirely from block B's tail, then "END!!".
	c := []byte{
		0x06, 0x05, 0x00, // no literals, match length 6+4, offset 5
		0x50, 'E', 'N', 'D', '!', '!',
	}
	cOut := "tail!tail!" + "END!!"
	// Block D (output 52..89): a 20-byte match at offset 20 spanning the
	// end of B and all of C; a 6-byte match at offset 22 whose first two
	// bytes come from C and whose rest comes from D itself; 12 literals.
	d := []byte{
		0x0F, 0x14, 0x00, 0x01, // no literals, match length 15+4+1, offset 20
		0x02, 0x16, 0x00, // no literals, match length 2+4, offset 22
		0xC0, '<', 'e', 'n', 'd', '-', 'o', 'f', '-', 'b', 'l', 'k', '>',
	}
	dOut := "tail!tail!tail!END!!" + "!!tail" + "<end-of-blk>"
	stream = cat(rawBlock(a), lz4Block(len(bOut), b), lz4Block(len(cOut), c), lz4Block(len(dOut), d), end)
	want = []byte(string(a) + bOut + cOut + dOut)
	return stream, want
}

func decodeWrites(t testing.TB, stream []byte, sizes func() int) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	d := NewDecoder(&out)
	for len(stream) > 0 {
		n := min(sizes(), len(stream))
		if _, err := d.Write(stream[:n]); err != nil {
			return out.Bytes(), err
		}
		stream = stream[n:]
	}
	return out.Bytes(), d.Close()
}

func readAll(r io.Reader) ([]byte, error) { return io.ReadAll(r) }

func TestHandBuiltVector(t *testing.T) {
	stream, want := handStream()
	for _, chunk := range []int{1, 2, 3, 7, 13, len(stream)} {
		got, err := decodeWrites(t, stream, func() int { return chunk })
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Decoder, %d-byte writes: %q, %v; want %q", chunk, got, err, want)
		}
	}
	got, err := readAll(NewReader(iotest.OneByteReader(bytes.NewReader(stream))))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Reader: %q, %v; want %q", got, err, want)
	}
}

// TestHistoryFullWindow reaches back exactly 65535 bytes (the largest LZ4
// offset) into a stored block that is longer than the history.
func TestHistoryFullWindow(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	a := make([]byte, 70000)
	for i := range a {
		a[i] = byte(r.Uint32())
	}
	payload := []byte{
		0x0F, 0xFF, 0xFF, 0x0D, // no literals, match length 15+4+13 = 32, offset 65535
		0xC0, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l',
	}
	wantB := cat(a[len(a)-65535:len(a)-65535+32], []byte("abcdefghijkl"))
	stream := cat(rawBlock(a), lz4Block(len(wantB), payload), end)
	want := cat(a, wantB)
	got, err := Decode(nil, stream)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Decode: %v (equal %v)", err, bytes.Equal(got, want))
	}
	got, err = readAll(NewReader(bytes.NewReader(stream)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Reader: %v (equal %v)", err, bytes.Equal(got, want))
	}
}

// seq appends one LZ4 sequence; mlen 0 makes it the last (literals only).
func seq(dst, lits []byte, offset, mlen int) []byte {
	ext := func(dst []byte, n int) []byte {
		for ; n >= 255; n -= 255 {
			dst = append(dst, 255)
		}
		return append(dst, byte(n))
	}
	ll, ml := min(len(lits), 15), 0
	if mlen > 0 {
		ml = min(mlen-4, 15)
	}
	dst = append(dst, byte(ll<<4|ml))
	if ll == 15 {
		dst = ext(dst, len(lits)-15)
	}
	dst = append(dst, lits...)
	if mlen == 0 {
		return dst
	}
	dst = append(dst, byte(offset), byte(offset>>8))
	if ml == 15 {
		dst = ext(dst, mlen-4-15)
	}
	return dst
}

// generated builds a long stream of hand-encoded blocks whose matches
// reach up to 65535 bytes back across many earlier blocks, with the
// expected output computed by a byte-at-a-time copy.
func generated(seed uint64, blocks int) (stream, want []byte) {
	r := rand.New(rand.NewPCG(seed, 99))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('a' + r.IntN(6)) // few symbols: matches of any offset are plausible
		}
		return b
	}
	for range blocks {
		if r.IntN(8) == 0 {
			data := randBytes(r.IntN(20000))
			stream = append(stream, rawBlock(data)...)
			want = append(want, data...)
			continue
		}
		start := len(want)
		var payload []byte
		if r.IntN(50) == 0 {
			// A big block, so the decoder's buffer has to grow.
			lits := randBytes(300000 + r.IntN(200000))
			payload = seq(payload, lits, 0, 0)
			want = append(want, lits...)
			stream = append(stream, lz4Block(len(want)-start, payload)...)
			continue
		}
		for range 1 + r.IntN(4) {
			lits := randBytes(r.IntN(3000))
			want = append(want, lits...)
			if len(want) == 0 {
				payload = seq(payload, lits, 0, 0)
				continue
			}
			offset := 1 + r.IntN(min(len(want), 65535))
			mlen := 4 + r.IntN(6000)
			payload = seq(payload, lits, offset, mlen)
			for range mlen {
				want = append(want, want[len(want)-offset])
			}
		}
		lits := randBytes(12 + r.IntN(30))
		payload = seq(payload, lits, 0, 0)
		want = append(want, lits...)
		stream = append(stream, lz4Block(len(want)-start, payload)...)
	}
	return append(stream, end...), want
}

func TestGeneratedStream(t *testing.T) {
	stream, want := generated(7, 2500)
	if len(want) < 3*(batchSize+HistorySize) {
		t.Fatalf("stream too short to move the window: %d", len(want))
	}
	r := rand.New(rand.NewPCG(3, 4))
	got, err := decodeWrites(t, stream, func() int { return 1 + r.IntN(200000) })
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Decoder: %v (got %d bytes, want %d, equal %v)", err, len(got), len(want), bytes.Equal(got, want))
	}
	got, err = readAll(NewReader(iotest.HalfReader(bytes.NewReader(stream))))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Reader: %v (equal %v)", err, bytes.Equal(got, want))
	}
	var buf bytes.Buffer
	if _, err := NewReader(bytes.NewReader(stream)).WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("Reader.WriteTo: %v", err)
	}
}

func testData(size int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, 0, size)
	for len(b) < size {
		switch r.IntN(3) {
		case 0:
			b = append(b, make([]byte, r.IntN(100000))...)
		case 1:
			for range r.IntN(2000) {
				b = append(b, byte(r.Uint32()))
			}
		default:
			for range r.IntN(3000) {
				b = append(b, "line "...)
				b = strconv.AppendInt(b, int64(r.IntN(1000)), 10)
				b = append(b, " of some text\n"...)
			}
		}
	}
	return b[:size]
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		size, block int
	}{{0, 0}, {1, 0}, {100, 7}, {65536, 0}, {1 << 20, 0}, {3<<20 + 17, 1 << 20}, {5 << 20, 4096}} {
		data := testData(tc.size, uint64(tc.size))
		stream := Encode(data, tc.block)
		got, err := Decode(nil, stream)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d block %d: %v", tc.size, tc.block, err)
		}
		got, err = readAll(NewReader(bytes.NewReader(stream)))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d block %d: Reader: %v", tc.size, tc.block, err)
		}
	}
}

func TestEncoderStoresIncompressible(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, 1000)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	stream := Encode(data, 0)
	if want := cat(rawBlock(data), end); !bytes.Equal(stream, want) {
		t.Fatalf("random data not stored as one bv4- block: % x", stream[:16])
	}
	if stream := Encode(make([]byte, 1000), 0); string(stream[:4]) != MagicCompressed {
		t.Fatalf("zeros not compressed: %q", stream[:4])
	}
}

func TestConcatenatedEncoders(t *testing.T) {
	data := testData(1<<20, 9)
	var e1, e2 Encoder
	stream := e1.AppendBlocks(nil, data[:300000])
	stream = e2.AppendBlocks(stream, data[300000:])
	got, err := Decode(nil, AppendEnd(stream))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
}

func TestTruncated(t *testing.T) {
	stream, _ := handStream()
	for n := 0; n < len(stream); n++ {
		_, err := decodeWrites(t, stream[:n], func() int { return 5 })
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Decoder, %d of %d bytes: %v, want io.ErrUnexpectedEOF", n, len(stream), err)
		}
		_, err = readAll(NewReader(bytes.NewReader(stream[:n])))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Reader, %d of %d bytes: %v, want io.ErrUnexpectedEOF", n, len(stream), err)
		}
	}
}

func TestMissingEndMarker(t *testing.T) {
	stream := rawBlock([]byte("no end"))
	_, err := Decode(nil, stream)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Contains([]byte(err.Error()), []byte("end marker")) {
		t.Fatalf("Decode: %v", err)
	}
	_, err = readAll(NewReader(bytes.NewReader(stream)))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Reader: %v", err)
	}
}

func TestCorrupt(t *testing.T) {
	good := []byte{0x50, 'h', 'e', 'l', 'l', 'o'}
	for name, stream := range map[string][]byte{
		"bad magic":          cat([]byte("bv42"), le32(5), le32(6), good, end),
		"bad magic later":    cat(rawBlock([]byte("x")), []byte("BV41"), end),
		"decoded too big":    cat(lz4Block(6, good), end),
		"decoded too small":  cat(lz4Block(4, good), end),
		"empty payload":      cat(lz4Block(5, nil), end),
		"offset before data": cat(lz4Block(9, []byte{0x00, 0x05, 0x00, 0x50, 'a', 'b', 'c', 'd', 'e'}), end),
		"offset zero":        cat(lz4Block(9, []byte{0x00, 0x00, 0x00, 0x50, 'a', 'b', 'c', 'd', 'e'}), end),
		"encoded impossible": cat([]byte("bv41"), le32(10), le32(1000), make([]byte, 1000), end),
		"huge block":         cat([]byte("bv4-"), le32(MaxBlockSize+1), end),
		"after end":          cat(lz4Block(5, good), end, []byte("junk")),
	} {
		_, err := Decode(nil, stream)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Decode: %v, want ErrCorrupt", name, err)
		}
		_, err = readAll(NewReader(bytes.NewReader(stream)))
		if name != "after end" && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Reader: %v, want ErrCorrupt", name, err)
		}
	}
}

func TestReaderStopsAtEnd(t *testing.T) {
	src := bytes.NewReader(cat(rawBlock([]byte("abc")), end, []byte("next")))
	got, err := readAll(NewReader(src))
	if err != nil || string(got) != "abc" {
		t.Fatalf("%q %v", got, err)
	}
	if rest, _ := io.ReadAll(src); string(rest) != "next" {
		t.Fatalf("Reader consumed past the end marker: %q left", rest)
	}
}

func TestDecoderReset(t *testing.T) {
	stream, want := handStream()
	var out bytes.Buffer
	d := NewDecoder(&out)
	for range 3 {
		out.Reset()
		d.Reset(&out)
		if _, err := d.Write(stream); err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil || !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("%v %q", err, out.Bytes())
		}
	}
}

func TestDecoderWriteError(t *testing.T) {
	d := NewDecoder(failWriter{})
	_, err := d.Write(Encode([]byte("hello"), 0))
	if err == nil || !errors.Is(err, errFail) {
		t.Fatalf("%v", err)
	}
	if err2 := d.Close(); !errors.Is(err2, errFail) {
		t.Fatalf("Close after failed write: %v", err2)
	}
}

var errFail = errors.New("fail")

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errFail }

// maxRatioBlock is an LZ4 block at about the format's best ratio: one
// literal, then a match at offset 1 whose length takes n bytes of 255.
func maxRatioBlock(n int) (block []byte, decoded int) {
	payload := cat([]byte{0x1F, 'a', 0x01, 0x00}, bytes.Repeat([]byte{0xFF}, n), []byte{0x00, 0x50, 'z', 'z', 'z', 'z', 'z'})
	decoded = 1 + 4 + 15 + 255*n + 5
	return lz4Block(decoded, payload), decoded
}

func TestMaxExpansion(t *testing.T) {
	block, n := maxRatioBlock(4000)
	stream := cat(block, end)
	out, err := Decode(nil, stream)
	if err != nil || len(out) != n {
		t.Fatalf("%d bytes, %v; want %d", len(out), err, n)
	}
	if ratio := len(out) / len(stream); ratio < 250 || ratio > 255 {
		t.Fatalf("ratio %d", ratio)
	}
}

func TestDecoderLimit(t *testing.T) {
	stream, want := handStream()
	for _, limit := range []int{len(want), len(want) + 1, 1 << 30} {
		var out bytes.Buffer
		d := NewDecoder(&out)
		d.SetLimit(int64(limit))
		if _, err := d.Write(stream); err != nil {
			t.Fatal(limit, err)
		}
		if err := d.Close(); err != nil || !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("limit %d: %v", limit, err)
		}
	}
	for _, limit := range []int{0, 17, len(want) - 1} {
		cw := &countWriter{}
		d := NewDecoder(cw)
		d.SetLimit(int64(limit))
		_, err := d.Write(stream)
		if err == nil {
			err = d.Close()
		}
		if !errors.Is(err, ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte("larger than")) {
			t.Errorf("limit %d: %v", limit, err)
		}
		if cw.n > int64(limit) {
			t.Errorf("limit %d: %d bytes written", limit, cw.n)
		}
	}
	// A block announcing more than the limit is refused before its window
	// is allocated.
	block, _ := maxRatioBlock(200000) // about 50 MiB
	d := NewDecoder(io.Discard)
	d.SetLimit(1 << 20)
	if _, err := d.Write(cat(rawBlock([]byte("x")), block, end)); !errors.Is(err, ErrCorrupt) {
		t.Fatal(err)
	}
	if len(d.win.buf) > 1<<10 {
		t.Fatalf("window of %d bytes allocated for a refused block", len(d.win.buf))
	}
	// Reset clears the limit.
	d.Reset(io.Discard)
	if _, err := d.Write(cat(block, end)); err != nil {
		t.Fatal(err)
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func FuzzDecode(f *testing.F) {
	hand, _ := handStream()
	gen, _ := generated(1, 3)
	f.Add(hand)
	f.Add(gen)
	f.Add(Encode(testData(3000, 2), 512))
	f.Add(cat(rawBlock([]byte("x")), end))
	f.Add([]byte("bv4$"))
	mr, _ := maxRatioBlock(100)
	f.Add(cat(mr, mr, end))
	// Headers announcing tens of MiB are valid but make each run slow.
	old := maxBlock
	maxBlock = 1 << 20
	f.Cleanup(func() { maxBlock = old })
	f.Fuzz(func(t *testing.T, stream []byte) {
		whole, errWhole := Decode(nil, stream)
		// LZ4's best ratio is 255 (a match-length byte of 255 adds 255
		// bytes); stored blocks and headers only lower it.
		if len(whole) > 255*len(stream) {
			t.Fatalf("%d bytes decoded from %d", len(whole), len(stream))
		}
		split, errSplit := decodeWrites(t, stream, func() int { return 3 })
		if (errWhole == nil) != (errSplit == nil) || (errWhole == nil && !bytes.Equal(whole, split)) {
			t.Fatalf("one write: %v; 3-byte writes: %v", errWhole, errSplit)
		}
		read, errRead := readAll(NewReader(bytes.NewReader(stream)))
		if errWhole == nil && (errRead != nil || !bytes.Equal(read, whole)) {
			t.Fatalf("Decoder succeeded, Reader: %v", errRead)
		}
		if errRead != nil && errWhole == nil {
			t.Fatalf("Reader failed (%v) where the Decoder did not", errRead)
		}
	})
}

// FuzzDecodeLimit checks that a Decoder with a limit never writes more
// than it, and decodes exactly what an unlimited one does when the
// plaintext fits.
func FuzzDecodeLimit(f *testing.F) {
	hand, want := handStream()
	f.Add(hand, uint32(len(want)))
	f.Add(hand, uint32(len(want)-1))
	mr, n := maxRatioBlock(100)
	f.Add(cat(mr, end), uint32(n))
	f.Add(cat(mr, mr, end), uint32(n))
	f.Add(Encode(testData(3000, 2), 512), uint32(1000))
	old := maxBlock
	maxBlock = 1 << 20
	f.Cleanup(func() { maxBlock = old })
	f.Fuzz(func(t *testing.T, stream []byte, limit uint32) {
		limit %= 4 << 20
		whole, errWhole := Decode(nil, stream)
		var out bytes.Buffer
		d := NewDecoder(&out)
		d.SetLimit(int64(limit))
		_, err := d.Write(stream)
		if err == nil {
			err = d.Close()
		}
		if out.Len() > int(limit) {
			t.Fatalf("%d bytes written under a limit of %d", out.Len(), limit)
		}
		if errWhole == nil && len(whole) <= int(limit) && (err != nil || !bytes.Equal(out.Bytes(), whole)) {
			t.Fatalf("plaintext of %d bytes under a limit of %d: %v", len(whole), limit, err)
		}
		if errWhole == nil && len(whole) > int(limit) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("plaintext of %d bytes over a limit of %d: %v", len(whole), limit, err)
		}
	})
}

func BenchmarkAppleLZ4Decode(b *testing.B) {
	data := testData(64<<20, 11)
	stream := Encode(data, DefaultBlockSize)
	b.ReportMetric(float64(len(data))/float64(len(stream)), "ratio")
	b.SetBytes(int64(len(data)))
	d := NewDecoder(io.Discard)
	b.ResetTimer()
	for b.Loop() {
		d.Reset(io.Discard)
		for s := stream; len(s) > 0; {
			n := min(1<<20, len(s))
			if _, err := d.Write(s[:n]); err != nil {
				b.Fatal(err)
			}
			s = s[n:]
		}
		if err := d.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
