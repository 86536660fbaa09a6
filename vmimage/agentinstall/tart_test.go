package agentinstall

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// jobPlist is a launchd job's plist with the given keys.
func jobPlist(label, program string, args ...string) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n" + `<plist version="1.0"><dict><key>Label</key><string>` + label + `</string>`)
	if program != "" {
		b.WriteString(`<key>Program</key><string>` + program + `</string>`)
	}
	if len(args) > 0 {
		b.WriteString(`<key>ProgramArguments</key><array>`)
		for _, a := range args {
			b.WriteString(`<string>` + a + `</string>`)
		}
		b.WriteString(`</array>`)
	}
	b.WriteString(`<key>RunAtLoad</key><true/></dict></plist>` + "\n")
	return b.String()
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A Tart image's guest agent jobs are moved out of launchd's
// directories, and only they.
func TestInstallDisablesTartAgent(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	mnt := t.TempDir()
	host := t.TempDir()
	hostPlist := filepath.Join(host, "host.plist")
	writeFiles(t, host, map[string]string{"host.plist": jobPlist("org.cirruslabs.tart-guest-host", "/opt/homebrew/bin/tart-guest-agent")})
	writeFiles(t, mnt, map[string]string{
		// As Tart's image templates install them.
		"Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist": jobPlist("org.cirruslabs.tart-guest-daemon", "/opt/homebrew/bin/tart-guest-agent", "--run-daemon"),
		"Library/LaunchAgents/org.cirruslabs.tart-guest-agent.plist":   jobPlist("org.cirruslabs.tart-guest-agent", "/opt/homebrew/bin/tart-guest-agent", "--run-agent"),
		// Another name, the same program (argv[0], no Program key).
		"Library/LaunchDaemons/com.example.tga.plist": jobPlist("com.example.tga", "", "/usr/local/bin/tart-guest-agent", "--run-daemon"),
		// Not Tart's: stays.
		"Library/LaunchDaemons/com.example.sshd.plist":    jobPlist("com.example.sshd", "/usr/sbin/sshd"),
		"Library/LaunchDaemons/com.example.garbage.plist": "not a plist \x00\xff",
		"Library/LaunchAgents/com.example.agent.plist":    jobPlist("com.example.agent", "", "/usr/bin/true", "tart-guest-agent"),
		// Tart's by name though unreadable.
		"Library/LaunchAgents/org.cirruslabs.tart-guest-agent-old.plist": "\x00",
		// A job's label with a newline is not printed as the label.
		"Library/LaunchDaemons/com.example.nl.plist": jobPlist("evil\nlabel", "/bin/tart-guest-agent"),
	})
	// Large files are judged by name only (and not read).
	big := filepath.Join(mnt, "Library/LaunchDaemons/com.example.big.plist")
	if err := os.WriteFile(big, make([]byte, maxJobPlist+1), 0o644); err != nil {
		t.Fatal(err)
	}
	// A symlink to a host file: the link is moved, the host file is not
	// read as the guest's job nor touched.
	if err := os.Symlink(hostPlist, filepath.Join(mnt, "Library/LaunchDaemons/com.example.link.plist")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostPlist, filepath.Join(mnt, "Library/LaunchDaemons/org.cirruslabs.tart-guest-link.plist")); err != nil {
		t.Fatal(err)
	}
	before := tree(t, host)

	ft := &fakeTools{t: t, attach: "hdiutil-attach-containers.plist"}
	in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
	res, err := in.Install(context.Background(), "disk.img", agent)
	if err != nil {
		t.Fatal(err)
	}
	if res.Device != "/dev/disk4" || res.Volume != "disk6s4" {
		t.Errorf("result %+v", res)
	}
	if last := ft.calls[len(ft.calls)-1]; last != "hdiutil detach /dev/disk4" {
		t.Errorf("detached with %q", last)
	}
	d, a := "/"+DisabledDir+"/LaunchDaemons/", "/"+DisabledDir+"/LaunchAgents/"
	want := []DisabledJob{
		{"com.example.nl", "/Library/LaunchDaemons/com.example.nl.plist", d + "com.example.nl.plist"},
		{"com.example.tga", "/Library/LaunchDaemons/com.example.tga.plist", d + "com.example.tga.plist"},
		{"org.cirruslabs.tart-guest-daemon", "/Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist", d + "org.cirruslabs.tart-guest-daemon.plist"},
		{"org.cirruslabs.tart-guest-link", "/Library/LaunchDaemons/org.cirruslabs.tart-guest-link.plist", d + "org.cirruslabs.tart-guest-link.plist"},
		{"org.cirruslabs.tart-guest-agent-old", "/Library/LaunchAgents/org.cirruslabs.tart-guest-agent-old.plist", a + "org.cirruslabs.tart-guest-agent-old.plist"},
		{"org.cirruslabs.tart-guest-agent", "/Library/LaunchAgents/org.cirruslabs.tart-guest-agent.plist", a + "org.cirruslabs.tart-guest-agent.plist"},
	}
	if !reflect.DeepEqual(res.Disabled, want) {
		t.Errorf("disabled:\n%+v\nwant:\n%+v", res.Disabled, want)
	}
	for _, j := range want {
		if _, err := os.Lstat(filepath.Join(mnt, j.From)); !os.IsNotExist(err) {
			t.Errorf("%s is still there: %v", j.From, err)
		}
		if _, err := os.Lstat(filepath.Join(mnt, j.To)); err != nil {
			t.Errorf("%s: %v", j.To, err)
		}
	}
	for _, rel := range []string{"Library/LaunchDaemons/com.example.sshd.plist", "Library/LaunchDaemons/com.example.garbage.plist", "Library/LaunchDaemons/com.example.big.plist", "Library/LaunchDaemons/com.example.link.plist", "Library/LaunchAgents/com.example.agent.plist", PlistPath} {
		if _, err := os.Lstat(filepath.Join(mnt, rel)); err != nil {
			t.Errorf("%s was moved: %v", rel, err)
		}
	}
	if l, err := os.Readlink(filepath.Join(mnt, d, "org.cirruslabs.tart-guest-link.plist")); err != nil || l != hostPlist {
		t.Errorf("the symlink was not moved as a link: %q %v", l, err)
	}
	sameTree(t, before, tree(t, host), "host")

	// A second run finds nothing more to disable.
	ft = &fakeTools{t: t}
	in.Run = ft.run
	if res, err := in.Install(context.Background(), "disk.img", agent); err != nil || len(res.Disabled) != 0 {
		t.Errorf("second run: %+v %v", res, err)
	}
}

