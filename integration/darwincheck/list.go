package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// pkg is the part of `go list -json` output the checker uses.
type pkg struct {
	ImportPath string // for test variants "p [p.test]"
	Name       string
	Dir        string
	ForTest    string
	GoFiles    []string
	CgoFiles   []string
	Imports    []string          // resolved import paths (ImportPath keys)
	ImportMap  map[string]string // source import path -> ImportPath, when they differ
	Standard   bool
	DepOnly    bool
	Module     *struct {
		Path      string
		Main      bool
		GoVersion string
	}
	Error *struct {
		Err string
	}
	DepsErrors []*struct {
		Err string
	}
}

// own reports whether p belongs to the main module (the code we check).
func (p *pkg) own() bool { return p.Module != nil && p.Module.Main }

// list runs go list for goos/goarch with cgo on and returns the packages
// in dependency order (go list -deps prints dependencies first).
func list(goos, goarch string, tests bool, patterns []string) ([]*pkg, error) {
	args := []string{"list", "-e", "-deps",
		"-json=ImportPath,Name,Dir,ForTest,GoFiles,CgoFiles,Imports,ImportMap,Standard,DepOnly,Module,Error,DepsErrors"}
	if tests {
		args = append(args, "-test")
	}
	args = append(args, patterns...)
	cmd := exec.Command("go", args...)
	// CGO_ENABLED=1 selects the cgo files (vz is all cgo); listing needs
	// no C compiler. GOFLAGS stays the caller's (-mod, -buildvcs...).
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=1", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []*pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(pkg)
		if err := dec.Decode(p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}
