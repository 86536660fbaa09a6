package agentinstall

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"howett.net/plist"
)

// machO writes the smallest Mach-O file debug/macho accepts: a 64-bit
// header of the given CPU and file type without load commands.
func machO(t *testing.T, cpu, typ uint32) string {
	t.Helper()
	var b bytes.Buffer
	for _, v := range []uint32{0xfeedfacf, cpu, 0, typ, 0, 0, 0, 0} {
		binary.Write(&b, binary.LittleEndian, v)
	}
	p := filepath.Join(t.TempDir(), "macvz-agent")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	cpuArm64 = 0x0100000c
	cpuAmd64 = 0x01000007
	mhExec   = 2
	mhDylib  = 6
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeTools answers like hdiutil and diskutil on a Mac with the VM disk
// of the fixtures, recording every call; fail makes the call whose
// command line starts with it fail.
type fakeTools struct {
	t     *testing.T
	calls []string
	fail  string
}

func (f *fakeTools) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cl := tool + " " + strings.Join(args, " ")
	f.calls = append(f.calls, cl)
	if f.fail != "" && strings.HasPrefix(cl, f.fail) {
		return nil, errors.New("exit status 1")
	}
	switch {
	case tool == "hdiutil" && args[0] == "attach":
		return fixture(f.t, "hdiutil-attach.plist"), nil
	case tool == "diskutil" && args[0] == "apfs":
		return fixture(f.t, "diskutil-apfs-list.plist"), nil
	}
	return nil, nil
}

func TestInstall(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	mnt := t.TempDir()
	ft := &fakeTools{t: t}
	owners := map[uint64][2]int{} // by inode
	in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(fd, uid, gid int) error {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		owners[uint64(st.Ino)] = [2]int{uid, gid}
		return nil
	}}
	if err := in.Install(context.Background(), "/vms/sonoma/disk.img", agent); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"hdiutil attach -nomount -noverify -noautofsck -imagekey diskimage-class=CRawDiskImage -plist /vms/sonoma/disk.img",
		"diskutil apfs list -plist",
		"diskutil mount -mountOptions nosuid,nodev -mountPoint " + mnt + " disk6s4", // the VM's Data volume, not the host's
		"diskutil enableOwnership " + mnt,
		"diskutil unmount " + mnt,
		"hdiutil detach /dev/disk4",
	}
	if !reflect.DeepEqual(ft.calls, want) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(ft.calls, "\n"), strings.Join(want, "\n"))
	}
	for rel, mode := range map[string]os.FileMode{AgentPath: 0o755, PlistPath: 0o644} {
		fi, err := os.Stat(filepath.Join(mnt, rel))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v", rel, fi.Mode(), err)
		}
	}
	// Both files and the directories made for them (all of them, in an
	// empty volume) are root:wheel.
	made := []string{AgentPath, PlistPath, "usr", "usr/local", "usr/local/bin", "Library", "Library/LaunchDaemons"}
	for _, rel := range made {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mnt, rel), &st); err != nil {
			t.Fatal(err)
		}
		if owners[uint64(st.Ino)] != [2]int{0, 0} {
			t.Errorf("%s was not given to root:wheel", rel)
		}
		if rel == "usr" && st.Mode&0o777 != 0o755 {
			t.Errorf("%s: mode %o", rel, st.Mode&0o777)
		}
	}
	if len(owners) != len(made) {
		t.Errorf("%d chowns for the %d files and directories made", len(owners), len(made))
	}
	got, _ := os.ReadFile(filepath.Join(mnt, AgentPath))
	src, _ := os.ReadFile(agent)
	if !bytes.Equal(got, src) {
		t.Error("the agent was not copied as it is")
	}
	if ents, _ := os.ReadDir(filepath.Join(mnt, "usr/local/bin")); len(ents) != 1 {
		t.Errorf("left temporary files: %v", ents)
	}

	// The launchd job starts the installed agent where the host dials it.
	var job struct {
		Label            string
		ProgramArguments []string
		RunAtLoad        bool
		KeepAlive        bool
	}
	if _, err := plist.Unmarshal(LaunchdPlist, &job); err != nil {
		t.Fatal(err)
	}
	if job.Label != "io.macvz.agent" || !job.RunAtLoad || !job.KeepAlive ||
		!reflect.DeepEqual(job.ProgramArguments, []string{"/" + AgentPath, "--listen", "vsock:1024", "--system"}) {
		t.Errorf("launchd job %+v", job)
	}
	if filepath.Base(PlistPath) != job.Label+".plist" {
		t.Errorf("the job's file is named %s, launchd expects its label", PlistPath)
	}
}

