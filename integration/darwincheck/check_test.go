package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A scratch module: the checker must report the darwin-only type errors
// (in code, in a cgo file and in a test), and nothing from linux-only files.
func TestChecksDarwinFilesOnly(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":           "module example.com/scratch\n\ngo 1.26\n",
		"ok.go":            "package scratch\n\nfunc Shared() int { return 1 }\n",
		"bad_darwin.go":    "package scratch\n\nvar _ string = Shared()\n",
		"bad_linux.go":     "package scratch\n\nvar _ bool = Shared()\n",
		"cgo_darwin.go":    "package scratch\n\n// static int two(void) { return 2; }\nimport \"C\"\n\nfunc Two() int { return int(C.two()) }\n\nvar _ = Two(1)\n",
		"x_darwin_test.go": "package scratch\n\nimport \"testing\"\n\nfunc TestX(t *testing.T) { t.Log(Shared() + \"\") }\n",
	}
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	pkgs, err := list("darwin", "arm64", true, []string{"./..."})
	if err != nil {
		t.Fatal(err)
	}
	c := newChecker(pkgs, "arm64", false)
	c.run(2)
	errs, _ := c.report()
	got := strings.Join(errs, "\n")
	for _, want := range []string{"bad_darwin.go:3:16", "cgo_darwin.go:8:13: too many arguments", "x_darwin_test.go:5:"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "bad_linux.go") {
		t.Errorf("reported a linux-only file:\n%s", got)
	}
	if len(errs) != 3 {
		t.Errorf("%d errors, want 3:\n%s", len(errs), got)
	}
}

func TestKnownFalsePositive(t *testing.T) {
	const msg = "cannot convert objc.GetUUID() (value with invalid type) to type *char"
	if !knownFalsePositive("/root/go/pkg/mod/github.com/!code-!hex/vz/v3@v3.7.1/virtualization.go", msg) {
		t.Error("vz's false positive not filtered")
	}
	if knownFalsePositive("/work/main/runtime/vz/virtualization.go", msg) {
		t.Error("filtered an error in our own code")
	}
	if knownFalsePositive("/root/go/pkg/mod/github.com/!code-!hex/vz/v3@v3.7.1/virtualization.go", "undefined: x") {
		t.Error("filtered a different error")
	}
}
