package cri

import (
	"context"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func newBuf(n int) *[]byte { b := make([]byte, n); return &b }

// TestListCodec: the List answers the CRI server writes from the items'
// encodings read back as the answers themselves, follow the items as
// they change, and an answer with an item of unknown encoding (or
// another message) is marshaled the usual way.
func TestListCodec(t *testing.T) {
	f := newFake(t)
	ctx := context.Background()
	codec := newListCodec(f.listed)
	roundTrip := func(v proto.Message, into proto.Message) {
		t.Helper()
		bs, err := codec.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(bs.Materialize(), into); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(v, into) {
			t.Fatalf("written from the encodings, read back:\n%v\nwant\n%v", into, v)
		}
	}
	var ids []string
	for i := range 5 {
		pod := hostPod(t, "codec"+strconv.Itoa(i))
		sb := f.runPod(t, pod, "")
		ids = append(ids, sb)
		f.createCtr(t, sb, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Labels: map[string]string{"k": strconv.Itoa(i)}, LogPath: "c.log"})
	}
	list := func() (*runtimeapi.ListPodSandboxResponse, *runtimeapi.ListContainersResponse) {
		t.Helper()
		p, err := f.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := f.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return p, c
	}
	pods, ctrs := list()
	if len(pods.Items) != 5 || len(ctrs.Containers) != 5 {
		t.Fatalf("%d pods, %d containers", len(pods.Items), len(ctrs.Containers))
	}
	if b := f.listed.encodeItems(len(pods.Items), func(i int) any { return pods.Items[i] }, newBuf); b == nil {
		t.Fatal("no encodings for the pods' items")
	}
	roundTrip(pods, &runtimeapi.ListPodSandboxResponse{})
	roundTrip(ctrs, &runtimeapi.ListContainersResponse{})

	// A state change makes new items, and the answer says so.
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: ids[2]}); err != nil {
		t.Fatal(err)
	}
	pods, ctrs = list()
	var got runtimeapi.ListPodSandboxResponse
	roundTrip(pods, &got)
	for _, it := range got.Items {
		if want := runtimeapi.PodSandboxState_SANDBOX_READY; it.Id == ids[2] {
			want = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
			if it.State != want {
				t.Errorf("stopped sandbox listed as %v", it.State)
			}
		} else if it.State != want {
			t.Errorf("sandbox %s listed as %v", it.Id, it.State)
		}
	}
	roundTrip(ctrs, &runtimeapi.ListContainersResponse{})

	// An item from elsewhere: marshaled the usual way, still right.
	mixed := &runtimeapi.ListPodSandboxResponse{Items: append([]*runtimeapi.PodSandbox{{Id: "other", State: runtimeapi.PodSandboxState_SANDBOX_READY}}, pods.Items...)}
	if b := f.listed.encodeItems(len(mixed.Items), func(i int) any { return mixed.Items[i] }, newBuf); b != nil {
		t.Error("an item without an encoding was written from encodings")
	}
	roundTrip(mixed, &runtimeapi.ListPodSandboxResponse{})
	roundTrip(&runtimeapi.ListPodSandboxResponse{}, &runtimeapi.ListPodSandboxResponse{})
	roundTrip(&runtimeapi.VersionResponse{RuntimeName: "macvz"}, &runtimeapi.VersionResponse{})

	// Removed sandboxes' items and encodings go once the List no longer
	// sees them (keepItems drops them when the cache is over twice the
	// list and then some).
	for _, id := range ids {
		if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		pod := hostPod(t, "later"+strconv.Itoa(i))
		f.runPod(t, pod, "")
	}
	list()
	f.listed.mu.Lock()
	n := len(f.listed.encoded)
	f.listed.mu.Unlock()
	// 20 sandboxes, no container: at most 20 pod items and what keepItems
	// leaves of the containers' (it trims a map past 2×listed+16).
	if n > 20+16 {
		t.Errorf("%d encodings kept for 20 listed sandboxes", n)
	}
}
