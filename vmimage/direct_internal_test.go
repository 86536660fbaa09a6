package vmimage

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"
)

// alignedWrites checks every write it passes on: offset, length and
// memory aligned, as O_DIRECT wants them.
type alignedWrites struct {
	t      *testing.T
	w      io.WriterAt
	n      int
	refuse error // returned instead of writing, when set
}

func (a *alignedWrites) WriteAt(p []byte, off int64) (int, error) {
	a.n++
	if off%directAlign != 0 || len(p)%directAlign != 0 || uintptr(unsafe.Pointer(&p[0]))%directAlign != 0 {
		a.t.Errorf("direct write of %d bytes at %d (address %% %d = %d): not aligned", len(p), off, directAlign, uintptr(unsafe.Pointer(&p[0]))%directAlign)
	}
	if a.refuse != nil {
		return 0, a.refuse
	}
	return a.w.WriteAt(p, off)
}

// stageRuns writes runs of random bytes through a stage the way a
// sparseWriter does (in pieces of varying size, with gaps left as holes)
// and returns what the file must hold.
func stageRuns(t *testing.T, s *directStage, size int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	want := make([]byte, size)
	runs := []struct{ off, n int }{
		{0, 100},                      // a partial first block
		{100, 3*directAlign + 17},     // continues it, ends mid-block
		{5 * directAlign, 10},         // a jump: the pending run goes out first
		{5*directAlign + 10, 2 << 20}, // fills the stage twice over
		{(5 << 20) + 3, 1},            // one byte in a block of its own
		{(6 << 20) - 5, 5},            // up to the end of the file
	}
	for _, r := range runs {
		b := make([]byte, r.n)
		for i := range b {
			b[i] = byte(rng.UintN(255)) + 1
		}
		copy(want[r.off:], b)
		// In pieces, as a decoder hands them on.
		for len(b) > 0 {
			k := min(len(b), 1+rng.IntN(300<<10))
			if err := s.writeAt(b[:k], int64(r.off)); err != nil {
				t.Fatal(err)
			}
			b, r.off = b[k:], r.off+k
		}
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if err := s.close(); err != nil {
		t.Fatalf("closing again: %v", err)
	}
	return want
}

func sizedFile(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "disk"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func checkFile(t *testing.T, f *os.File, want []byte) {
	t.Helper()
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("file differs from what was written at byte %d of %d", i, len(want))
			}
		}
		t.Fatalf("file is %d bytes, want %d", len(got), len(want))
	}
}

func TestDirectStage(t *testing.T) {
	const size = 6 << 20
	f := sizedFile(t, size)
	d := openDirect(f)
	var under io.WriterAt = f
	if d != nil {
		defer d.Close()
		under = d
	} else {
		// tmpfs, say: the stage's logic is the same, through f.
		t.Logf("no direct I/O on %s: the aligned writes go through the cache", filepath.Dir(f.Name()))
	}
	aw := &alignedWrites{t: t, w: under}
	s := &directStage{f: f, d: aw}
	want := stageRuns(t, s, size)
	if aw.n < 3 {
		t.Errorf("%d direct writes for 2 MiB of data", aw.n)
	}
	checkFile(t, f, want)
}

func TestDirectStageRefused(t *testing.T) {
	const size = 6 << 20
	f := sizedFile(t, size)
	aw := &alignedWrites{t: t, w: f, refuse: syscall.EINVAL}
	s := &directStage{f: f, d: aw}
	want := stageRuns(t, s, size)
	if aw.n != 1 {
		t.Errorf("%d direct writes tried after the first was refused; want none", aw.n-1)
	}
	checkFile(t, f, want)
}
