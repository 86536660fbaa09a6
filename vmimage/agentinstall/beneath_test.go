package agentinstall

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// tree lists every path under dir with its kind and size, for "nothing
// changed here" checks.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := d.Info()
		out[p] = fmt.Sprint(fi.Mode(), " ", fi.Size())
		return nil
	})
	return out
}

func sameTree(t *testing.T, before, after map[string]string, what string) {
	t.Helper()
	for p, v := range after {
		if before[p] != v {
			t.Errorf("%s: %s appeared or changed (%s)", what, p, v)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s: %s vanished", what, p)
		}
	}
}

// An image whose Data volume has a symlink on the way to the files the
// installer writes is refused, and nothing is written where the link
// points (the host, when the volume is mounted on a Mac).
func TestInstallRefusesSymlinks(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	for _, link := range []string{"usr", "usr/local", "usr/local/bin", "Library", "Library/LaunchDaemons"} {
		for _, kind := range []string{"absolute", "relative", "dangling", "inside"} {
			t.Run(strings.ReplaceAll(link, "/", "_")+"/"+kind, func(t *testing.T) {
				base := t.TempDir()
				mnt, host := filepath.Join(base, "mnt"), filepath.Join(base, "host")
				// The host side has every directory the installer would
				// write to, so that following the link would succeed.
				for _, d := range []string{"usr/local/bin", "Library/LaunchDaemons", "local/bin", "bin", "LaunchDaemons"} {
					os.MkdirAll(filepath.Join(host, d), 0o755)
				}
				if err := os.MkdirAll(filepath.Join(mnt, filepath.Dir(link)), 0o755); err != nil {
					t.Fatal(err)
				}
				var target string
				switch kind {
				case "absolute":
					target = filepath.Join(host, filepath.Base(link))
					if link == "usr" || link == "Library" {
						target = filepath.Join(host, link)
					}
				case "relative":
					rel, err := filepath.Rel(filepath.Join(mnt, filepath.Dir(link)), host)
					if err != nil {
						t.Fatal(err)
					}
					target = rel
				case "dangling":
					target = filepath.Join(host, "nothing-here")
				case "inside":
					os.MkdirAll(filepath.Join(mnt, "elsewhere"), 0o755)
					target = filepath.Join(mnt, "elsewhere")
				}
				if err := os.Symlink(target, filepath.Join(mnt, link)); err != nil {
					t.Fatal(err)
				}
				before := tree(t, host)
				ft := &fakeTools{t: t}
				in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
				_, err := in.Install(context.Background(), "disk.img", agent)
				t.Log(err)
				if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/"+link+" in the guest's volume is a symbolic link") {
					t.Fatalf("%v; want InvalidArgument naming /%s as a symlink", err, link)
				}
				sameTree(t, before, tree(t, host), "host")
				if kind == "inside" {
					if ents, _ := os.ReadDir(filepath.Join(mnt, "elsewhere")); len(ents) != 0 {
						t.Errorf("wrote %v through the link", ents)
					}
				}
				if last := ft.calls[len(ft.calls)-1]; last != "hdiutil detach /dev/disk4" {
					t.Errorf("last call %q: not unmounted and detached", last)
				}
			})
		}
	}
}

// A symlink at a file's own name is replaced, not written through.
func TestInstallReplacesSymlinkedFiles(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	base := t.TempDir()
	mnt, host := filepath.Join(base, "mnt"), filepath.Join(base, "host")
	os.MkdirAll(host, 0o755)
	for _, rel := range []string{AgentPath, PlistPath} {
		os.MkdirAll(filepath.Join(mnt, filepath.Dir(rel)), 0o755)
		hostFile := filepath.Join(host, filepath.Base(rel))
		if err := os.WriteFile(hostFile, []byte("the host's own file"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(hostFile, filepath.Join(mnt, rel)); err != nil {
			t.Fatal(err)
		}
	}
	before := tree(t, host)
	in := &Installer{Run: (&fakeTools{t: t}).run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
	if _, err := in.Install(context.Background(), "disk.img", agent); err != nil {
		t.Fatal(err)
	}
	sameTree(t, before, tree(t, host), "host")
	for _, rel := range []string{AgentPath, PlistPath} {
		fi, err := os.Lstat(filepath.Join(mnt, rel))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s: %v %v, want a regular file", rel, fi.Mode(), err)
		}
		if b, _ := os.ReadFile(filepath.Join(host, filepath.Base(rel))); string(b) != "the host's own file" {
			t.Errorf("the host's %s was written: %q", filepath.Base(rel), b)
		}
	}
}

func TestInstallRefusesNonDirectories(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	for _, file := range []string{"usr/local", "Library/LaunchDaemons"} {
		mnt := t.TempDir()
		os.MkdirAll(filepath.Join(mnt, filepath.Dir(file)), 0o755)
		os.WriteFile(filepath.Join(mnt, file), []byte("x"), 0o644)
		in := &Installer{Run: (&fakeTools{t: t}).run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
		_, err := in.Install(context.Background(), "disk.img", agent)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/"+file+" in the guest's volume is not a directory") {
			t.Errorf("%s a file: %v", file, err)
		}
	}
}

func TestWriteBeneathRefusesBadPaths(t *testing.T) {
	root, err := openRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	for _, rel := range []string{"", "/etc/passwd", "a/../../b", "a//b", "./a", "a/"} {
		err := writeBeneath(root, rel, func(io.Writer) error { return nil }, 0o644, func(int, int, int) error { return nil })
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", rel, err)
		}
	}
}

// A failing fill leaves no temporary file and no half-written file.
func TestWriteBeneathFailure(t *testing.T) {
	dir := t.TempDir()
	root, err := openRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	err = writeBeneath(root, "a/b", func(w io.Writer) error {
		w.Write([]byte("half"))
		return io.ErrUnexpectedEOF
	}, 0o644, func(int, int, int) error { return nil })
	if err == nil {
		t.Fatal("no error")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "a")); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
}
