package integration

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/macvz/macvz/integration/testimage"
)

// TestImageVolume: an ordinary OCI image (a toolchain or test data) and
// the test guest's own VM image (its initramfs is its root) mounted as
// image volumes: read-only in the guest, whiteouts applied, a sub path,
// the image's ID in crictl inspect's mounts; the image cannot be removed
// while mounted, and nothing is left once the pod is gone.
func TestImageVolume(t *testing.T) {
	v := newVMTest(t)
	tools, err := testimage.OCI(testimage.OCIOptions{Layers: [][]testimage.File{
		{{Path: "/opt/tools/bin/hello", Data: []byte("#!/bin/sh\necho hello from an image volume\n"), Mode: 0o755}, {Path: "/opt/tools/old.txt", Data: []byte("old")}},
		{{Path: "/opt/tools/.wh.old.txt"}, {Path: "/data/set.csv", Data: []byte("a,b\n1,2\n")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.reg.Push(context.Background(), "macvz/tools", "1", tools); err != nil {
		t.Fatal(err)
	}
	toolsRef := v.pullHost + "/macvz/tools:1"
	v.d.mustCrictl("pull", toolsRef)

	podCfg := v.podConfig(t, "imagevol", nil)
	pod := v.runPod(t, podCfg)
	stateDir := v.inspectPod(t, pod).Info.StateDir
	c := v.startCtr(t, pod, v.ctrConfig(t, "user", v.plain, map[string]any{
		"command": []string{"sleep", "3600"},
		"mounts": []map[string]any{
			{"container_path": "/opt", "readonly": true, "image": map[string]any{"image": toolsRef}, "image_sub_path": "opt"},
			{"container_path": "/mnt/data", "readonly": true, "image": map[string]any{"image": toolsRef}, "image_sub_path": "data"},
			{"container_path": "/mnt/guest", "readonly": true, "image": map[string]any{"image": v.plain}},
		},
	}), podCfg)

	if out := v.execOut(t, c, "/opt/tools/bin/hello"); out != "hello from an image volume" {
		t.Errorf("running a tool from the image volume: %q", out)
	}
	if out := v.execOut(t, c, "cat", "/mnt/data/set.csv"); out != "a,b\n1,2" {
		t.Errorf("the data sub path: %q", out)
	}
	if out, err := v.d.crictl("exec", "-s", c, "ls", "/opt/tools/old.txt"); err == nil {
		t.Errorf("a whited-out file is in the volume: %s", out)
	}
	if out, err := v.d.crictl("exec", "-s", c, "touch", "/opt/tools/new"); err == nil {
		t.Errorf("the image volume is writable: %s", out)
	}
	// The guest image's own root, from its initramfs.
	if out := v.execOut(t, c, "/mnt/guest/bin/busybox", "true"); out != "" {
		t.Errorf("running the guest image's busybox from its image volume: %q", out)
	}

	var st struct {
		Status struct {
			Mounts []struct {
				ContainerPath string `json:"containerPath"`
				Image         struct {
					ImageRef string `json:"imageRef"`
				} `json:"image"`
			} `json:"mounts"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(v.d.mustCrictl("inspect", "-o", "json", c)), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Status.Mounts) != 3 || !strings.HasPrefix(st.Status.Mounts[0].Image.ImageRef, "sha256:") {
		t.Errorf("mounts in crictl inspect: %+v", st.Status.Mounts)
	}

	// In use: not removable.
	if out, err := v.d.crictl("rmi", toolsRef); err == nil || !strings.Contains(out, "image volume") {
		t.Errorf("removing an image mounted as a volume: %v: %s", err, out)
	}
	// A writable image volume and a sub path not in the image are refused.
	for _, m := range []map[string]any{
		{"container_path": "/mnt/x", "readonly": false, "image": map[string]any{"image": toolsRef}},
		{"container_path": "/mnt/x", "readonly": true, "image": map[string]any{"image": toolsRef}, "image_sub_path": "not-existing"},
	} {
		out, err := v.d.crictl("create", pod, v.ctrConfig(t, "refused", v.plain, map[string]any{"command": []string{"true"}, "mounts": []map[string]any{m}}), podCfg)
		if err == nil || !(strings.Contains(out, "InvalidArgument") || strings.Contains(out, "NotFound")) {
			t.Errorf("create with image volume %v: %v: %s", m, err, out)
		}
	}

	v.d.mustCrictl("rmp", "-f", pod)
	if ms := mountsUnder(stateDir); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	// The last user is gone: the trees are released, and the image goes.
	v.d.mustCrictl("rmi", toolsRef)
	if strings.Contains(v.d.log.String(), "releasing an image volume's tree") {
		t.Errorf("releasing a tree failed; log:\n%s", v.d.log.String())
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("the pod's state directory is left: %v", err)
	}
}
