// Package atomicfile writes a file so that a reader sees either the old
// contents or the new, never a part: exit records, pid files, the shim's
// spec and config, the guest's resolv.conf and hosts. A crash leaves at
// worst a stray temporary file next to it, never a truncated file.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to a new temporary file in path's directory
// (mode perm, synced to disk), then renames it over path.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	// CreateTemp made it 0600; the umask does not apply to Chmod.
	if err = tmp.Chmod(perm); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
