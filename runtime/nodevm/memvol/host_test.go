package memvol

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestVolumeChecksThePath(t *testing.T) {
	h := &Handler{Roots: []string{"/var/lib/kubelet/pods", "/other/"}}
	for _, tc := range []struct {
		path, root, rel string
	}{
		{"/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/tok", "/var/lib/kubelet/pods", "u1/volumes/kubernetes.io~secret/tok"},
		{"/other/k/pods/u1/volumes/kubernetes.io~empty-dir/cache", "/other", "k/pods/u1/volumes/kubernetes.io~empty-dir/cache"},
		// Refused: not clean, relative, outside the roots, not a volume.
		{path: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/../../../../../etc"},
		{path: "var/lib/kubelet/pods/u1/volumes/p/v"},
		{path: "/var/lib/kubelet/pods/u1/volumes/p/v/"},
		{path: "/etc/pods/u1/volumes/p/v"},
		{path: "/var/lib/kubelet/pods/u1/etc-hosts"},
		{path: "/var/lib/kubelet/pods/u1/volumes/p"},
		{path: "/var/lib/kubelet/pods-x/u1/volumes/p/v"},
		{path: "/var/lib/kubelet/pods/u1/volumes/p/v\x00"},
	} {
		root, rel, err := h.volume(tc.path)
		if tc.root == "" {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%q: %v, want InvalidArgument", tc.path, err)
			}
			continue
		}
		if err != nil || root != tc.root || rel != tc.rel {
			t.Errorf("%q: %q %q %v, want %q %q", tc.path, root, rel, err, tc.root, tc.rel)
		}
	}
}

func TestSizeOption(t *testing.T) {
	for opts, want := range map[string]int64{
		"": 0, "size=1048576": 1 << 20, "noswap,size=64m": 64 << 20, "size=2G": 2 << 30, "size=50%": 0, "mode=0755": 0,
	} {
		if got, err := sizeOption(opts); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", opts, got, err, want)
		}
	}
	for _, bad := range []string{"size=x", "size=-1", "size=99999999999999999999g"} {
		if _, err := sizeOption(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestHandlerOverDialer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial := Dialer(ctx, &Handler{Roots: []string{t.TempDir()}})
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
	}}
	do := func(method, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://memvol/v1/tmpfs", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if code, msg := do(http.MethodPost, `{"path":"/etc/pods/u/volumes/p/v"}`); code != http.StatusBadRequest || !strings.Contains(msg, "not below a directory shared") {
		t.Errorf("outside the roots: %d %s", code, msg)
	}
	if code, _ := do(http.MethodPost, `{`); code != http.StatusBadRequest {
		t.Errorf("bad JSON: %d", code)
	}
	if code, _ := do(http.MethodPut, `{}`); code != http.StatusNotFound {
		t.Errorf("PUT: %d", code)
	}
	if code, body := do(http.MethodGet, ``); code != http.StatusOK || strings.TrimSpace(body) != `{"tmpfs":false}` {
		t.Errorf("GET with no tmpfs below the roots: %d %s", code, body)
	}
	b, _ := json.Marshal(Request{Path: "/x/pods/u/volumes/p/v", SizeBytes: -1})
	if code, _ := do(http.MethodPost, string(b)); code != http.StatusBadRequest {
		t.Errorf("negative size: %d", code)
	}
}
