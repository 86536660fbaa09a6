package agentinstall

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
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
	// attach is hdiutil attach's answer (a fixture's name), by default
	// hdiutil-attach.plist; attachOut, when set, instead.
	attach    string
	attachOut []byte
}

func (f *fakeTools) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	cl := tool + " " + strings.Join(args, " ")
	f.calls = append(f.calls, cl)
	if f.fail != "" && strings.HasPrefix(cl, f.fail) {
		return nil, errors.New("exit status 1")
	}
	switch {
	case tool == "hdiutil" && args[0] == "attach":
		if f.attachOut != nil {
			return f.attachOut, nil
		}
		if f.attach != "" {
			return fixture(f.t, f.attach), nil
		}
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
	if _, err := in.Install(context.Background(), "/vms/sonoma/disk.img", agent); err != nil {
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
		_, err := in.Install(context.Background(), "disk.img", agent)
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
	if _, err := in.Install(context.Background(), "disk.img", agent); !errors.Is(err, os.ErrPermission) {
		t.Errorf("chown failing: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(mnt, "usr/local/bin")); len(ents) != 0 {
		t.Errorf("left %v", ents)
	}
	if last := ft.calls[len(ft.calls)-1]; last != "hdiutil detach /dev/disk4" {
		t.Errorf("last call %q", last)
	}
}

// An odd hdiutil answer writes nothing; the image is detached when its
// disk is known, and the error says how to find it otherwise.
func TestInstallOddAttach(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	for name, tc := range map[string]struct {
		out    []byte
		detach string
	}{
		"two disks":  {attachPlist("/dev/disk4"+gpt, "/dev/disk4s1 Apple_APFS", "/dev/disk5"+gpt, "/dev/disk5s1 Apple_APFS"), ""},
		"not GPT":    {attachPlist("/dev/disk4 FDisk_partition_scheme", "/dev/disk4s1 DOS_FAT_32"), "hdiutil detach /dev/disk4"},
		"stray part": {attachPlist("/dev/disk4"+gpt, "/dev/disk4s2 Apple_APFS", "/dev/disk2s1 Apple_APFS"), "hdiutil detach /dev/disk4"},
	} {
		mnt := t.TempDir()
		ft := &fakeTools{t: t, attachOut: tc.out}
		in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
		_, err := in.Install(context.Background(), "disk.img", agent)
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v", name, err)
		}
		want := []string{ft.calls[0]}
		if tc.detach != "" {
			want = append(want, tc.detach)
		} else if !strings.Contains(err.Error(), "hdiutil info") {
			t.Errorf("%s: %v does not say how to find the attached image", name, err)
		}
		if !reflect.DeepEqual(ft.calls, want) {
			t.Errorf("%s: calls %q, want %q", name, ft.calls, want)
		}
		if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
			t.Errorf("%s: wrote %v", name, ents)
		}
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
	if _, err := in.Install(context.Background(), "disk.img", self); err == nil || len(ft.calls) != 0 {
		t.Errorf("wrong agent: %v, calls %q", err, ft.calls)
	}
}

func TestDataVolume(t *testing.T) {
	list := fixture(t, "diskutil-apfs-list.plist")
	for _, f := range []string{"hdiutil-attach.plist", "hdiutil-attach-containers.plist"} {
		att, err := attachedDevices(fixture(t, f))
		if err != nil || att.whole != "disk4" || !reflect.DeepEqual(att.parts, map[string]bool{"disk4s1": true, "disk4s2": true, "disk4s3": true}) {
			t.Fatalf("%s: attached %+v %v", f, att, err)
		}
		if v, err := dataVolume(list, att); err != nil || v != "disk6s4" {
			t.Errorf("%s: data volume %q %v", f, v, err)
		}
		// A disk without macOS on it (only the recovery container attached).
		only := att
		only.parts = map[string]bool{"disk4s3": true}
		if _, err := dataVolume(list, only); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: no Data volume: %v", f, err)
		}
	}
	containers, _ := attachedDevices(fixture(t, "hdiutil-attach-containers.plist"))
	if !reflect.DeepEqual(containers.containers, map[string]bool{"disk5": true, "disk6": true, "disk7": true}) {
		t.Errorf("synthesized containers %v", containers.containers)
	}
	// diskutil's container on the image is not one hdiutil listed: no
	// guess.
	other := containers
	other.containers = map[string]bool{"disk5": true, "disk7": true, "disk8": true}
	if _, err := dataVolume(list, other); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "disk6") {
		t.Errorf("container not attached: %v", err)
	}
	if _, err := attachedDevices([]byte("<plist><dict/></plist>")); err == nil {
		t.Error("nothing attached: no error")
	}
	if _, err := attachedDevices([]byte("hdiutil: attach failed")); err == nil {
		t.Error("garbage: no error")
	}
}

