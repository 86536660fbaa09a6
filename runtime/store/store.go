// Package store persists sandboxes and containers in bbolt, so a daemon
// restart loses nothing. Records are JSON; the CRI configs inside them are
// kept as protobuf bytes, exactly as kubelet sent them.
//
// Names are unique like containerd's: a sandbox name is
// <name>_<namespace>_<uid>_<attempt>, a container name
// <name>_<sandbox name>_<sandbox namespace>_<sandbox uid>_<attempt>, and a
// second object with a taken name is ErrAlreadyExists. IDs are 64 hex
// digits; any unique prefix finds the object, as containerd's truncindex.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"

	"github.com/macvz/macvz/runtime/vm"
)

var (
	bucketSandboxes  = []byte("sandboxes.v1")
	bucketContainers = []byte("containers.v1")
	bucketNames      = []byte("names.v1") // "s/<name>" or "c/<name>" → id
)

// SandboxState is a sandbox's CRI state.
type SandboxState string

const (
	SandboxReady    SandboxState = "ready"
	SandboxNotReady SandboxState = "notready"
)

// Sandbox is one pod: its VM and network attachment.
type Sandbox struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Config []byte `json:"config"` // runtimeapi.PodSandboxConfig, protobuf
	// Spec is what the sandbox's VM and network are made from, decoded
	// from Config once (RunPodSandbox); nil only in records written
	// before it existed, until the daemon's start fills it in.
	Spec      *SandboxSpec `json:"spec,omitempty"`
	Handler   string       `json:"handler,omitempty"`
	State     SandboxState `json:"state"`
	CreatedAt time.Time    `json:"createdAt"`
	// Dir is the sandbox's state directory (shim socket, VM spec, logs).
	Dir string `json:"dir"`
	// VMImage is the image ID whose base the VM disk is cloned from, set by
	// the first VM-image container (or the pod annotation).
	VMImage string `json:"vmImage,omitempty"`
	// VMContent identifies what the VM boots (the VM image's layers:
	// kernel, initrd, disk): images that differ only in their config
	// (default process) boot the same VM and may share a pod.
	VMContent string `json:"vmContent,omitempty"`
	// VMStarted is set once the VM has booted and its agent answered.
	VMStarted bool `json:"vmStarted,omitempty"`
	// VMCPUs and VMMemoryBytes are the size the running VM booted with
	// (0: not recorded, a VM of an older macvz); VMMemoryTarget is the
	// memory a resize left it (0: all it booted with). Set with VMStarted.
	VMCPUs         int   `json:"vmCPUs,omitempty"`
	VMMemoryBytes  int64 `json:"vmMemoryBytes,omitempty"`
	VMMemoryTarget int64 `json:"vmMemoryTarget,omitempty"`
	// VMBoot is how the running VM came up: "cold", "warm" (from a saved
	// state) or "checkpoint" (resumed from a pod checkpoint); VMBootedAt
	// when. Set with VMStarted ("" and zero: a VM of an older macvz).
	VMBoot     string    `json:"vmBoot,omitempty"`
	VMBootedAt time.Time `json:"vmBootedAt,omitzero"`
	// VMMinMemory is the image's minimum memory (0: none): a resize
	// never takes the VM below it, as its boot never does.
	VMMinMemory int64 `json:"vmMinMemory,omitempty"`
	// GuestCPUQuota is the CFS quota (µs per 100 ms) a resize put on the
	// guest's pod cgroup to hold the pod below its VM's vCPUs (0: none).
	GuestCPUQuota int64 `json:"guestCPUQuota,omitempty"`
	// VMOS is the guest's OS ("darwin", "linux"), set with VMImage: the
	// host limits how many macOS VMs run at once.
	VMOS string `json:"vmOS,omitempty"`
	// VMSlot is the VM slot (1..vm.max_*_vms) the VM holds while it runs
	// or boots: warm starts of macOS guests keep one identity per slot.
	VMSlot int `json:"vmSlot,omitempty"`
	// Disk is the snapshotter key of the sandbox's disk clone, if any.
	Disk string `json:"disk,omitempty"`
	// IPs are the pod's addresses, the pod IP first.
	IPs []string `json:"ips,omitempty"`
	// Network is the sandbox's network attachment while it has one
	// (RunPodSandbox's CNI ADD until StopPodSandbox's DEL).
	Network *Network `json:"network,omitempty"`
	// Creating is set while RunPodSandbox runs: a sandbox still creating
	// when the daemon starts was never handed to its caller, who retries
	// with the same name, so it is removed.
	Creating bool `json:"creating,omitempty"`
	// Reason says why a sandbox is NotReady when it did not stop by
	// StopPodSandbox ("the VM's shim is gone").
	Reason string `json:"reason,omitempty"`
	// Node marks the node VM (runtime/nodevm): the CRI shows it to the
	// daemon's node-VM supervisor only.
	Node bool `json:"node,omitempty"`
	// Restore is set on a sandbox RestorePod made, until its VM resumes
	// from the checkpoint copied into its directory (the first
	// StartContainer).
	Restore *Restore `json:"restore,omitempty"`
}

