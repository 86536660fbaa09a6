package agent

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSubpathIn(t *testing.T) {
	for sub, want := range map[string]string{"vol/a": "/share/vol/a", "./x/../y": "/share/y", "..": "", "../etc": "", "/etc": "", "a/../../b": ""} {
		got, err := subpathIn("/share", sub)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("subpathIn(%q) = %q, %v", sub, got, err)
		}
	}
}

func TestClearLinkTarget(t *testing.T) {
	dir := t.TempDir()
	empty, full, link, file := filepath.Join(dir, "empty"), filepath.Join(dir, "full"), filepath.Join(dir, "link"), filepath.Join(dir, "file")
	os.Mkdir(empty, 0o755)
	os.MkdirAll(filepath.Join(full, "x"), 0o755)
	os.Symlink("/nowhere", link)
	os.WriteFile(file, nil, 0o644)
	for _, p := range []string{empty, link, filepath.Join(dir, "absent")} {
		if err := clearLinkTarget(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there", p)
		}
	}
	for _, p := range []string{full, file} {
		if err := clearLinkTarget(p); err == nil {
			t.Errorf("%s: replaced", p)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}
