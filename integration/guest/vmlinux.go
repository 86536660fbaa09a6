package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// xzMagic starts an XZ stream (the .xz file format's stream header magic).
var xzMagic = []byte("\xfd7zXZ\x00")

// ExtractVmlinux writes the uncompressed ELF kernel held in vmlinuz (a
// bzImage whose payload is XZ-compressed, as Debian's amd64 kernels are)
// to out. The method is that of the kernel's scripts/extract-vmlinux: try
// each offset where the XZ magic occurs, decompress one stream from there
// (the bytes after it are not XZ), and keep the first result that is an
// ELF file. Decompression runs `xz` (xz-utils).
func ExtractVmlinux(ctx context.Context, vmlinuz, out string) error {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		return fmt.Errorf("extracting vmlinux: %w (apt-get install xz-utils)", err)
	}
	tmp := out + ".tmp"
	defer os.Remove(tmp)
	tried := 0
	for off := 0; ; {
		i := bytes.Index(img[off:], xzMagic)
		if i < 0 {
			break
		}
		off += i
		tried++
		f, err := os.Create(tmp)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, xz, "--decompress", "--stdout", "--single-stream")
		cmd.Stdin = bytes.NewReader(img[off:])
		cmd.Stdout = f
		runErr := cmd.Run()
		if err := f.Close(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if runErr == nil && isELF(tmp) {
			return os.Rename(tmp, out)
		}
		off += len(xzMagic)
	}
	if tried == 0 {
		return fmt.Errorf("%s: no XZ-compressed payload (magic %q not found)", vmlinuz, xzMagic)
	}
	return fmt.Errorf("%s: none of its %d XZ streams decompresses to an ELF kernel", vmlinuz, tried)
}

func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [4]byte
	_, err = f.ReadAt(m[:], 0)
	return err == nil && string(m[:]) == elf.ELFMAG
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/
// elfnote.h): the 32-bit physical entry point of the PVH boot protocol.
// QEMU's -kernel loads an ELF kernel with PVH only when it has this note.
const xenElfnotePhys32Entry = 18

// CheckPVH reports an error unless path is an x86_64 ELF kernel with the
// Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY, i.e. one QEMU boots with PVH.
func CheckPVH(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not an ELF kernel: %w", filepath.Base(path), err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s: ELF machine %v, want EM_X86_64", filepath.Base(path), f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return fmt.Errorf("%s: reading notes: %w", filepath.Base(path), err)
		}
		found, err := hasNote(b, f.ByteOrder, "Xen", xenElfnotePhys32Entry)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		if found {
			return nil
		}
	}
	return fmt.Errorf("%s: no Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY: the kernel cannot boot with PVH (CONFIG_PVH)", filepath.Base(path))
}

// hasNote walks ELF notes (namesz, descsz, type, then the name and the
// descriptor, each padded to 4 bytes) looking for name/typ.
func hasNote(b []byte, bo binary.ByteOrder, name string, typ uint32) (bool, error) {
	align := func(n uint32) int { return int((n + 3) &^ 3) }
	for len(b) > 0 {
		if len(b) < 12 {
			return false, errors.New("truncated ELF note")
		}
		namesz, descsz, t := bo.Uint32(b), bo.Uint32(b[4:]), bo.Uint32(b[8:])
		b = b[12:]
		if align(namesz)+align(descsz) > len(b) {
			return false, errors.New("truncated ELF note")
		}
		n := string(bytes.TrimRight(b[:namesz], "\x00"))
		if n == name && t == typ {
			return true, nil
		}
		b = b[align(namesz)+align(descsz):]
	}
	return false, nil
}

// arm64ImageMagic is the magic of the arm64 kernel's Image header (the
// kernel's Documentation/arch/arm64/booting.rst): the 64-byte header
// has it at offset 56.
const (
	arm64ImageMagic       = "ARM\x64"
	arm64ImageMagicOffset = 56
)

// CheckARM64Image reports an error unless path is an uncompressed arm64
// kernel Image, which QEMU's -kernel and Virtualization.framework's
// VZLinuxBootLoader boot directly.
func CheckARM64Image(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var h [arm64ImageMagicOffset + 4]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return fmt.Errorf("%s: reading the Image header: %w", filepath.Base(path), err)
	}
	if string(h[arm64ImageMagicOffset:]) != arm64ImageMagic {
		if h[0] == 0x1f && h[1] == 0x8b {
			return fmt.Errorf("%s: a gzip-compressed kernel; want the uncompressed arm64 Image", filepath.Base(path))
		}
		return fmt.Errorf("%s: no arm64 Image magic %q at offset %d", filepath.Base(path), arm64ImageMagic, arm64ImageMagicOffset)
	}
	return nil
}
