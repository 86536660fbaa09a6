package shim

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/macvz/macvz/internal/guard"
	"github.com/macvz/macvz/runtime/agentapi"
)

// forwarder serves the guest agent's service on the shim's socket by
// forwarding every call to the agent: unary calls one to one (with the
// caller's deadline and metadata), streams by pumping both directions.
// Two calls are not plain forwards:
//   - ReadOutput of an output the shim copies into a log is served from
//     the shim's copy (see outputCopier.serve);
//   - RemoveProcess of a watched process that has exited first waits for
//     the shim to record the exit and finish its log.
type forwarder struct {
	s *server
}

var _ agentapi.AgentService = (*forwarder)(nil)

// streamGrace: how long a forwarded stream whose caller went away waits
// for the agent to end it after CloseSend, before it is abandoned.
var streamGrace = 5 * time.Second

// call forwards one unary call.
func call[Req, Resp any](ctx context.Context, f *forwarder, req Req, do func(agentapi.AgentClient, context.Context, Req) (Resp, error)) (Resp, error) {
	var zero Resp
	s, err := f.s.agent.get(ctx)
	if err != nil {
		return zero, err
	}
	resp, err := do(s.api, ctx, req)
	if err != nil {
		return zero, agentErr(err)
	}
	return resp, nil
}

func (f *forwarder) Ping(ctx context.Context, r *agentapi.PingRequest) (*agentapi.PingResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.Ping)
}

func (f *forwarder) Info(ctx context.Context, r *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.Info)
}

func (f *forwarder) CreateProcess(ctx context.Context, r *agentapi.CreateProcessRequest) (*agentapi.CreateProcessResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.CreateProcess)
}

func (f *forwarder) StartProcess(ctx context.Context, r *agentapi.StartProcessRequest) (*agentapi.StartProcessResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.StartProcess)
}

func (f *forwarder) WriteStdin(ctx context.Context, r *agentapi.WriteStdinRequest) (*agentapi.WriteStdinResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.WriteStdin)
}

func (f *forwarder) CloseStdin(ctx context.Context, r *agentapi.CloseStdinRequest) (*agentapi.CloseStdinResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.CloseStdin)
}

func (f *forwarder) ResizeTty(ctx context.Context, r *agentapi.ResizeTtyRequest) (*agentapi.ResizeTtyResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.ResizeTty)
}

func (f *forwarder) SignalProcess(ctx context.Context, r *agentapi.SignalProcessRequest) (*agentapi.SignalProcessResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.SignalProcess)
}

func (f *forwarder) WaitProcess(ctx context.Context, r *agentapi.WaitProcessRequest) (*agentapi.WaitProcessResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.WaitProcess)
}

func (f *forwarder) ListProcesses(ctx context.Context, r *agentapi.ListProcessesRequest) (*agentapi.ListProcessesResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.ListProcesses)
}

func (f *forwarder) RemoveProcess(ctx context.Context, r *agentapi.RemoveProcessRequest) (*agentapi.RemoveProcessResponse, error) {
	k := procKey{r.Id.GetContainerId(), r.Id.GetExecId()}
	w := f.s.procs.lookup(k)
	if w != nil && w.exited() == nil {
		// Let the shim record the exit and drain the output first: the
		// agent frees both on removal.
		s, err := f.s.agent.get(ctx)
		if err != nil {
			return nil, err
		}
		list, err := s.api.ListProcesses(ctx, &agentapi.ListProcessesRequest{ContainerId: k.container})
		if err != nil {
			return nil, agentErr(err)
		}
		for _, p := range list.Processes {
			if p.Id.GetContainerId() == k.container && p.Id.GetExecId() == k.exec && p.State == agentapi.ProcessState_EXITED {
				select {
				case <-w.done:
				case <-ctx.Done():
					return nil, agentErr(ctx.Err())
				}
			}
		}
	}
	resp, err := call(ctx, f, r, agentapi.AgentClient.RemoveProcess)
	if err == nil && w != nil && w.exited() == nil {
		// Removed before it ran (or ended): nothing will report an exit.
		w.record(nil, "the process was removed from the guest before it exited")
		w.cancel()
	}
	return resp, err
}

func (f *forwarder) KillAll(ctx context.Context, r *agentapi.KillAllRequest) (*agentapi.KillAllResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.KillAll)
}

func (f *forwarder) SetHostname(ctx context.Context, r *agentapi.SetHostnameRequest) (*agentapi.SetHostnameResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.SetHostname)
}

func (f *forwarder) WriteResolvConf(ctx context.Context, r *agentapi.WriteResolvConfRequest) (*agentapi.WriteResolvConfResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.WriteResolvConf)
}

func (f *forwarder) ConfigureNetwork(ctx context.Context, r *agentapi.ConfigureNetworkRequest) (*agentapi.ConfigureNetworkResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.ConfigureNetwork)
}

