package sandbox

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/macvz/macvz/runtime/store"
)

// VM slots: a host runs a bounded number of VMs per guest OS at once
// (vm.max_macos_vms: Virtualization.framework refuses a third macOS
// guest). A sandbox holds a slot from the start of its boot until its VM
// stops: booting ones are counted here, booted ones from the store.

// vmSlots tracks the boots in progress, by sandbox ID.
type vmSlots struct {
	mu      sync.Mutex
	booting map[string]bootingVM
}

type bootingVM struct {
	os   string
	slot int
}

// osLabel is how messages name a guest OS.
func osLabel(os string) string {
	if os == "darwin" {
		return "macOS"
	}
	return "Linux"
}

func (s *Controller) vmLimit(os string) int {
	if os == "darwin" {
		return s.cfg.MaxMacOSVMs
	}
	return s.cfg.MaxLinuxVMs
}

// slotHolder is a VM of one guest OS that runs or boots.
type slotHolder struct {
	id, name string
	slot     int
	booting  bool
}

// slotHolders lists the VMs of os (other than except's) that run, from
// the store, or boot, from s.slots.
func (s *Controller) slotHolders(os, except string) ([]slotHolder, error) {
	running, err := s.st.Sandboxes(func(sb *store.Sandbox) bool {
		return sb.ID != except && sb.VMStarted && sb.State == store.SandboxReady && sb.VMOS == os && !sb.Node
	})
	if err != nil {
		return nil, err
	}
	var out []slotHolder
	for _, sb := range running {
		out = append(out, slotHolder{id: sb.ID, name: sb.Name, slot: sb.VMSlot})
	}
	s.slots.mu.Lock()
	for id, b := range s.slots.booting {
		if id != except && b.os == os {
			out = append(out, slotHolder{id: id, name: id, slot: b.slot, booting: true})
		}
	}
	s.slots.mu.Unlock()
	return out, nil
}

// vmHolders lists the sandboxes (other than except) whose VM of the
// given OS runs or boots, as "name (id prefix)".
func (s *Controller) vmHolders(os, except string) ([]string, error) {
	hs, err := s.slotHolders(os, except)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range hs {
		if !h.booting {
			out = append(out, fmt.Sprintf("%s (%.12s)", h.name, h.id))
			continue
		}
		if sb, err := s.st.Sandbox(h.id); err == nil {
			h.name = sb.Name
		}
		out = append(out, fmt.Sprintf("%s (%.12s, booting)", h.name, h.id))
	}
	sort.Strings(out)
	return out, nil
}

// freeSlot is the lowest slot number (from 1) of os that no other VM
// running or booting holds.
func (s *Controller) freeSlot(os, except string) (int, error) {
	hs, err := s.slotHolders(os, except)
	if err != nil {
		return 0, err
	}
	used := map[int]bool{}
	for _, h := range hs {
		used[h.slot] = true
	}
	n := 1
	for used[n] {
		n++
	}
	return n, nil
}

// reserveVM takes a slot for a sandbox about to boot a VM of os, or
// fails with ResourceExhausted naming the holders. slot is its number,
// the lowest free one. release gives it back once the boot ended (a
// booted VM then counts through the store, with its slot recorded).
func (s *Controller) reserveVM(sbID, os string) (slot int, release func(), err error) {
	// One reservation at a time: two boots must not both see the last
	// free slot.
	s.slotsReserve.Lock()
	defer s.slotsReserve.Unlock()
	// The node VM (runtime/nodevm) is the daemon's own: it takes no slot
	// the pods' bound counts (kubelet in it sees all of them).
	if sb, err := s.st.Sandbox(sbID); err == nil && sb.Node {
		return 0, func() {}, nil
	}
	if limit := s.vmLimit(os); limit > 0 {
		holders, err := s.vmHolders(os, sbID)
		if err != nil {
			return 0, nil, err
		}
		if len(holders) >= limit {
			s.rec().SlotRefused(os, SlotLimit)
			key := "vm.max_linux_vms"
			if os == "darwin" {
				key = "vm.max_macos_vms"
			}
			return 0, nil, fmt.Errorf("this host runs at most %d %s VMs at once (%s) and these sandboxes hold them: %s; kubelet retries once one stops (give the node maxPods: %d): %w",
				limit, osLabel(os), key, strings.Join(holders, ", "), limit, errdefs.ErrResourceExhausted)
		}
		if os == "linux" {
			// Pooled VMs hold no slot a sandbox needs.
			s.poolEvict(len(holders))
		}
	}
	if slot, err = s.freeSlot(os, sbID); err != nil {
		return 0, nil, err
	}
	s.slots.mu.Lock()
	if s.slots.booting == nil {
		s.slots.booting = map[string]bootingVM{}
	}
	s.slots.booting[sbID] = bootingVM{os: os, slot: slot}
	s.slots.mu.Unlock()
	return slot, func() {
		s.slots.mu.Lock()
		delete(s.slots.booting, sbID)
		s.slots.mu.Unlock()
	}, nil
}

