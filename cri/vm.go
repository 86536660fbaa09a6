package cri

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/shim"
	"github.com/macvz/macvz/runtime/store"
)

// keyedLocks serialises lifecycle calls per sandbox: kubelet may start a
// pod's containers concurrently, and the first one boots the VM.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyedLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// diskKey is the snapshotter key of a sandbox's writable clone.
func diskKey(sandboxID string) string { return "macvz.sandbox/" + sandboxID }

// shimFor returns the connected shim of a sandbox whose VM runs.
func (s *Service) shimFor(ctx context.Context, sb store.Sandbox) (*shim.Client, error) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if c := s.shims[sb.ID]; c != nil {
		return c, nil
	}
	if !sb.VMStarted {
		return nil, fmt.Errorf("sandbox %s has no running VM yet: %w", sb.ID, errdefs.ErrFailedPrecondition)
	}
	c, err := shim.Connect(ctx, sb.Dir)
	if err != nil {
		return nil, err
	}
	s.shims[sb.ID] = c
	return c, nil
}

func (s *Service) dropShim(id string) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if c := s.shims[id]; c != nil {
		c.Close()
		delete(s.shims, id)
	}
}

// setStopping marks a sandbox whose VM is being stopped on purpose, so a
// concurrent refresh does not report the stop as the VM dying.
func (s *Service) setStopping(id string, on bool) {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	if s.stopping == nil {
		s.stopping = map[string]bool{}
	}
	if on {
		s.stopping[id] = true
	} else {
		delete(s.stopping, id)
	}
}

func (s *Service) isStopping(id string) bool {
	s.shimsMu.Lock()
	defer s.shimsMu.Unlock()
	return s.stopping[id]
}
