package applelz4

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// zeroRun is a hand-made LZ4 block of n zero bytes (n ≥ 10): one literal
// zero, a match at offset 1 for all but the last five, then five literal
// zeros (the block format ends with literals).
func zeroRun(n int) []byte {
	m := n - 1 - 5 - 4 // match length beyond the implicit 4
	b := []byte{0x1F, 0x00, 0x01, 0x00}
	for m -= 15; m >= 255; m -= 255 {
		b = append(b, 255)
	}
	b = append(b, byte(m))
	return append(b, 0x50, 0, 0, 0, 0, 0)
}

// fromDict is a block whose only match copies m (19..273) bytes starting
// off bytes back, in dict, followed by five literal zeros.
func fromDict(off, m int) []byte {
	return []byte{0x0F, byte(off), byte(off >> 8), byte(m - 4 - 15), 0x50, 0, 0, 0, 0, 0}
}

func TestZeroBlock(t *testing.T) {
	compressed := func(data []byte) []byte {
		var c lz4.Compressor
		buf := make([]byte, lz4.CompressBlockBound(len(data)))
		n, err := c.CompressBlock(data, buf)
		if err != nil || n == 0 {
			t.Fatalf("compressing: %d, %v", n, err)
		}
		return buf[:n]
	}
	zeros := make([]byte, 64<<10)
	var text []byte
	for i := 0; len(text) < 64<<10; i++ {
		text = strconv.AppendInt(append(text, "line "...), int64(i), 10)
		text = append(text, " of some text\n"...)
	}
	text = text[:64<<10]
	oneByte := bytes.Clone(zeros)
	oneByte[40000] = 1
	dictNonZero := append(make([]byte, 100), 7, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	for _, c := range []struct {
		name string
		src  []byte
		n    int
		dict []byte
		want bool
	}{
		{"zeros compressed by pierrec/lz4", compressed(zeros), len(zeros), nil, true},
		{"hand-made zero run", zeroRun(70000), 70000, nil, true},
		{"hand-made zero run, one byte more announced", zeroRun(70000), 70001, nil, false},
		{"hand-made zero run, truncated", zeroRun(70000)[:5], 70000, nil, false},
		{"text", compressed(text), len(text), nil, false},
		{"zeros but one byte", compressed(oneByte), len(oneByte), nil, false},
		{"match from zero history", fromDict(10, 100), 105, make([]byte, 10), true},
		{"match from history with a non-zero byte", fromDict(10, 100), 105, dictNonZero, false},
		{"match reaching before the history", fromDict(10, 100), 105, make([]byte, 5), false},
		{"offset 0", fromDict(0, 100), 105, make([]byte, 10), false},
		{"empty", nil, 0, nil, false},
	} {
		if got := zeroBlock(c.src, c.n, c.dict); got != c.want {
			t.Errorf("%s: zeroBlock = %v, want %v", c.name, got, c.want)
		}
		if c.want {
			// What the real decoder makes of it.
			dst := make([]byte, c.n)
			for i := range dst {
				dst[i] = 0xEE
			}
			got, err := lz4.UncompressBlockWithDict(c.src, dst, c.dict)
			if err != nil || got != c.n || !bytes.Equal(dst, make([]byte, c.n)) {
				t.Errorf("%s: the decoder gives %d bytes (%v), zero: %v", c.name, got, err, bytes.Equal(dst, make([]byte, c.n)))
			}
		}
	}

	// Through the Decoder: a stream of zero blocks after a text block.
	data := append(bytes.Clone(text), make([]byte, 200<<10)...)
	out, err := Decode(nil, Encode(data, DefaultBlockSize))
	if err != nil || !bytes.Equal(out, data) {
		t.Fatalf("round trip of text then zeros: %d bytes, %v", len(out), err)
	}
}

// FuzzZeroBlock: whatever block zeroBlock calls zero, the LZ4 decoder
// decodes to that many zero bytes.
func FuzzZeroBlock(f *testing.F) {
	f.Add(zeroRun(1000), uint16(1000), uint8(0), byte(0))
	f.Add(fromDict(10, 100), uint16(105), uint8(10), byte(0))
	f.Add(fromDict(10, 100), uint16(105), uint8(10), byte(1))
	f.Add([]byte{0x00}, uint16(0), uint8(0), byte(0))
	f.Fuzz(func(t *testing.T, src []byte, n uint16, dictLen uint8, fill byte) {
		dict := bytes.Repeat([]byte{fill}, int(dictLen))
		if len(dict) > 0 {
			dict[0] = 9 // not all of it fill, so a match reaching it differs
		}
		if !zeroBlock(src, int(n), dict) {
			return
		}
		dst := bytes.Repeat([]byte{0xEE}, int(n))
		got, err := lz4.UncompressBlockWithDict(src, dst, dict)
		if err != nil || got != int(n) || !bytes.Equal(dst, make([]byte, n)) {
			t.Fatalf("zeroBlock said %d zero bytes; the decoder gives %d (%v)", n, got, err)
		}
	})
}