func TestInstallKeepTartAgent(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	mnt := t.TempDir()
	job := "Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist"
	writeFiles(t, mnt, map[string]string{job: jobPlist("org.cirruslabs.tart-guest-daemon", "/opt/homebrew/bin/tart-guest-agent")})
	ft := &fakeTools{t: t}
	in := &Installer{Run: ft.run, MountDir: mnt, KeepTartAgent: true, Chown: func(int, int, int) error { return nil }}
	res, err := in.Install(context.Background(), "disk.img", agent)
	if err != nil || len(res.Disabled) != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(mnt, job)); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "Library/macvz")); !os.IsNotExist(err) {
		t.Errorf("made %s: %v", DisabledDir, err)
	}
}

// A launchd directory that is a symlink is refused, not followed onto
// the host; the image is still detached.
func TestDisableTartAgentSymlinkedDir(t *testing.T) {
	agent := machO(t, cpuArm64, mhExec)
	mnt := t.TempDir()
	host := t.TempDir()
	writeFiles(t, host, map[string]string{"org.cirruslabs.tart-guest-agent.plist": jobPlist("org.cirruslabs.tart-guest-agent", "/opt/homebrew/bin/tart-guest-agent")})
	os.MkdirAll(filepath.Join(mnt, "Library"), 0o755)
	if err := os.Symlink(host, filepath.Join(mnt, "Library/LaunchAgents")); err != nil {
		t.Fatal(err)
	}
	before := tree(t, host)
	ft := &fakeTools{t: t}
	in := &Installer{Run: ft.run, MountDir: mnt, Chown: func(int, int, int) error { return nil }}
	_, err := in.Install(context.Background(), "disk.img", agent)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/Library/LaunchAgents in the guest's volume is a symbolic link") {
		t.Errorf("%v; want the symlink refused", err)
	}
	sameTree(t, before, tree(t, host), "host")
	if last := ft.calls[len(ft.calls)-1]; last != "hdiutil detach /dev/disk4" {
		t.Errorf("last call %q", last)
	}
}
