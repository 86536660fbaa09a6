package cri

import (
	"context"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// BenchmarkListPodSandbox is the daemon's own part of a List (the store,
// the items, the answer's encoding; no socket) at 100 sandboxes with a
// container each: what integration's BenchmarkListPodSandbox measures
// less the gRPC round trip. Its allocations are what the daemon's
// collector pays per call. "encode" is the CRI server's codec (written
// from the items' encodings), "proto" the standard marshaling of the
// same answer.
func BenchmarkListPodSandbox(b *testing.B) {
	f := newFake(b)
	for i := range 100 {
		pod := hostPod(b, "list"+strconv.Itoa(i))
		sb := f.runPod(b, pod, "")
		f.createCtr(b, sb, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "main"}, LogPath: "main.log"})
	}
	ctx := context.Background()
	codec := newListCodec(f.listed)
	for name, marshal := range map[string]func(any) error{
		// gRPC frees what it sent (the buffer goes back to its pool).
		"encode": func(v any) error { bs, err := codec.Marshal(v); bs.Free(); return err },
		"proto":  func(v any) error { _, err := proto.Marshal(v.(proto.Message)); return err },
	} {
		b.Run("pods+"+name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := f.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
				if err != nil || len(r.GetItems()) != 100 {
					b.Fatalf("%d items, %v", len(r.GetItems()), err)
				}
				if err := marshal(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("pods", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if r, err := f.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(r.GetItems()) != 100 {
				b.Fatalf("%d items, %v", len(r.GetItems()), err)
			}
		}
	})
	b.Run("containers", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if r, err := f.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil || len(r.GetContainers()) != 100 {
				b.Fatalf("%d items, %v", len(r.GetContainers()), err)
			}
		}
	})
}