// hypervisorBackoff is how long bootVM waits before trying again when
// the hypervisor itself refuses another VM (VMs of other programs, such
// as Tart, count against Apple's limit too, and one may be stopping).
var hypervisorBackoff = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}

// retryExhausted runs boot until it succeeds or fails with something
// other than ResourceExhausted, waiting between attempts; after the
// last one the error names the VMs of os this daemon runs.
func (s *Controller) retryExhausted(ctx context.Context, sbID, os string, boot func() error) error {
	for attempt := 0; ; attempt++ {
		err := boot()
		if err == nil || !errdefs.IsResourceExhausted(err) {
			return err
		}
		if attempt == len(hypervisorBackoff) || ctx.Err() != nil {
			s.rec().SlotRefused(os, SlotHypervisor)
			holders, _ := s.vmHolders(os, sbID)
			mine := "none"
			if len(holders) > 0 {
				mine = strings.Join(holders, ", ")
			}
			return fmt.Errorf("the hypervisor refuses another %s VM after %d attempts (this daemon runs: %s; VMs of other programs count too): %w",
				osLabel(os), attempt+1, mine, err)
		}
		sbLog(sbID).Warn("the hypervisor refused another VM; trying again", "os", os, "in", hypervisorBackoff[attempt], "err", err)
		waited := time.Now()
		select {
		case <-ctx.Done():
		case <-time.After(hypervisorBackoff[attempt]):
		}
		s.rec().SlotWaited(os, time.Since(waited))
	}
}

// Capacity is whether every bounded guest OS has a free VM slot; Reason
// names a full one, Message has the counts.
type Capacity struct {
	OK              bool
	Reason, Message string
}

// Capacity counts the VMs that run or boot against their bounds.
func (s *Controller) Capacity() Capacity {
	c := Capacity{OK: true}
	var parts []string
	for _, os := range []string{"darwin", "linux"} {
		holders, err := s.vmHolders(os, "")
		if err != nil {
			c.OK, c.Reason, c.Message = false, "StateUnreadable", err.Error()
			return c
		}
		limit := s.vmLimit(os)
		if limit == 0 {
			parts = append(parts, fmt.Sprintf("%s VMs: %d (no bound)", osLabel(os), len(holders)))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s VMs: %d of %d", osLabel(os), len(holders), limit))
		if len(holders) >= limit {
			c.OK, c.Reason = false, osLabel(os)+"VMSlotsFull"
		}
	}
	c.Message = strings.Join(parts, "; ")
	return c
}

// SlotHolder is a sandbox whose VM of one guest OS runs or boots, with
// its pod's identity (store.SandboxSpec; empty in records without one).
type SlotHolder struct {
	SandboxID            string
	Namespace, Name, UID string
	Slot                 int
	Booting              bool
}

// Slots is the bound on the VMs of os (vm.max_macos_vms or
// vm.max_linux_vms; 0 = none) and the sandboxes whose VM of os runs or
// boots: what the device plugin (cri/deviceplugin) shows kubelet.
func (s *Controller) Slots(os string) (limit int, holders []SlotHolder, err error) {
	hs, err := s.slotHolders(os, "")
	if err != nil {
		return 0, nil, err
	}
	for _, h := range hs {
		out := SlotHolder{SandboxID: h.id, Slot: h.slot, Booting: h.booting}
		if sb, err := s.st.Sandbox(h.id); err == nil && sb.Spec != nil {
			out.Namespace, out.Name, out.UID = sb.Spec.Namespace, sb.Spec.Name, sb.Spec.UID
		}
		holders = append(holders, out)
	}
	sort.Slice(holders, func(i, j int) bool { return holders[i].Slot < holders[j].Slot })
	return s.vmLimit(os), holders, nil
}
