package vmimage

import (
	"bytes"
	"errors"
	"io"
	"os"
)

// zeroData makes [off, off+n) of f read as zeros by writing zeros over
// the parts that do not already: the fallback where a hole cannot be
// punched. It reads the range first, so holes and zero runs stay as they
// are.
func zeroData(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k, err := f.ReadAt(buf[:min(int64(len(buf)), n)], off)
		for i := 0; i < k; i += holeSize {
			j := min(k, i+holeSize)
			if !bytes.Equal(buf[i:j], zeros[:j-i]) {
				if _, err := f.WriteAt(zeros[:j-i], off+int64(i)); err != nil {
					return err
				}
			}
		}
		off, n = off+int64(k), n-int64(k)
		if errors.Is(err, io.EOF) {
			return nil // past the end reads as zeros already
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// isHole reports whether [off, off+n) of f holds no data at all (a hole,
// which reads as zeros), where the file system can say so cheaply; false
// when it cannot tell.
func isHole(f *os.File, off, n int64) bool {
	next, ok := nextData(f, off)
	return ok && next >= off+n
}