// attachPlist is `hdiutil attach -plist` for entities "dev hint".
func attachPlist(ents ...string) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>system-entities</key><array>`)
	for _, e := range ents {
		dev, hint, _ := strings.Cut(e, " ")
		b.WriteString("<dict><key>content-hint</key><string>" + hint + "</string><key>dev-entry</key><string>" + dev + "</string></dict>")
	}
	b.WriteString("</array></dict></plist>")
	return []byte(b.String())
}

const (
	gpt       = " GUID_partition_scheme"
	container = " " + apfsContainerHint
	volume    = " 41504653-0000-11AA-AA11-00306543ECAC"
)

func TestAttachedDevices(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ents  []string
		whole string // "" = an error
		parts []string
		err   string // in the error
	}{
		// Whatever the order and numbers, the disk with the partition
		// table is the image's; disk1 is no prefix of disk10.
		{"containers first, lower numbers", []string{"/dev/disk10" + container, "/dev/disk10s1" + volume, "/dev/disk12" + container, "/dev/disk12s4" + volume, "/dev/disk9" + gpt, "/dev/disk9s1 Apple_APFS_ISC", "/dev/disk9s2 Apple_APFS", "/dev/disk9s3 Apple_APFS_Recovery"}, "disk9", []string{"disk9s1", "disk9s2", "disk9s3"}, ""},
		{"prefix", []string{"/dev/disk1" + gpt, "/dev/disk1s1 Apple_APFS", "/dev/disk10" + container, "/dev/disk10s1" + volume, "/dev/disk11" + container}, "disk1", []string{"disk1s1"}, ""},
		{"hint cut short", []string{"/dev/disk5 EF57347C-0000-11AA-AA11-0030654", "/dev/disk5s1 41504653-0000-11AA-AA11-0030654", "/dev/disk4" + gpt, "/dev/disk4s2 Apple_APFS"}, "disk4", []string{"disk4s2"}, ""},
		{"lower case hint", []string{"/dev/disk5 ef57347c-0000-11aa-aa11-00306543ecac", "/dev/disk4" + gpt, "/dev/disk4s2 Apple_APFS"}, "disk4", []string{"disk4s2"}, ""},
		{"bare names", []string{"/dev/disk4" + gpt, "/dev/disk4s2 Apple_APFS"}, "disk4", []string{"disk4s2"}, ""},
		// Errors: never a wrong disk.
		{"two image disks", []string{"/dev/disk4" + gpt, "/dev/disk4s1 Apple_APFS", "/dev/disk5" + gpt, "/dev/disk5s1 Apple_APFS"}, "", nil, "several disks (disk4, disk5)"},
		{"hint too short", []string{"/dev/disk5 EF57347C", "/dev/disk4" + gpt, "/dev/disk4s2 Apple_APFS"}, "", nil, "several disks (disk4, disk5)"},
		{"only containers", []string{"/dev/disk5" + container, "/dev/disk5s1" + volume}, "", nil, "no disk with a partition table"},
		{"empty", nil, "", nil, "no disk with a partition table"},
		{"slice of an unlisted disk", []string{"/dev/disk4" + gpt, "/dev/disk4s1 Apple_APFS", "/dev/disk3s1 Apple_APFS"}, "disk4", nil, "disk3s1, a slice of disk3"},
		{"no partitions", []string{"/dev/disk4" + gpt}, "disk4", nil, "no partitions"},
		{"not GPT", []string{"/dev/disk4 FDisk_partition_scheme", "/dev/disk4s1 DOS_FAT_32"}, "disk4", nil, "not a GUID partition table"},
		{"not under /dev", []string{"disk4" + gpt, "/dev/disk4s1 Apple_APFS"}, "", nil, `"disk4"`},
		{"path", []string{"/dev/../dev/disk4" + gpt}, "", nil, "not a disk device"},
		{"rdisk", []string{"/dev/rdisk4" + gpt}, "", nil, "not a disk device"},
		{"odd slice", []string{"/dev/disk4" + gpt, "/dev/disk4s1s2 Apple_APFS"}, "", nil, "not a disk device"},
		{"leading zero", []string{"/dev/disk04" + gpt}, "", nil, "not a disk device"},
		{"empty entry", []string{" " + gpt}, "", nil, "not a disk device"},
		{"huge number", []string{"/dev/disk99999999999999999999" + gpt}, "", nil, "not a disk device"},
	} {
		att, err := attachedDevices(attachPlist(tc.ents...))
		if tc.err == "" {
			var parts []string
			for p := range att.parts {
				parts = append(parts, p)
			}
			sort.Strings(parts)
			if err != nil || att.whole != tc.whole || !reflect.DeepEqual(parts, tc.parts) {
				t.Errorf("%s: %+v %v; want %s %v", tc.name, att, err, tc.whole, tc.parts)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) || !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%s: %v; want a FailedPrecondition naming %q", tc.name, err, tc.err)
		}
		if att.whole != tc.whole {
			t.Errorf("%s: whole %q (to detach), want %q", tc.name, att.whole, tc.whole)
		}
	}
}

// apfsList is `diskutil apfs list -plist` with one container.
func apfsList(ref string, stores []string, vols ...string) []byte {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict><key>Containers</key><array><dict><key>ContainerReference</key><string>` + ref + `</string><key>PhysicalStores</key><array>`)
	for _, s := range stores {
		b.WriteString("<dict><key>DeviceIdentifier</key><string>" + s + "</string></dict>")
	}
	b.WriteString("</array><key>Volumes</key><array>")
	for _, v := range vols {
		dev, role, _ := strings.Cut(v, " ")
		b.WriteString("<dict><key>DeviceIdentifier</key><string>" + dev + "</string><key>Roles</key><array><string>" + role + "</string></array></dict>")
	}
	b.WriteString("</array></dict></array></dict></plist>")
	return []byte(b.String())
}

