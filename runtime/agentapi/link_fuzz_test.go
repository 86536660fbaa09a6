package agentapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
)

// chunkReader returns its bytes in reads of the sizes in sizes (cycled),
// the way a serial port hands them over.
type chunkReader struct {
	b     []byte
	sizes []byte
	i     int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.sizes) > 0 {
		n = min(n, int(r.sizes[r.i%len(r.sizes)])+1)
		r.i++
	}
	n = copy(p, r.b[:min(n, len(r.b))])
	r.b = r.b[n:]
	return n, nil
}

// referenceFrames is the framing rule written plainly: at each position,
// a frame whose magic, header and CRC are valid is taken whole; anything
// else skips one byte. A header cut off by the end of the input ends it
// (a reader waits for the rest).
func referenceFrames(b []byte) []frame {
	var out []frame
	for i := 0; i+len(linkMagic) <= len(b); {
		if !bytes.Equal(b[i:i+4], linkMagic[:]) {
			i++
			continue
		}
		if i+linkHeaderSize > len(b) {
			break
		}
		h := b[i : i+linkHeaderSize]
		n := binary.BigEndian.Uint32(h[12:])
		if h[4] < frameHello || h[4] > frameData || h[5]|h[6]|h[7] != 0 || n > MaxLinkPayload {
			i++
			continue
		}
		if i+linkHeaderSize+int(n) > len(b) {
			break
		}
		payload := b[i+linkHeaderSize : i+linkHeaderSize+int(n)]
		crc := crc32.Update(crc32.Update(0, crcTable, h[:16]), crcTable, payload)
		if crc != binary.BigEndian.Uint32(h[16:]) {
			i++
			continue
		}
		out = append(out, frame{typ: h[4], session: binary.BigEndian.Uint32(h[8:]), payload: payload})
		i += linkHeaderSize + int(n)
	}
	return out
}

// FuzzFrameReader feeds arbitrary bytes (what a hostile guest writes to
// the agent port), in arbitrary read sizes, to the host's frame reader:
// it must not panic, must keep its buffer at its fixed size, and must
// return exactly the frames whose header, length and CRC are valid.
func FuzzFrameReader(f *testing.F) {
	valid := appendFrame(nil, frameData, 7, []byte("hello"))
	badCRC := bytes.Clone(valid)
	badCRC[len(badCRC)-1] ^= 1
	huge := appendFrame(nil, frameData, 7, nil)
	binary.BigEndian.PutUint32(huge[12:], MaxLinkPayload+1)
	maxLen := appendFrame(nil, frameData, 9, bytes.Repeat([]byte{'x'}, MaxLinkPayload))
	badType := appendFrame(nil, 9, 7, []byte("x"))
	cut := valid[:len(valid)-2]

	f.Add(valid, []byte{})
	f.Add(badCRC, []byte{0})
	f.Add(append(bytes.Clone(huge), valid...), []byte{3, 200})
	f.Add(append(append([]byte("garbageMVZ"), cut...), valid...), []byte{1})
	f.Add(handshake(frameHello, 1), []byte{255})
	f.Add(append(handshake(frameWelcome, 2), appendData(nil, 2, bytes.Repeat([]byte("ab"), 9000))...), []byte{100, 7})
	f.Add(append(bytes.Clone(maxLen), badType...), []byte{})
	f.Add([]byte("MVZLMVZLMVZLMVZ"), []byte{0, 1, 2})
	f.Add(append([]byte("MVZL\x03\x00\x00\x00"), valid...), []byte{5})

	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		fr := newFrameReader(&chunkReader{b: data, sizes: sizes})
		capacity := cap(fr.buf)
		want := referenceFrames(data)
		var got []frame
		for {
			fm, err := fr.next()
			if cap(fr.buf) != capacity {
				t.Fatalf("buffer grew from %d to %d bytes", capacity, cap(fr.buf))
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("next: %v", err)
				}
				break
			}
			if len(fm.payload) > MaxLinkPayload {
				t.Fatalf("frame of %d bytes", len(fm.payload))
			}
			fm.payload = bytes.Clone(fm.payload)
			got = append(got, fm)
			if len(got) > len(data)/linkHeaderSize {
				t.Fatalf("%d frames out of %d bytes", len(got), len(data))
			}
		}
		if len(got) != len(want) {
			t.Fatalf("got %d frames, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i].typ != want[i].typ || got[i].session != want[i].session || !bytes.Equal(got[i].payload, want[i].payload) {
				t.Fatalf("frame %d: got %d/%d/%q, want %d/%d/%q", i, got[i].typ, got[i].session, got[i].payload, want[i].typ, want[i].session, want[i].payload)
			}
		}
	})
}
