package cri

// GetContainerEvents streams the lifecycle of containers and sandboxes
// to kubelet's evented PLEG. The verbs that change a state send their
// event (created and started from here, deleted from the removes), and
// the sandbox controller reports every stop it records, asked for or
// not (sandbox.Deps.Stopped), so a VM or process that ends on its own is
// reported too, and a pod IP learned after the boot (addressed). A
// sandbox's events carry its ID as the container ID.
// Each event carries the pod's status as PodSandboxStatus reports it and
// the statuses of all its containers, which kubelet puts in its pod
// cache instead of asking.

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/store"
)

// eventBuffer is how many events a stream may fall behind by. One that
// falls further behind is ended (its events would be stale by then):
// kubelet relists and subscribes again.
const eventBuffer = 1024

// exitPollInterval is how often, while a stream is open, the daemon
// checks the running VMs and processes for one that ended on its own
// (the shim records an exit; the daemon learns it when it looks). It
// matches kubelet's generic relist period, which the events replace.
const exitPollInterval = time.Second

// GetContainerEvents sends events until the client goes away, the daemon
// shuts down (Unavailable) or the stream falls eventBuffer events behind
// (ResourceExhausted). Events of the daemon's node VM reach only its own
// supervisor, as with every other verb.
func (s *Service) GetContainerEvents(_ *runtimeapi.GetEventsRequest, stream grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	ctx := stream.Context()
	sub, err := s.events.subscribe(nodevm.Internal(ctx))
	if err != nil {
		return err
	}
	defer s.events.unsubscribe(sub)
	slog.Debug("container events stream opened")
	for {
		select {
		case <-sub.done:
			return sub.end
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case ev := <-sub.ch:
			// An ended stream sends none of what is still queued.
			select {
			case <-sub.done:
				return sub.end
			default:
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// containerEvent sends an event about a container, or about a sandbox
// when id is sbID, with the sandbox's current status and its
// containers'. A sandbox that is gone is sent without a status, as
// containerd does (kubelet then skips the event and its relist catches
// up). Nothing is built while no stream is open.
func (s *Service) containerEvent(typ runtimeapi.ContainerEventType, sbID, id string) {
	if !s.events.active() {
		return
	}
	// Stamped before the records are read: the status sent is at least
	// as new as its stamp, and kubelet keeps the newest stamp's status.
	at := nowNano()
	var sb *store.Sandbox
	if rec, err := s.st.Sandbox(sbID); err == nil && rec.ID == sbID {
		sb = &rec
	}
	s.sendEvent(typ, id, at, sb, true)
}

// sandboxRemoved sends the deleted events of a removed sandbox: one per
// container it had, then its own. They carry the sandbox's last status
// (read before the removal), with which kubelet drops the pod from its
// cache; the containers' statuses are empty, since none is left.
func (s *Service) sandboxRemoved(sb store.Sandbox, ctrIDs []string) {
	if !s.events.active() {
		return
	}
	at := nowNano()
	for _, id := range ctrIDs {
		s.sendEvent(runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, id, at, &sb, false)
	}
	s.sendEvent(runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, sb.ID, at, &sb, false)
}

// stopped is the sandbox controller's report of a stop it recorded
// (sandbox.Deps.Stopped): a container that exited, or a sandbox (ctrID
// "") that is no longer ready.
func (s *Service) stopped(sbID, ctrID string) {
	if ctrID == "" {
		ctrID = sbID
	}
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, sbID, ctrID)
}

// addressed is the sandbox controller's report that a ready sandbox's pod
// IPs became known after its boot (sandbox.Deps.Addressed; vmnet's DHCP).
// The CRI has no event for that: the sandbox's started event again
// carries the new status, which kubelet takes into its cache and syncs
// the pod by, so the pod IP does not wait for its next relist.
func (s *Service) addressed(sbID string) {
	s.containerEvent(runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, sbID, sbID)
}

func (s *Service) sendEvent(typ runtimeapi.ContainerEventType, id string, at int64, sb *store.Sandbox, withContainers bool) {
	ev := &runtimeapi.ContainerEventResponse{ContainerId: id, ContainerEventType: typ, CreatedAt: at}
	node := false
	if sb != nil {
		node = sb.Node
		st, err := sandboxStatus(*sb)
		if err != nil {
			slog.Warn("container event without the sandbox's status", "sandbox", sb.ID, "err", err)
		}
		ev.PodSandboxStatus = st
		if withContainers {
			if ev.ContainersStatuses, err = s.containerStatuses(sb.ID, nil); err != nil {
				slog.Warn("container event without the containers' statuses", "sandbox", sb.ID, "err", err)
			}
		}
	}
	s.events.publish(ev, node)
}

// watchExits looks for VMs and processes that ended on their own, every
// exitPollInterval until ctx is done: the controller records each such
// stop, and reports it (stopped).
func (s *Service) watchExits(ctx context.Context) {
	t := time.NewTicker(exitPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 10*exitPollInterval)
		sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool { return sb.State == store.SandboxReady && sb.VMStarted })
		if err == nil {
			for _, sb := range sbs {
				s.ctl.Refresh(pctx, sb)
			}
		}
		cs, err := s.st.Containers(func(c *store.Container) bool { return c.State == store.ContainerRunning })
		if err == nil {
			for _, c := range cs {
				if pctx.Err() != nil {
					break
				}
				s.ctl.RefreshContainer(pctx, c)
			}
		}
		cancel()
	}
}

// containerEvents fans events out to the open streams. Publishing never
// waits: each stream has a buffer, and one whose buffer is full is ended.
// While a stream is open, watch runs.
type containerEvents struct {
	watch func(context.Context)

	mu        sync.Mutex
	subs      map[*eventSub]struct{}
	closed    bool
	stopWatch context.CancelFunc // nil while watch does not run
	watching  sync.WaitGroup
}

// eventSub is one stream's subscription.
type eventSub struct {
	ch chan *runtimeapi.ContainerEventResponse
	// seesNode: the stream is the node VM supervisor's own.
	seesNode bool
	// done is closed when the subscription ends, end (set before) says
	// why: nil when the stream itself left.
	done chan struct{}
	end  error
}

// endLocked ends a subscription; e.mu is held.
func (e *containerEvents) endLocked(sub *eventSub, why error) {
	if _, ok := e.subs[sub]; !ok {
		return
	}
	delete(e.subs, sub)
	sub.end = why
	close(sub.done)
}

func newContainerEvents(watch func(context.Context)) *containerEvents {
	return &containerEvents{watch: watch, subs: map[*eventSub]struct{}{}}
}

func (e *containerEvents) subscribe(seesNode bool) (*eventSub, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, status.Error(codes.Unavailable, "macvz is shutting down")
	}
	sub := &eventSub{ch: make(chan *runtimeapi.ContainerEventResponse, eventBuffer), seesNode: seesNode, done: make(chan struct{})}
	e.subs[sub] = struct{}{}
	if e.stopWatch == nil && e.watch != nil {
		ctx, cancel := context.WithCancel(context.Background())
		e.stopWatch = cancel
		e.watching.Add(1)
		go func() {
			defer e.watching.Done()
			e.watch(ctx)
		}()
	}
	return sub, nil
}

