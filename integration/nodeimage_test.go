//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
	"github.com/macvz/macvz/integration/testutil"
	"github.com/macvz/macvz/runtime/guestfwd"
	"github.com/macvz/macvz/runtime/shim"
)

// nodeKubeletConfig is the KubeletConfiguration the test starts kubelet
// with inside the node image: standalone (no API server), cgroupfs with
// QoS and pod cgroups in the node VM (what in-place resize needs) and
// nothing enforced, and the runtime endpoint the node VM forwards to the
// daemon.
var nodeKubeletConfig = map[string]any{
	"kind":                     "KubeletConfiguration",
	"apiVersion":               "kubelet.config.k8s.io/v1beta1",
	"cgroupDriver":             "cgroupfs",
	"cgroupsPerQOS":            true,
	"enforceNodeAllocatable":   []string{},
	"failSwapOn":               false,
	"failCgroupV1":             false,
	"containerRuntimeEndpoint": "unix:///run/macvz/macvz.sock",
	"staticPodPath":            "/etc/kubernetes/manifests",
	"address":                  "127.0.0.1",
	"authentication":           map[string]any{"anonymous": map[string]any{"enabled": true}, "webhook": map[string]any{"enabled": false}},
	"authorization":            map[string]any{"mode": "AlwaysAllow"},
}

// Lines of kubelet's log (v1.37.2) the test keys on, in the order kubelet
// logs them (cmd/kubelet/app/server.go, run). kubelet first checks that
// its runtime endpoint answers CRI v1 (PreInitRuntimeService: with
// nothing on the socket it exits there, "validate service connection",
// before cAdvisor), then builds cAdvisor, then its container manager
// (cm.NewContainerManager logs the first line, then checks the cgroup
// hierarchy), then the runtime manager, which logs the runtime's name
// and version once it answered. Once the runtime says it is ready,
// kubelet starts cAdvisor and the container manager
// (Kubelet.initializeRuntimeDependentModules; it exits if either fails)
// and then logs the last line (at -v=4).
const (
	kubeletLineContainerManager = "Creating Container Manager object based on Node Config"
	kubeletLineRuntime          = "Container runtime initialized"
	kubeletLineStarted          = "Starting plugin manager"
)

