package cri

import (
	"bytes"
	"sync"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/store"
)

// parsedConfigs keeps the CRI configs of records parsed, for the List
// verbs: kubelet lists every second, and parsing a hundred protobuf
// configs each time was a third of a List's time. An entry is used only
// while its record's config bytes are the ones it was parsed from (a
// container's change with UpdateContainerResources). What it hands out
// is shared: read it, never change it (the List verbs only copy fields
// out of it into their answer).
type parsedConfigs[T proto.Message] struct {
	newT func() T
	mu   sync.Mutex
	m    map[string]parsedConfig[T]
}

type parsedConfig[T any] struct {
	raw []byte
	cfg T
}

func newParsedConfigs[T proto.Message](newT func() T) *parsedConfigs[T] {
	return &parsedConfigs[T]{newT: newT, m: map[string]parsedConfig[T]{}}
}

// get is id's config parsed from raw.
func (p *parsedConfigs[T]) get(id string, raw []byte) (T, error) {
	p.mu.Lock()
	e, ok := p.m[id]
	p.mu.Unlock()
	if ok && bytes.Equal(e.raw, raw) {
		return e.cfg, nil
	}
	cfg := p.newT()
	if err := proto.Unmarshal(raw, cfg); err != nil {
		return cfg, err
	}
	p.mu.Lock()
	p.m[id] = parsedConfig[T]{raw: raw, cfg: cfg}
	p.mu.Unlock()
	return cfg, nil
}

// keepOnly drops the entries of records no longer listed, once they
// outnumber the listed ones.
func (p *parsedConfigs[T]) keepOnly(ids map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.m) <= 2*len(ids)+16 {
		return
	}
	for id := range p.m {
		if !ids[id] {
			delete(p.m, id)
		}
	}
}

// listConfigs are the Service's parsed configs for the List verbs, and
// the items built from them: a List answer is mostly the same items as
// the last one (only a state changes), and building hundreds anew each
// second made garbage whose collection was the List's slow tail.
type listConfigs struct {
	pods *parsedConfigs[*runtimeapi.PodSandboxConfig]
	ctrs *parsedConfigs[*runtimeapi.ContainerConfig]

	mu       sync.Mutex
	podItems map[string]*runtimeapi.PodSandbox
	ctrItems map[string]*runtimeapi.Container
	// encoded are the items' wire encodings, by item (list_codec.go).
	encoded map[any][]byte
}

func newListConfigs() *listConfigs {
	return &listConfigs{
		pods:     newParsedConfigs(func() *runtimeapi.PodSandboxConfig { return &runtimeapi.PodSandboxConfig{} }),
		ctrs:     newParsedConfigs(func() *runtimeapi.ContainerConfig { return &runtimeapi.ContainerConfig{} }),
		podItems: map[string]*runtimeapi.PodSandbox{},
		ctrItems: map[string]*runtimeapi.Container{},
		encoded:  map[any][]byte{},
	}
}

// podItem is the List item of a sandbox: the last one built while it
// still says the same (its config parsed once, its state), else a new
// one, kept for the next List. Items are shared by concurrent answers:
// never changed once built.
func (l *listConfigs) podItem(sb store.Sandbox, state runtimeapi.PodSandboxState, cfg *runtimeapi.PodSandboxConfig) *runtimeapi.PodSandbox {
	created := sb.CreatedAt.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.podItems[sb.ID]
	if old != nil && old.State == state && old.CreatedAt == created &&
		old.Metadata == cfg.GetMetadata() && old.RuntimeHandler == sb.Handler {
		return old
	}
	it := &runtimeapi.PodSandbox{
		Id:             sb.ID,
		Metadata:       cfg.GetMetadata(),
		State:          state,
		CreatedAt:      created,
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		RuntimeHandler: sb.Handler,
	}
	l.podItems[sb.ID] = it
	l.remember(old, it)
	return it
}

// ctrItem is podItem for containers.
func (l *listConfigs) ctrItem(c store.Container, state runtimeapi.ContainerState, cfg *runtimeapi.ContainerConfig) *runtimeapi.Container {
	created := c.CreatedAt.UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.ctrItems[c.ID]
	if old != nil && old.State == state && old.CreatedAt == created &&
		old.Metadata == cfg.GetMetadata() && old.ImageRef == c.ImageID && old.PodSandboxId == c.SandboxID &&
		old.Image.GetImage() == c.ImageRef {
		return old
	}
	it := &runtimeapi.Container{
		Id:           c.ID,
		PodSandboxId: c.SandboxID,
		Metadata:     cfg.GetMetadata(),
		Image:        &runtimeapi.ImageSpec{Image: c.ImageRef},
		ImageRef:     c.ImageID,
		ImageId:      c.ImageID,
		State:        state,
		CreatedAt:    created,
		Labels:       cfg.GetLabels(),
		Annotations:  cfg.GetAnnotations(),
	}
	l.ctrItems[c.ID] = it
	l.remember(old, it)
	return it
}

// keepItems drops the items (and their encodings) of records no longer
// listed.
func keepItems[T comparable](l *listConfigs, m map[string]T, ids map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(m) <= 2*len(ids)+16 {
		return
	}
	for id, it := range m {
		if !ids[id] {
			delete(l.encoded, it)
			delete(m, id)
		}
	}
}

// listedPodConfig is a sandbox's config for a List answer (shared).
func (l *listConfigs) listedPodConfig(sb store.Sandbox) (*runtimeapi.PodSandboxConfig, error) {
	return l.pods.get(sb.ID, sb.Config)
}

// listedCtrConfig is a container's config for a List answer (shared).
func (l *listConfigs) listedCtrConfig(c store.Container) (*runtimeapi.ContainerConfig, error) {
	return l.ctrs.get(c.ID, c.Config)
}
