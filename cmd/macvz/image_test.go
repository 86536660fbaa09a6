package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/macvz/macvz/vmimage/agentinstall"
)

func TestPrintInstall(t *testing.T) {
	res := &agentinstall.Result{Device: "/dev/disk4", Volume: "disk6s4", Disabled: []agentinstall.DisabledJob{{
		Label: "org.cirruslabs.tart-guest-daemon",
		From:  "/Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist",
		To:    "/Library/macvz/disabled-launchd-jobs/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist",
	}}}
	var b bytes.Buffer
	printInstall(&b, "/vms/sonoma/disk.img", "bin/darwin-arm64/macvz-agent", false, res)
	want := "installed bin/darwin-arm64/macvz-agent into /vms/sonoma/disk.img (Data volume disk6s4 of /dev/disk4): /usr/local/bin/macvz-agent, /Library/LaunchDaemons/io.macvz.agent.plist\n" +
		"disabled tart-guest-agent's launchd job org.cirruslabs.tart-guest-daemon: moved /Library/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist to /Library/macvz/disabled-launchd-jobs/LaunchDaemons/org.cirruslabs.tart-guest-daemon.plist\n"
	if b.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	printInstall(&b, "d.img", "a", false, &agentinstall.Result{})
	if !strings.Contains(b.String(), "no tart-guest-agent launchd job found") {
		t.Errorf("nothing disabled: %s", b.String())
	}
	b.Reset()
	printInstall(&b, "d.img", "a", true, &agentinstall.Result{})
	if !strings.Contains(b.String(), "--keep-tart-agent") {
		t.Errorf("kept: %s", b.String())
	}
}