// A failure after attaching still unmounts and detaches.
func TestInstallCleansUp(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	for fail, want := range map[string][]string{
		"diskutil mount":           {"diskutil mount", "hdiutil detach /dev/disk4"},
		"diskutil enableOwnership": {"diskutil enableOwnership", "diskutil unmount", "hdiutil detach /dev/disk4"},
		"hdiutil attach":           {"hdiutil attach"},
	} {
		ft := &fakeTools{t: t, fail: fail}
		in := &Installer{Run: ft.run, MountDir: t.TempDir(), Chown: func(int, int, int) error { return nil }}
		err := in.Install(context.Background(), "disk.img", agent)
		if err == nil {
			t.Errorf("%s failing: no error", fail)
			continue
		}
		tail := ft.calls[len(ft.calls)-len(want):]
		for i := range want {
			if !strings.HasPrefix(tail[i], want[i]) {
				t.Errorf("%s failing: calls end %q, want %q", fail, tail, want)
				break
			}
		}
	}
	// A chown failure (not root) leaves no partial file.
	mnt := t.TempDir()
	ft := &fakeTools{t: t}
	in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(int, int, int) error { return os.ErrPermission }}
	if err := os.MkdirAll(filepath.Join(mnt, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := in.Install(context.Background(), "disk.img", agent); !errors.Is(err, os.ErrPermission) {
		t.Errorf("chown failing: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(mnt, "usr/local/bin")); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
	if last := ft.calls[len(ft.calls)-1]; last != "hdiutil detach /dev/disk4" {
		t.Errorf("last call %q", last)
	}
}

func TestCheckAgent(t *testing.T) {
	if err := CheckAgent(machO(t, cpuArm64, mhExec)); err != nil {
		t.Error(err)
	}
	self, _ := os.Executable() // an ELF file here
	for name, p := range map[string]string{
		"linux binary": self,
		"amd64":        machO(t, cpuAmd64, mhExec),
		"dylib":        machO(t, cpuArm64, mhDylib),
		"missing":      filepath.Join(t.TempDir(), "nope"),
	} {
		if err := CheckAgent(p); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// Nothing is attached for a wrong agent.
	ft := &fakeTools{t: t}
	in := &Installer{Run: ft.run, Chown: func(int, int, int) error { return nil }}
	if err := in.Install(context.Background(), "disk.img", self); err == nil || len(ft.calls) != 0 {
		t.Errorf("wrong agent: %v, calls %q", err, ft.calls)
	}
}

func TestDataVolume(t *testing.T) {
	whole, parts, err := attachedDevices(fixture(t, "hdiutil-attach.plist"))
	if err != nil || whole != "/dev/disk4" || !reflect.DeepEqual(parts, map[string]bool{"disk4s1": true, "disk4s2": true, "disk4s3": true}) {
		t.Fatalf("attached %s %v %v", whole, parts, err)
	}
	list := fixture(t, "diskutil-apfs-list.plist")
	if v, err := dataVolume(list, parts); err != nil || v != "disk6s4" {
		t.Errorf("data volume %q %v", v, err)
	}
	// A disk without macOS on it (only the recovery container attached).
	if _, err := dataVolume(list, map[string]bool{"disk4s3": true}); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no Data volume: %v", err)
	}
	if _, _, err := attachedDevices([]byte("<plist><dict/></plist>")); err == nil {
		t.Error("nothing attached: no error")
	}
	if _, _, err := attachedDevices([]byte("hdiutil: attach failed")); err == nil {
		t.Error("garbage: no error")
	}
}

func TestDiskImage(t *testing.T) {
	vm := t.TempDir()
	if _, err := DiskImage(vm); !errdefs.IsNotFound(err) {
		t.Errorf("VM dir without disk: %v", err)
	}
	os.WriteFile(filepath.Join(vm, "disk.img"), nil, 0o644)
	if d, err := DiskImage(vm); err != nil || d != filepath.Join(vm, "disk.img") {
		t.Errorf("VM dir: %q %v", d, err)
	}
	if d, err := DiskImage(filepath.Join(vm, "disk.img")); err != nil || d != filepath.Join(vm, "disk.img") {
		t.Errorf("file: %q %v", d, err)
	}
	if _, err := DiskImage(filepath.Join(vm, "nope")); !errdefs.IsNotFound(err) {
		t.Errorf("missing: %v", err)
	}
}
