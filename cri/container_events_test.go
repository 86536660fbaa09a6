package cri

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/shimapi"
)

// eventStream is a GetContainerEvents server stream over a channel: Send
// hands each event to the test, or waits for block to close first when
// it is set.
type eventStream struct {
	grpc.ServerStream
	ctx    context.Context
	events chan *runtimeapi.ContainerEventResponse
	block  chan struct{}
}

func (s *eventStream) Context() context.Context { return s.ctx }

func (s *eventStream) Send(ev *runtimeapi.ContainerEventResponse) error {
	if s.block != nil {
		select {
		case <-s.block:
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
	}
	select {
	case s.events <- ev:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// subscribeEvents opens a GetContainerEvents stream and returns once it is
// subscribed; the stream's error arrives on done when it ends.
func (f *fake) subscribeEvents(t *testing.T, ctx context.Context, block chan struct{}) (*eventStream, <-chan error) {
	t.Helper()
	before := f.eventSubs()
	st := &eventStream{ctx: ctx, events: make(chan *runtimeapi.ContainerEventResponse, 4*eventBuffer), block: block}
	done := make(chan error, 1)
	go func() { done <- f.GetContainerEvents(&runtimeapi.GetEventsRequest{}, st) }()
	waitFor(t, "the stream to subscribe", func() bool { return f.eventSubs() > before })
	return st, done
}

func (f *fake) eventSubs() int {
	f.events.mu.Lock()
	defer f.events.mu.Unlock()
	return len(f.events.subs)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nextEvent is the stream's next event.
func nextEvent(t *testing.T, st *eventStream) *runtimeapi.ContainerEventResponse {
	t.Helper()
	select {
	case ev := <-st.events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return nil
	}
}

// statusOf is a container's status in an event, nil when it has none.
func statusOf(ev *runtimeapi.ContainerEventResponse, id string) *runtimeapi.ContainerStatus {
	for _, c := range ev.GetContainersStatuses() {
		if c.GetId() == id {
			return c
		}
	}
	return nil
}

// TestContainerEventsLifecycle: a pod's life through the CRI is streamed
// in order, sandbox events under the sandbox's ID, each with the pod's
// status and its containers' as they are after the change; the deleted
// sandbox's event still carries its status (kubelet drops its cache
// entry by it).
func TestContainerEventsLifecycle(t *testing.T) {
	f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, done := f.subscribeEvents(t, ctx, nil)

	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	id := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, LogPath: "app/0.log"})
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}

	const (
		created  = runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT
		started  = runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT
		stopped  = runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT
		deleted  = runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT
		ready    = runtimeapi.PodSandboxState_SANDBOX_READY
		notReady = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	)
	want := []struct {
		typ     runtimeapi.ContainerEventType
		id      string
		sbState runtimeapi.PodSandboxState
		// ctr is the container's state in the event; -1: not listed.
		ctr runtimeapi.ContainerState
	}{
		{created, sbID, ready, -1},
		{started, sbID, ready, -1},
		{created, id, ready, runtimeapi.ContainerState_CONTAINER_CREATED},
		{started, id, ready, runtimeapi.ContainerState_CONTAINER_RUNNING},
		{stopped, id, ready, runtimeapi.ContainerState_CONTAINER_EXITED},
		{deleted, id, ready, -1},
		{stopped, sbID, notReady, -1},
		{deleted, sbID, notReady, -1},
	}
	var last int64
	for i, w := range want {
		ev := nextEvent(t, st)
		if ev.GetContainerEventType() != w.typ || ev.GetContainerId() != w.id {
			t.Fatalf("event %d: %v of %s, want %v of %s", i, ev.GetContainerEventType(), ev.GetContainerId(), w.typ, w.id)
		}
		ps := ev.GetPodSandboxStatus()
		if ps.GetId() != sbID || ps.GetMetadata().GetUid() != "uid-web" || ps.GetState() != w.sbState {
			t.Errorf("event %d (%v of %s): sandbox status %v", i, w.typ, w.id, ps)
		}
		cs := statusOf(ev, id)
		switch {
		case w.ctr < 0 && cs != nil:
			t.Errorf("event %d (%v of %s): lists the container: %v", i, w.typ, w.id, cs)
		case w.ctr >= 0 && (cs == nil || cs.GetState() != w.ctr || cs.GetMetadata().GetName() != "app"):
			t.Errorf("event %d (%v of %s): container status %v, want state %v", i, w.typ, w.id, cs, w.ctr)
		}
		if ev.GetCreatedAt() < last || ev.GetCreatedAt() == 0 {
			t.Errorf("event %d: created_at %d after %d", i, ev.GetCreatedAt(), last)
		}
		last = ev.GetCreatedAt()
	}
	select {
	case ev := <-st.events:
		t.Errorf("an event too many: %v", ev)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("stream ended with %v, want Canceled", err)
	}
}

// TestContainerEventsExitOnItsOwn: a process that exits, and a VM that
// stops, without any CRI call are reported as stopped (the exit watch
// that runs while a stream is open).
func TestContainerEventsExitOnItsOwn(t *testing.T) {
	f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sbID, id := f.startedCtr(t, "web")
	pod := hostPod(t, "web")
	id2 := f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "side"}, LogPath: "side/0.log"})
	if _, err := f.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id2}); err != nil {
		t.Fatal(err)
	}
	st, _ := f.subscribeEvents(t, ctx, nil)

	f.shimOf(t, sbID).SetExit(id, &shimapi.ProcessExit{ExitCode: 3, Reason: "Error"})
	ev := nextEvent(t, st)
	if ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT || ev.GetContainerId() != id {
		t.Fatalf("after the process exited: %v", ev)
	}
	if cs := statusOf(ev, id); cs.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || cs.GetExitCode() != 3 {
		t.Errorf("the exited container's status: %v", cs)
	}
	if cs := statusOf(ev, id2); cs.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("the other container's status: %v", cs)
	}

	f.shimOf(t, sbID).StopVM("guest powered off")
	ev = nextEvent(t, st)
	if ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT || ev.GetContainerId() != id2 {
		t.Fatalf("after the VM stopped, first: %v", ev)
	}
	ev = nextEvent(t, st)
	if ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT || ev.GetContainerId() != sbID ||
		ev.GetPodSandboxStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("after the VM stopped, then: %v", ev)
	}
	if cs := statusOf(ev, id2); cs.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("a container of the stopped VM: %v", cs)
	}
}

