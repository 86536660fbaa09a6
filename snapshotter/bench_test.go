package snapshotter

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkPrepare measures Prepare of a 256 MiB fully allocated base on
// the default temporary file system. The sub-benchmark is named after the
// clone method that file system allows (reflink: O(1); sparse-copy: the
// data is copied, so MB/s is the copy speed). BenchmarkPrepareXFS (linux,
// root) is the reflink case in the same run.
func BenchmarkPrepare(b *testing.B) {
	benchPrepare(b, b.TempDir())
}

func benchPrepare(b *testing.B, root string) {
	const size = 256 << 20
	ctx := context.Background()
	s := newSnapshotter(b, root)
	unpack := mustDir(b)(s.Prepare(ctx, "unpack", ""))
	// Random data: nothing for the sparse copy to skip.
	f := filepath.Join(unpack, "disk.img")
	for off := int64(0); off < size; off += 16 << 20 {
		writeAt(b, f, off, randomBytes(uint64(off>>20), 16<<20))
	}
	if err := s.Commit(ctx, "base", "unpack"); err != nil {
		b.Fatal(err)
	}
	// One clone first, to name the method.
	mustDir(b)(s.Prepare(ctx, "probe", "base"))
	if err := s.Remove(ctx, "probe"); err != nil {
		b.Fatal(err)
	}
	method := s.CloneMethod()

	b.Run("method="+string(method), func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			key := fmt.Sprintf("vm-%d", i)
			if _, err := s.Prepare(ctx, key, "base"); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := s.Remove(ctx, key); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}
