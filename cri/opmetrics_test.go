package cri

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
)

// TestServeMetrics: with [metrics] address the daemon serves /metrics
// once its CRI socket is up, counts each CRI call under the code its
// client gets (an errdefs class mapped by unaryErrors), tells crictl info
// where, and stops serving when it stops.
func TestServeMetrics(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Root, cfg.State, cfg.Socket = filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "s.sock")
	cfg.Network.ConfDir = filepath.Join(dir, "net.d")
	cfg.Kubelet.DevicePlugin = false
	cfg.Metrics.Address = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, cfg, time.Second) }()

	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	var info *runtimeapi.StatusResponse
	for deadline := time.Now().Add(30 * time.Second); ; {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		info, err = rt.Status(cctx, &runtimeapi.StatusRequest{Verbose: true}, grpc.WaitForReady(true))
		ccancel()
		if err == nil && info.GetInfo()["metrics"] != "" {
			break
		}
		select {
		case err := <-served:
			t.Fatalf("Serve returned: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics URL in the verbose status: %v %v", info.GetInfo(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	url := info.GetInfo()["metrics"]
	if !strings.HasPrefix(url, "http://127.0.0.1:") || strings.HasSuffix(url, ":0/metrics") {
		t.Errorf("metrics URL %q", url)
	}
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "nosuch"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("ContainerStatus of no container: %v", err)
	}
	if r, err := rt.Status(ctx, &runtimeapi.StatusRequest{}); err != nil || r.GetInfo()["metrics"] != "" {
		t.Errorf("a status that is not verbose: %v %v", r.GetInfo(), err)
	}

	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`macvz_cri_request_duration_seconds_count{code="OK",method="Version"} 1`,
		`macvz_cri_request_duration_seconds_count{code="NotFound",method="ContainerStatus"} 1`,
		`macvz_vms_running{backend="qemu",os="linux",role="pod"} 0`,
		`macvz_build_info{backend="qemu",version="` + RuntimeVersion + `"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(string(body), "macvz_"))
		}
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := http.Get(url); err == nil {
		t.Error("/metrics still answers after the daemon stopped")
	}
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