// TestContainerEventsSlowSubscriber: a stream that does not read never
// holds up the daemon or the other streams; once it is eventBuffer
// events behind it ends with ResourceExhausted, without sending what was
// queued (kubelet relists and subscribes again).
func TestContainerEventsSlowSubscriber(t *testing.T) {
	f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	block := make(chan struct{})
	slow, slowDone := f.subscribeEvents(t, ctx, block)
	fast, fastDone := f.subscribeEvents(t, ctx, nil)

	pod := hostPod(t, "web")
	sbID := f.runPod(t, pod, "guest")
	nextEvent(t, fast) // the sandbox's created
	nextEvent(t, fast) // and started
	// More events than a buffer holds, with the pod's statuses built for
	// each, and then a CRI call: none of it waits for the slow stream,
	// and the fast one gets everything.
	start := time.Now()
	for i := range eventBuffer + 10 {
		f.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, sbID, sbID)
		if ev := nextEvent(t, fast); ev.GetContainerId() != sbID {
			t.Fatalf("fast stream, event %d: %v", i, ev)
		}
	}
	f.createCtr(t, sbID, pod, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}})
	if ev := nextEvent(t, fast); ev.GetContainerEventType() != runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT {
		t.Errorf("the fast stream's last event: %v", ev)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("sending the events took %v", d)
	}
	// The slow stream was dropped.
	if n := f.eventSubs(); n != 1 {
		t.Errorf("%d streams subscribed, want the fast one", n)
	}
	close(block)
	select {
	case err := <-slowDone:
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("slow stream ended with %v, want ResourceExhausted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow stream did not end")
	}
	// It sent the event it was blocked on and nothing it had queued.
	if n := len(slow.events); n > 1 {
		t.Errorf("the ended stream sent %d events", n)
	}
	cancel()
	<-fastDone
}

// TestContainerEventsEnd: a stream whose client goes away unsubscribes
// and the exit watch stops with the last one; the daemon's shutdown ends
// the others with Unavailable and refuses new ones; a node VM's events
// reach only the supervisor's streams.
func TestContainerEventsEnd(t *testing.T) {
	f := newFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	_, done := f.subscribeEvents(t, ctx, nil)
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("stream ended with %v, want Canceled", err)
	}
	if n := f.eventSubs(); n != 0 {
		t.Errorf("%d streams left subscribed", n)
	}
	watchStopped := make(chan struct{})
	go func() { f.events.watching.Wait(); close(watchStopped) }()
	select {
	case <-watchStopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the exit watch still runs with no stream open")
	}

	sub, err := f.events.subscribe(false)
	if err != nil {
		t.Fatal(err)
	}
	node, err := f.events.subscribe(true)
	if err != nil {
		t.Fatal(err)
	}
	f.events.publish(&runtimeapi.ContainerEventResponse{ContainerId: "node-vm"}, true)
	if len(sub.ch) != 0 || len(node.ch) != 1 {
		t.Errorf("a node VM event reached %d ordinary and %d supervisor streams, want 0 and 1", len(sub.ch), len(node.ch))
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	_, done2 := f.subscribeEvents(t, ctx2, nil)
	f.events.close()
	if err := <-done2; status.Code(err) != codes.Unavailable {
		t.Errorf("stream ended at shutdown with %v, want Unavailable", err)
	}
	for _, s := range []*eventSub{sub, node} {
		select {
		case <-s.done:
		default:
			t.Error("a subscription outlived the shutdown")
		}
	}
	if _, err := f.events.subscribe(false); status.Code(err) != codes.Unavailable {
		t.Errorf("subscribing after the shutdown: %v, want Unavailable", err)
	}
}
