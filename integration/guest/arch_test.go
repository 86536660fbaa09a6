package guest

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestNewestKernelArch(t *testing.T) {
	names := []string{"linux-image-6.1.0-9-amd64", "linux-image-6.1.0-57-arm64", "kernel-6.1.0-12-amd64", "linux-image-6.1.0-40-arm64", "linux-image-6.1.0-99-cloud-amd64"}
	for arch, want := range map[string]string{ArchAMD64: "6.1.0-12-amd64", ArchARM64: "6.1.0-57-arm64"} {
		if got, err := newestKernel(arch, names); err != nil || got != want {
			t.Errorf("newestKernel(%s) = %q, %v; want %q", arch, got, err, want)
		}
	}
	if _, err := newestKernel(ArchARM64, []string{"linux-image-6.1.0-9-amd64"}); err == nil || !strings.Contains(err.Error(), "-NN-arm64") {
		t.Errorf("no arm64 kernel: %v", err)
	}
	if _, err := checkArch("riscv64"); err == nil {
		t.Error("checkArch(riscv64)")
	}
}

func TestCheckARM64Image(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	img := make([]byte, 128)
	copy(img[arm64ImageMagicOffset:], arm64ImageMagic)
	if err := CheckARM64Image(write("Image", img)); err != nil {
		t.Errorf("an Image header: %v", err)
	}
	gz := make([]byte, 128)
	gz[0], gz[1] = 0x1f, 0x8b
	if err := CheckARM64Image(write("Image.gz", gz)); err == nil || !strings.Contains(err.Error(), "gzip") {
		t.Errorf("gzip: %v", err)
	}
	if err := CheckARM64Image(write("short", []byte("ARM"))); err == nil {
		t.Error("a short file passed")
	}
	if err := CheckARM64Image(write("zero", make([]byte, 128))); err == nil {
		t.Error("no magic passed")
	}
}

func TestDefaultModulesFor(t *testing.T) {
	if got := DefaultModulesFor(ArchAMD64); !slices.Equal(got, DefaultModules) {
		t.Errorf("amd64: %v", got)
	}
	arm := DefaultModulesFor(ArchARM64)
	if i := slices.Index(arm, "gpio_keys"); i < 0 || arm[i-1] != "button" || len(arm) != len(DefaultModules)+1+len(VsockModules) {
		t.Errorf("arm64: %v", arm)
	}
	if i := slices.Index(arm, "virtio_console"); i < 0 || !slices.Equal(arm[i+1:i+1+len(VsockModules)], VsockModules) {
		t.Errorf("arm64 without the vsock modules after virtio_console: %v", arm)
	}
	if slices.Contains(DefaultModules, "gpio_keys") {
		t.Error("DefaultModules changed")
	}
}