// unsubscribe forgets a stream (one already ended is fine).
func (e *containerEvents) unsubscribe(sub *eventSub) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.endLocked(sub, nil)
	e.idleLocked()
}

// idleLocked stops watch when no stream is left.
func (e *containerEvents) idleLocked() {
	if len(e.subs) == 0 && e.stopWatch != nil {
		e.stopWatch()
		e.stopWatch = nil
	}
}

// active says whether a stream is open.
func (e *containerEvents) active() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.subs) > 0
}

// publish queues ev on every stream that may see it (node: the event is
// about the node VM) and ends the streams that are full.
func (e *containerEvents) publish(ev *runtimeapi.ContainerEventResponse, node bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for sub := range e.subs {
		if node && !sub.seesNode {
			continue
		}
		select {
		case sub.ch <- ev:
		default:
			slog.Warn("a container events stream fell behind; ending it so that its client relists", "buffered", eventBuffer)
			e.endLocked(sub, status.Errorf(codes.ResourceExhausted, "the container events stream fell %d events behind; relist and subscribe again", eventBuffer))
		}
	}
	e.idleLocked()
}

// close ends every stream (Unavailable), refuses new ones and waits for
// watch to return. It may be called more than once.
func (e *containerEvents) close() {
	e.mu.Lock()
	e.closed = true
	for sub := range e.subs {
		e.endLocked(sub, status.Error(codes.Unavailable, "macvz is shutting down"))
	}
	e.idleLocked()
	e.mu.Unlock()
	e.watching.Wait()
}