func TestDataVolumeHostile(t *testing.T) {
	att := attachment{whole: "disk4", parts: map[string]bool{"disk4s2": true}, containers: map[string]bool{"disk6": true}}
	if v, err := dataVolume(apfsList("disk6", []string{"disk4s2"}, "disk6s1 System", "disk6s4 Data"), att); err != nil || v != "disk6s4" {
		t.Errorf("plain: %q %v", v, err)
	}
	for name, list := range map[string][]byte{
		"spans a host disk":      apfsList("disk6", []string{"disk4s2", "disk0s2"}, "disk6s4 Data"),
		"volume of another disk": apfsList("disk6", []string{"disk4s2"}, "disk3s5 Data"),
		"volume is a whole disk": apfsList("disk6", []string{"disk4s2"}, "disk6 Data"),
		"odd container name":     apfsList("disk6s1", []string{"disk4s2"}, "disk6s4 Data"),
		"container not attached": apfsList("disk8", []string{"disk4s2"}, "disk8s4 Data"),
		"two Data volumes":       apfsList("disk6", []string{"disk4s2"}, "disk6s4 Data", "disk6s6 Data"),
		"no Data volume":         apfsList("disk6", []string{"disk4s2"}, "disk6s1 System"),
		"not our disk":           apfsList("disk3", []string{"disk0s2"}, "disk3s5 Data"),
		"garbage":                []byte("<plist><string>no</string></plist>"),
	} {
		if v, err := dataVolume(list, att); err == nil {
			t.Errorf("%s: %q, want an error", name, v)
		}
	}
	// Without synthesized containers from hdiutil (older systems), the
	// physical store decides.
	att.containers = map[string]bool{}
	if v, err := dataVolume(apfsList("disk8", []string{"disk4s2"}, "disk8s4 Data"), att); err != nil || v != "disk8s4" {
		t.Errorf("no containers listed: %q %v", v, err)
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
