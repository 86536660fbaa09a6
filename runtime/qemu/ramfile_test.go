package qemu

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestArgsRAMFile: a savable cold boot has its RAM in the memfd at
// ramFD (shared, under the machine's own RAM id); a restore with a RAM
// file maps it privately and waits for migrate-incoming; arm64, another
// machine type or a plain restore keep QEMU's own RAM.
func TestArgsRAMFile(t *testing.T) {
	has := func(a []string, s string) bool { return slices.Contains(a, s) }
	s := sampleSpec(t)
	s.Savable = true
	a := Args(s, AccelTCG, "", "")
	if memfdRAM != has(a, "memory-backend-file,id=pc.ram,size=512M,mem-path=/proc/self/fd/6,share=on") ||
		memfdRAM != has(a, "q35,memory-backend=pc.ram") {
		t.Errorf("savable cold boot (memfds here: %v): %q", memfdRAM, a)
	}
	if has(a, "-incoming") {
		t.Errorf("a cold boot waits for a migration: %q", a)
	}

	s.RestoreFrom = filepath.Join(t.TempDir(), "state")
	s.RestoreRAM = s.RestoreFrom + ".ram"
	a = Args(s, AccelTCG, "", "")
	i := slices.Index(a, "-incoming")
	if !has(a, "memory-backend-file,id=pc.ram,size=512M,mem-path="+s.RestoreRAM+",share=off") ||
		!has(a, "q35,memory-backend=pc.ram") || i < 0 || a[i+1] != "defer" {
		t.Errorf("restore from a RAM file: %q", a)
	}

	s.RestoreRAM = ""
	a = Args(s, AccelTCG, "", "")
	if i := slices.Index(a, "-incoming"); i < 0 || a[i+1] != "fd:5" || strings.Contains(strings.Join(a, " "), "memory-backend") {
		t.Errorf("restore from a stream: %q", a)
	}

	s.RestoreFrom = ""
	if a := Args(s, AccelTCG, "microvm", ""); strings.Contains(strings.Join(a, " "), "memory-backend") {
		t.Errorf("microvm: %q", a)
	}
	s.Arch = ArchARM64
	if a := Args(s, AccelTCG, "", ""); strings.Contains(strings.Join(a, " "), "memory-backend") {
		t.Errorf("arm64: %q", a)
	}
}

// TestWriteRAMFile: the copy has the source's bytes, its zero pages as
// holes, and no temporary file is left.
func TestWriteRAMFile(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("memfds are Linux's")
	}
	const size = 8 << 20
	src, err := newRAMFile(size)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	want := make([]byte, size)
	// Data at the start, a lone page in the middle, the last bytes.
	for _, r := range [][2]int{{0, 3*ramPage + 10}, {5 << 20, 5<<20 + 1}, {size - 100, size}} {
		for i := r[0]; i < r[1]; i++ {
			want[i] = byte(i%251 + 1)
		}
	}
	if _, err := src.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "state.ram")
	if err := writeRAMFile(context.Background(), src, dst); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("RAM file differs from the memfd (%v)", err)
	}
	fi, _ := os.Stat(dst)
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 1<<20 {
		t.Errorf("%d bytes allocated for 6 pages of data: the zero pages were written", blocks)
	}
	if left, _ := filepath.Glob(dst + ".tmp"); len(left) > 0 {
		t.Errorf("left %v", left)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := writeRAMFile(ctx, src, dst+"2"); err == nil {
		t.Error("a cancelled copy succeeded")
	}
	if _, err := os.Stat(dst + "2.tmp"); !os.IsNotExist(err) {
		t.Errorf("a cancelled copy left its temporary file: %v", err)
	}
}
