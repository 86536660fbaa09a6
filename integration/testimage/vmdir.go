package testimage

import (
	"os"
	"path/filepath"

	"github.com/macvz/macvz/vmimage"
)

// VMDir is a VM directory's files, as Tart (~/.tart/vms/NAME) or
// macOS-vz-kubelet keep a VM: config.json, a sparse disk.img of
// DiskSize holding Extents at their offsets (holes elsewhere), and other
// small files (nvram.bin, aux.img).
type VMDir struct {
	Config   []byte
	DiskSize int64
	Extents  map[int64][]byte
	Files    map[string][]byte
}

// TartDir is a Tart VM directory whose config and NVRAM are those of
// the image Tart(TartOptions{Seed: seed, OS: osName}) describes.
func TartDir(seed uint64, osName string, diskSize int64, extents map[int64][]byte) (VMDir, error) {
	img, err := Tart(TartOptions{Seed: seed, OS: osName, DiskSize: 4096})
	if err != nil {
		return VMDir{}, err
	}
	v := VMDir{DiskSize: diskSize, Extents: extents, Files: map[string][]byte{}}
	for _, l := range img.Parsed().Layers {
		for _, b := range img.Blobs {
			if b.Desc.Digest != l.Digest {
				continue
			}
			switch l.MediaType {
			case vmimage.MediaTypeTartConfig:
				v.Config = b.Data
			case vmimage.MediaTypeTartNVRAM:
				v.Files[vmimage.NVRAMFile] = b.Data
			}
		}
	}
	return v, nil
}

// Write writes the directory's files into dir.
func (v VMDir) Write(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, vmimage.ConfigFile), v.Config, 0o644); err != nil {
		return err
	}
	for name, b := range v.Files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	disk, err := os.Create(filepath.Join(dir, vmimage.DiskFile))
	if err != nil {
		return err
	}
	if err := disk.Truncate(v.DiskSize); err != nil {
		disk.Close()
		return err
	}
	for off, b := range v.Extents {
		if _, err := disk.WriteAt(b, off); err != nil {
			disk.Close()
			return err
		}
	}
	return disk.Close()
}

// Disk is the whole disk's bytes.
func (v VMDir) Disk() []byte {
	b := make([]byte, v.DiskSize)
	for off, e := range v.Extents {
		copy(b[off:], e)
	}
	return b
}