// Restore is what a restored sandbox's VM resumes with: its size, devices
// and identity as they were when checkpointed.
type Restore struct {
	// Dir holds the VM state ("state") and the disk files, cloned from
	// the checkpoint directory.
	Dir         string   `json:"dir"`
	Disks       []string `json:"disks,omitempty"`
	CPUs        int      `json:"cpus"`
	MemoryBytes int64    `json:"memoryBytes"`
	// MAC is the NIC's address when checkpointed: the guest's agent moves
	// the NIC to the sandbox's own.
	MAC       string `json:"mac,omitempty"`
	MachineID []byte `json:"machineId,omitempty"`
}

// Network is what a sandbox's VM needs of its CNI attachment.
type Network struct {
	NIC vm.NIC `json:"nic"`
	// IfName is the guest interface's name (CNI_IFNAME).
	IfName string `json:"ifName"`
	MTU    int    `json:"mtu,omitempty"`
	// Addresses are the guest interface's addresses in CIDR form.
	Addresses []string `json:"addresses,omitempty"`
	Routes    []Route  `json:"routes,omitempty"`
	// Subnet and Gateway (vmnet, socket: addresses by DHCP) are the
	// network's guest subnet (CIDR) and the host's address in it; a
	// learned pod IP must be inside the one and is never the other.
	Subnet  string `json:"subnet,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	// LAN: the guest's address comes from the LAN's DHCP server, which
	// leaves no lease on the host (socket_vmnet's bridged mode).
	LAN bool `json:"lan,omitempty"`
	// DNS is the attachment's DNS config, used when the pod has none.
	DNS DNS `json:"dns,omitzero"`
	// PortsByDaemon: the plugins did not handle the hostPorts; the daemon
	// proxies them (macOS).
	PortsByDaemon bool `json:"portsByDaemon,omitempty"`
}

// SandboxSpec is the typed description of a sandbox's VM and network:
// what the sandbox controller needs and nothing CRI-only (labels,
// annotations, log directory).
type SandboxSpec struct {
	// Namespace, Name and UID identify the pod to the network plugins
	// (the Kubernetes CNI_ARGS).
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
	// Hostname is the guest's host name (already cut to a valid one).
	Hostname string `json:"hostname,omitempty"`
	// HostNetwork asks for the node's network: the hypervisor's NAT.
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// Ports are the pod's port mappings (hostPorts, and a host-network
	// pod's container ports).
	Ports []Port `json:"ports,omitempty"`
	// DNS is the pod's own resolver configuration; nil = the network's.
	DNS     *DNS              `json:"dns,omitempty"`
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Resources size the VM (zero = the containers', else the defaults).
	Resources Resources `json:"resources,omitzero"`
	// VolumeDirs are host directories the pod's annotation
	// macvz.io/volume-dirs adds to a vz VM's volume share (checked at
	// RunPodSandbox: absolute, clean, real directories).
	VolumeDirs []string `json:"volumeDirs,omitempty"`
	// NodeShares are the node VM's (runtime/nodevm) host directories,
	// each a share of its own (vm.Share.Passthrough) that its kubelet's
	// mounts of them (or below them) use directly.
	NodeShares []string `json:"nodeShares,omitempty"`
	// NoAgent: the VM's image has no macvz agent (runtime handler agent
	// = "none", annotation macvz.io/agent: none). The VM is ready once
	// it runs; nothing is configured in the guest.
	NoAgent bool `json:"noAgent,omitempty"`
}

// SpecOf is a record's spec; empty for a record without one.
func SpecOf(sb Sandbox) SandboxSpec {
	if sb.Spec == nil {
		return SandboxSpec{}
	}
	return *sb.Spec
}

// Port is one port mapping of a pod.
type Port struct {
	Protocol      string `json:"protocol"` // "tcp", "udp" or "sctp"
	HostIP        string `json:"hostIP,omitempty"`
	HostPort      int32  `json:"hostPort,omitempty"`
	ContainerPort int32  `json:"containerPort"`
}

// Resources are CPU (millicores) and memory (bytes): a limit where one
// is set, else a request.
type Resources struct {
	MilliCPU    int64 `json:"milliCPU,omitempty"`
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
}

// Route is a guest route; an empty Dst is the default route.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// DNS is a resolver configuration.
type DNS struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// ContainerState is a container's CRI state.
type ContainerState string

const (
	ContainerCreated ContainerState = "created"
	ContainerRunning ContainerState = "running"
	ContainerExited  ContainerState = "exited"
	ContainerUnknown ContainerState = "unknown"
)

// Container is one process tree in a sandbox VM.
type Container struct {
	ID        string         `json:"id"`
	SandboxID string         `json:"sandboxId"`
	Name      string         `json:"name"`
	Config    []byte         `json:"config"` // runtimeapi.ContainerConfig, protobuf
	ImageRef  string         `json:"imageRef"`
	ImageID   string         `json:"imageId"`
	IsVM      bool           `json:"isVm,omitempty"` // a VM-image container with no command: the VM itself
	State     ContainerState `json:"state"`
	LogPath   string         `json:"logPath,omitempty"`

	CreatedAt  time.Time `json:"createdAt"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	ExitCode   int32     `json:"exitCode"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	// Node: the container is in the node VM (Sandbox.Node).
	Node bool `json:"node,omitempty"`
	// VolumeImages are the IDs of the images its image volumes mount:
	// they cannot be removed while it exists.
	VolumeImages []string `json:"volumeImages,omitempty"`
	// Restored: its process is in a checkpoint's VM state (RestorePod),
	// stopped; StartContainer resumes it instead of starting one.
	Restored bool `json:"restored,omitempty"`
}

// Store is the state database, with every record also kept decoded in
// memory (as containerd keeps its sandbox and container stores): reads,
// List and Status above all, which kubelet makes every second, never touch
// bbolt or JSON. Writes go to bbolt first and to memory once committed,
// one at a time (wmu), so memory always holds the last committed record.
//
// A record a read returns shares its slices, maps and pointed-to structs
// with the index: never change one in place; change records through
// Update*, which work on a copy decoded from the database.
type Store struct {
	db  *bolt.DB
	wmu sync.Mutex // one write at a time, database then index

	mu   sync.RWMutex
	sbs  map[string]*Sandbox
	ctrs map[string]*Container
}

// Open opens (creating) the database at path.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("state database %s (is another macvz using it?): %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSandboxes, bucketContainers, bucketNames} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{db: db}
	if s.sbs, err = load[Sandbox](db, sandboxes); err == nil {
		s.ctrs, err = load[Container](db, containers)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// NewID returns a fresh 64-hex-digit ID.
func NewID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// kind is one of the two record types.
type kind struct {
	bucket []byte
	prefix string // in the names bucket
	what   string // for messages
}

var (
	sandboxes  = kind{bucketSandboxes, "s/", "pod sandbox"}
	containers = kind{bucketContainers, "c/", "container"}
)

func load[T any](db *bolt.DB, k kind) (map[string]*T, error) {
	out := map[string]*T{}
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(k.bucket).ForEach(func(id, b []byte) error {
			v := new(T)
			if err := json.Unmarshal(b, v); err != nil {
				return fmt.Errorf("%s %s: %w", k.what, id, err)
			}
			out[string(id)] = v
			return nil
		})
	})
	return out, err
}

// put stores v and returns the bytes stored, from which the index
// decodes its own copy.
func put(tx *bolt.Tx, k kind, id string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return b, tx.Bucket(k.bucket).Put([]byte(id), b)
}

// decodeIndexed is the index's copy of a record: decoded from the bytes
// stored, so it shares nothing with the caller's.
func decodeIndexed[T any](b []byte) (*T, error) {
	c := new(T)
	return c, json.Unmarshal(b, c)
}

// create stores a new record, reserving its name.
func create[T any](s *Store, idx map[string]*T, k kind, id, name string, v *T) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var stored []byte
	err := s.db.Update(func(tx *bolt.Tx) error {
		names := tx.Bucket(bucketNames)
		if other := names.Get([]byte(k.prefix + name)); other != nil {
			return fmt.Errorf("%s name %q is reserved for %s %s: %w", k.what, name, k.what, other, errdefs.ErrAlreadyExists)
		}
		if tx.Bucket(k.bucket).Get([]byte(id)) != nil {
			return fmt.Errorf("%s %s: %w", k.what, id, errdefs.ErrAlreadyExists)
		}
		if err := names.Put([]byte(k.prefix+name), []byte(id)); err != nil {
			return err
		}
		var err error
		stored, err = put(tx, k, id, v)
		return err
	})
	if err != nil {
		return err
	}
	c, err := decodeIndexed[T](stored)
	if err != nil {
		return err
	}
	s.mu.Lock()
	idx[id] = c
	s.mu.Unlock()
	return nil
}

// resolve finds the full ID for id or a unique prefix of it in idx.
// The caller holds s.mu.
func resolve[T any](idx map[string]*T, k kind, id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("%s ID is empty: %w", k.what, errdefs.ErrInvalidArgument)
	}
	if _, ok := idx[id]; ok {
		return id, nil
	}
	var found string
	for key := range idx {
		if strings.HasPrefix(key, id) {
			if found != "" {
				return "", fmt.Errorf("%s ID prefix %q is ambiguous: %w", k.what, id, errdefs.ErrInvalidArgument)
			}
			found = key
		}
	}
	if found == "" {
		return "", fmt.Errorf("%s %q: %w", k.what, id, errdefs.ErrNotFound)
	}
	return found, nil
}

func get[T any](s *Store, idx map[string]*T, k kind, id string) (T, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	full, err := resolve(idx, k, id)
	if err != nil {
		var zero T
		return zero, err
	}
	return *idx[full], nil
}

// update applies fn to a record in one transaction; fn's error aborts it.
// fn works on a copy decoded from the database, never on the index's.
func update[T any](s *Store, idx map[string]*T, k kind, id string, fn func(*T) error) (T, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	full, err := resolve(idx, k, id)
	s.mu.RUnlock()
	var v T
	if err != nil {
		return v, err
	}
	var stored []byte
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(k.bucket).Get([]byte(full))
		if b == nil {
			return fmt.Errorf("%s %q: %w", k.what, id, errdefs.ErrNotFound)
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		if err := fn(&v); err != nil {
			return err
		}
		stored, err = put(tx, k, full, &v)
		return err
	})
	if err != nil {
		return v, err
	}
	c, err := decodeIndexed[T](stored)
	if err != nil {
		return v, err
	}
	s.mu.Lock()
	idx[full] = c
	s.mu.Unlock()
	return v, nil
}

func remove[T any](s *Store, idx map[string]*T, k kind, id, name string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(k.bucket).Delete([]byte(id)); err != nil {
			return err
		}
		names := tx.Bucket(bucketNames)
		if string(names.Get([]byte(k.prefix+name))) == id {
			return names.Delete([]byte(k.prefix + name))
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	delete(idx, id)
	s.mu.Unlock()
	return nil
}

// list returns copies of the records keep accepts, oldest first.
func list[T any](s *Store, idx map[string]*T, keep func(*T) bool, created func(*T) time.Time) []T {
	ptrs := view(s, idx, keep, created)
	out := make([]T, len(ptrs))
	for i, p := range ptrs {
		out[i] = *p
	}
	return out
}

// view returns the stored records keep accepts, oldest first, without
// copying them (records are hundreds of bytes, and a List at a thousand
// sandboxes would copy each every second): an update replaces a record,
// never changes it, so they stay as they are; neither keep nor the
// caller may change them.
func view[T any](s *Store, idx map[string]*T, keep func(*T) bool, created func(*T) time.Time) []*T {
	s.mu.RLock()
	ptrs := make([]*T, 0, len(idx))
	for _, v := range idx {
		ptrs = append(ptrs, v)
	}
	s.mu.RUnlock()
	if keep != nil {
		// Outside the lock: a keep may look something up in the store.
		ptrs = slices.DeleteFunc(ptrs, func(p *T) bool { return !keep(p) })
	}
	slices.SortFunc(ptrs, func(a, b *T) int { return created(a).Compare(created(b)) })
	return ptrs
}

// CreateSandbox stores a new sandbox; its name must be free.
func (s *Store) CreateSandbox(sb *Sandbox) error {
	return create(s, s.sbs, sandboxes, sb.ID, sb.Name, sb)
}

// Sandbox finds a sandbox by ID or unique ID prefix.
func (s *Store) Sandbox(id string) (Sandbox, error) { return get(s, s.sbs, sandboxes, id) }

// UpdateSandbox changes a sandbox atomically.
func (s *Store) UpdateSandbox(id string, fn func(*Sandbox) error) (Sandbox, error) {
	return update(s, s.sbs, sandboxes, id, fn)
}

// DeleteSandbox removes a sandbox record and frees its name.
func (s *Store) DeleteSandbox(sb Sandbox) error { return remove(s, s.sbs, sandboxes, sb.ID, sb.Name) }

// Sandboxes lists sandboxes, oldest first, keeping those keep accepts.
func (s *Store) Sandboxes(keep func(*Sandbox) bool) ([]Sandbox, error) {
	return list(s, s.sbs, keep, func(sb *Sandbox) time.Time { return sb.CreatedAt }), nil
}

// SandboxesView is Sandboxes without the copies: the stored records,
// which nobody may change (see view).
func (s *Store) SandboxesView(keep func(*Sandbox) bool) []*Sandbox {
	return view(s, s.sbs, keep, func(sb *Sandbox) time.Time { return sb.CreatedAt })
}

// CreateContainer stores a new container; its sandbox must exist and its
// name be free.
func (s *Store) CreateContainer(c *Container) error {
	if _, err := s.Sandbox(c.SandboxID); err != nil {
		return err
	}
	return create(s, s.ctrs, containers, c.ID, c.Name, c)
}

// Container finds a container by ID or unique ID prefix.
func (s *Store) Container(id string) (Container, error) { return get(s, s.ctrs, containers, id) }

// UpdateContainer changes a container atomically.
func (s *Store) UpdateContainer(id string, fn func(*Container) error) (Container, error) {
	return update(s, s.ctrs, containers, id, fn)
}

// DeleteContainer removes a container record and frees its name.
func (s *Store) DeleteContainer(c Container) error {
	return remove(s, s.ctrs, containers, c.ID, c.Name)
}

// ContainersView is Containers without the copies: the stored records,
// which nobody may change (see view).
func (s *Store) ContainersView(keep func(*Container) bool) []*Container {
	return view(s, s.ctrs, keep, func(c *Container) time.Time { return c.CreatedAt })
}

// Containers lists containers, oldest first, keeping those keep accepts.
func (s *Store) Containers(keep func(*Container) bool) ([]Container, error) {
	return list(s, s.ctrs, keep, func(c *Container) time.Time { return c.CreatedAt }), nil
}