func (f *forwarder) UnmountShare(ctx context.Context, r *agentapi.UnmountShareRequest) (*agentapi.UnmountShareResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.UnmountShare)
}

func (f *forwarder) UpdateResources(ctx context.Context, r *agentapi.UpdateResourcesRequest) (*agentapi.UpdateResourcesResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.UpdateResources)
}

func (f *forwarder) MountShare(ctx context.Context, r *agentapi.MountShareRequest) (*agentapi.MountShareResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.MountShare)
}

func (f *forwarder) SetSysctls(ctx context.Context, r *agentapi.SetSysctlsRequest) (*agentapi.SetSysctlsResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.SetSysctls)
}

func (f *forwarder) Stats(ctx context.Context, r *agentapi.StatsRequest) (*agentapi.StatsResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.Stats)
}

func (f *forwarder) Shutdown(ctx context.Context, r *agentapi.ShutdownRequest) (*agentapi.ShutdownResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.Shutdown)
}

// clientStream is the agent side of a forwarded stream.
type clientStream[Up, Down any] interface {
	Send(Up) error
	Recv() (Down, error)
	CloseSend() error
}

// serverStream is the caller's side of a forwarded stream.
type serverStream[Up, Down any] interface {
	Send(Down) error
	Recv() (Up, error)
}

// pump forwards a bidirectional stream whose first message from the
// caller is first. The caller's messages go to the agent until the caller
// closes its side (CloseSend is passed on) or goes away (CloseSend too:
// the agent then ends the stream); the agent's messages go to the caller
// until the agent ends the stream, which ends the call.
// Everything the agent sends is the guest's: a panic while forwarding
// ends this stream (logged with log), not the shim.
func pump[Up, Down any](ctx context.Context, log *slog.Logger, ss serverStream[Up, Down], open func(context.Context) (clientStream[Up, Down], error), first Up) (err error) {
	defer guard.Recover(log, "forwarded agent stream", &err)
	// The agent-side stream outlives ctx a little, so that the agent can
	// end it cleanly after our CloseSend.
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(streamGrace, cancel) })
	defer stop()

	cs, err := open(actx)
	if err != nil {
		return agentErr(err)
	}
	if err := cs.Send(first); err != nil {
		return agentErr(err)
	}
	var ended atomic.Bool // the agent ended the stream
	defer ended.Store(true)
	go func() {
		perr := guard.Do(log, "forwarded agent stream (caller to agent)", func() error {
			for {
				m, err := ss.Recv()
				if ended.Load() {
					return nil // late messages (acks) would reach a finished stream
				}
				if err != nil {
					cs.CloseSend()
					return nil
				}
				if err := cs.Send(m); err != nil {
					return nil
				}
			}
		})
		if perr != nil {
			cs.CloseSend() // the agent then ends the stream
		}
	}()
	for {
		m, err := cs.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return agentErr(err)
		}
		if err := ss.Send(m); err != nil {
			return err
		}
	}
}

func (f *forwarder) ReadOutput(ctx context.Context, ss agentapi.Agent_ReadOutputServer) (err error) {
	// ttrpc does not recover a stream handler's panic: end only this one.
	defer guard.Recover(f.s.log, "ReadOutput stream", &err)
	first, err := ss.Recv()
	if err != nil {
		return err
	}
	k := procKey{first.Id.GetContainerId(), first.Id.GetExecId()}
	log := f.s.log.With("container", k.container, "exec", k.exec)
	if w := f.s.procs.lookup(k); w != nil && w.outs[0] != nil {
		switch first.Stdio {
		case agentapi.Stdio_STDOUT:
			return w.outs[0].serve(ctx, ss, first)
		case agentapi.Stdio_STDERR:
			return w.outs[1].serve(ctx, ss, first)
		}
	}
	s, err := f.s.agent.get(ctx)
	if err != nil {
		return err
	}
	return pump(ctx, log, ss, func(ctx context.Context) (clientStream[*agentapi.OutputRequest, *agentapi.OutputChunk], error) {
		return s.api.ReadOutput(ctx)
	}, first)
}

func (f *forwarder) PortForward(ctx context.Context, ss agentapi.Agent_PortForwardServer) (err error) {
	defer guard.Recover(f.s.log, "PortForward stream", &err)
	first, err := ss.Recv()
	if err != nil {
		return err
	}
	s, err := f.s.agent.get(ctx)
	if err != nil {
		return err
	}
	return pump(ctx, f.s.log.With("port", first.GetPort()), ss, func(ctx context.Context) (clientStream[*agentapi.PortForwardFrame, *agentapi.PortForwardFrame], error) {
		return s.api.PortForward(ctx)
	}, first)
}

func (f *forwarder) Reseed(ctx context.Context, r *agentapi.ReseedRequest) (*agentapi.ReseedResponse, error) {
	return call(ctx, f, r, agentapi.AgentClient.Reseed)
}
