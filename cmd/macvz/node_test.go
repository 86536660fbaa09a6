package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestPrintCRILog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubelet.log")
	log := "2026-12-05T06:00:00.000000001Z stderr F I1205 kubelet started\n" +
		"2026-12-05T06:00:01.000000001Z stderr P first half, \n" +
		"2026-12-05T06:00:01.000000002Z stderr F second half\n" +
		"not a CRI line\n" +
		"2026-12-05T06:00:02.000000001Z stdout F \n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printCRILog(&out, path, false); err != nil {
		t.Fatal(err)
	}
	want := "I1205 kubelet started\nfirst half, second half\nnot a CRI line\n\n"
	if out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}
}
