package cri

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/store"
)

// The node VM (runtime/nodevm) is a sandbox of the daemon's own. Every
// verb finds records through sandbox and container, and every list keeps
// them through visible: the node VM and its kubelet exist only for the
// supervisor's context. kubelet, in the node VM, would otherwise see the
// VM it runs in as an orphaned pod and remove it.

// hidden reports whether a node VM record is out of ctx's sight.
func hidden(ctx context.Context, node bool) bool { return node && !nodevm.Internal(ctx) }

// sandbox finds a sandbox by ID or unique prefix, as ctx may see it.
func (s *Service) sandbox(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.st.Sandbox(id)
	if err == nil && hidden(ctx, sb.Node) {
		return store.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return sb, err
}

// container finds a container by ID or unique prefix, as ctx may see it.
func (s *Service) container(ctx context.Context, id string) (store.Container, error) {
	c, err := s.st.Container(id)
	if err == nil && hidden(ctx, c.Node) {
		return store.Container{}, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, err
}

// visibleSandboxes wraps a list filter so that it drops what ctx may not
// see.
func visibleSandboxes(ctx context.Context, keep func(*store.Sandbox) bool) func(*store.Sandbox) bool {
	return func(sb *store.Sandbox) bool {
		return !hidden(ctx, sb.Node) && (keep == nil || keep(sb))
	}
}

// visibleContainers is visibleSandboxes for containers.
func visibleContainers(ctx context.Context, keep func(*store.Container) bool) func(*store.Container) bool {
	return func(c *store.Container) bool {
		return !hidden(ctx, c.Node) && (keep == nil || keep(c))
	}
}