// TestNodeImageKubelet builds the node image (integration/guest, node.go)
// for amd64 with the tools' kubelet, runs it as a pod through the daemon
// and crictl, and checks that the kubelet in it is the one given and that
// it starts in the guest: past cAdvisor and its container manager (the
// cgroup hierarchy the agent mounts as init), as far as waiting for its
// runtime.
func TestNodeImageKubelet(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	kubelet := requireKubelet(t)
	dir := t.TempDir()
	ctx := context.Background()
	agent := filepath.Join(dir, "macvz-agent")
	if err := guest.BuildStatic(ctx, guest.AgentPackage, agent); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := guest.Build(ctx, guest.Options{Out: filepath.Join(dir, "node"), Agent: agent, Cache: guest.DefaultCacheDir(), Node: &guest.NodeOptions{Kubelet: kubelet}})
	if err != nil {
		t.Fatalf("building the node image: %v", err)
	}
	if err := checkExecHelper(res.Info); err != nil {
		t.Fatal(err)
	}
	t.Logf("node image built in %v: kernel %d bytes, initrd %d bytes, kubelet %s",
		time.Since(start).Round(time.Millisecond), res.Info.KernelBytes, res.Info.InitrdBytes, res.Info.KubeletVersion)
	if res.Info.KubeletVersion != "v1.37.2" {
		t.Errorf("node image's kubelet version %q, want v1.37.2", res.Info.KubeletVersion)
	}
	imgs, err := guest.Load(res.Layout)
	if err != nil {
		t.Fatal(err)
	}
	node := imgs[guest.RefNode]
	if m := node.Parsed(); m.Annotations[guest.AnnotationImageKind] != guest.ImageKindNode || m.Annotations[guest.AnnotationKubeletVersion] != "v1.37.2" {
		t.Errorf("node image's manifest annotations: %v", m.Annotations)
	}

	// Cold boots only: a saved state of a 1 GiB guest is slow to write
	// and the test boots once.
	v := newVMTestIn(t, nil, "[vm]\nwarm_start = false\n")
	if err := v.reg.Push(ctx, "macvz/node", guest.RefNode, node); err != nil {
		t.Fatal(err)
	}
	ref := v.pullHost + "/macvz/node:" + guest.RefNode
	v.d.mustCrictl("pull", ref)

	// Every capability, as the node VM gives kubelet (it reads
	// /dev/kmsg, sets sysctls and OOM scores) and its setup (mounts).
	privileged := map[string]any{"security_context": map[string]any{"privileged": true}}
	podCfg := v.podConfig(t, "node", nil)
	start = time.Now()
	pod := v.runPod(t, podCfg)
	shell := v.startCtr(t, pod, v.ctrConfig(t, "shell", ref, map[string]any{
		"command": []string{"/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"},
		"linux":   privileged,
	}), podCfg)
	t.Logf("node VM booted (TCG) and its first container started in %v", time.Since(start).Round(time.Millisecond))
	for _, l := range strings.Split(v.d.log.String(), "\n") {
		if strings.Contains(l, "VM booted") {
			t.Logf("daemon: %s", l)
		}
	}

	if got := v.execOut(t, shell, guest.KubeletPath, "--version"); got != "Kubernetes v1.37.2" {
		t.Errorf("kubelet --version in the node image: %q, want Kubernetes v1.37.2", got)
	}
	if got := v.execOut(t, shell, "sh", "-c", "grep -c 'BEGIN CERTIFICATE' "+guest.DefaultCACerts); got == "" || got == "0" {
		t.Errorf("CA certificates in the node image: %q", got)
	}
	if got := v.execOut(t, shell, "sh", "-c", ". /etc/os-release; echo $ID"); got != "macvz-node" {
		t.Errorf("/etc/os-release ID: %q", got)
	}
	if got := v.execOut(t, shell, "sh", "-c", "grep ' /sys/fs/cgroup ' /proc/mounts | cut -d' ' -f3"); got != "cgroup2" {
		t.Errorf("/sys/fs/cgroup in the node VM is %q, want cgroup2", got)
	}
	t.Logf("node VM memory: %s", v.execOut(t, shell, "sh", "-c", "free -m | sed -n 2p"))

	// The node VM's runtime socket, served from the host as the node VM
	// will serve it: each guest client relayed over the agent channel
	// (runtime/guestfwd) to the daemon's CRI socket.
	shimc, err := shim.Connect(ctx, v.inspectPod(t, pod).Info.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer shimc.Close()
	fwdCtx, stopFwd := context.WithCancel(ctx)
	fwdDone := make(chan struct{})
	go func() {
		defer close(fwdDone)
		guestfwd.Serve(fwdCtx, slog.New(slog.NewTextHandler(io.Discard, nil)), shimc.Agent(), guestfwd.Forward{
			Listen: "unix:/run/macvz/macvz.sock",
			Dial: func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", v.d.socket)
			},
		})
	}()
	defer func() { stopFwd(); <-fwdDone }()

	// kubelet as the host will start it: a process of the running VM,
	// its output a container log the host reads.
	cfg, err := json.Marshal(nodeKubeletConfig)
	if err != nil {
		t.Fatal(err)
	}
	v.execOut(t, shell, "sh", "-c", "printf '%s\\n' '"+string(cfg)+"' > /etc/kubernetes/kubelet.json")
	// kubelet's root dir must be on a file system cAdvisor knows: on the
	// initramfs ("rootfs") its container manager fails to start ("failed
	// to get rootfs info: cannot find filesystem info for device
	// \"rootfs\""). The image's /etc/fstab puts a tmpfs there, which the
	// agent mounts as init.
	if got := v.execOut(t, shell, "sh", "-c", "grep ' /var/lib/kubelet ' /proc/mounts | cut -d' ' -f3"); got != "tmpfs" {
		t.Errorf("/var/lib/kubelet in the node VM is %q, want the tmpfs of the image's /etc/fstab", got)
	}
	kc := v.startCtr(t, pod, v.ctrConfig(t, "kubelet", ref, map[string]any{
		"command": []string{guest.KubeletPath, "--config=/etc/kubernetes/kubelet.json", "--v=4"},
		"linux":   privileged,
	}), podCfg)
	start = time.Now()
	logPath := filepath.Join(v.d.dir, "logs", "node", "kubelet.log")
	var log string
	done := func() bool {
		b, _ := os.ReadFile(logPath)
		log = string(b)
		return strings.Contains(log, kubeletLineStarted)
	}
	deadline := time.Now().Add(4 * time.Minute)
	for !done() && time.Now().Before(deadline) {
		if st := v.inspect(t, kc); st.Status.State == "CONTAINER_EXITED" {
			done()
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("kubelet ran %v; its log's key lines:", time.Since(start).Round(time.Millisecond))
	for _, l := range strings.Split(log, "\n") {
		for _, k := range []string{kubeletLineContainerManager, kubeletLineRuntime, kubeletLineStarted, "E1", "F1", "cadvisor", "cgroup"} {
			if strings.Contains(l, k) {
				t.Logf("  %s", l)
				break
			}
		}
	}
	if st := v.inspect(t, kc); st.Status.State != "CONTAINER_RUNNING" {
		t.Errorf("kubelet exited (%d): %s", st.Status.ExitCode, log)
	}
	for _, want := range []string{kubeletLineContainerManager, kubeletLineRuntime, kubeletLineStarted} {
		if !strings.Contains(log, want) {
			t.Errorf("kubelet's log lacks %q", want)
		}
	}
	for _, bad := range []string{"validate service connection", "system validation failed", "Failed to start cAdvisor", "failed to get cgroup stats"} {
		if strings.Contains(log, bad) {
			t.Errorf("kubelet's log says %q", bad)
		}
	}
	v.d.mustCrictl("rmp", "-f", pod)
}
