package agentinstall

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"howett.net/plist"
)

// Which disk to write to. A macOS VM disk is a GUID partition table with
// three APFS partitions (content hints Apple_APFS_ISC, Apple_APFS,
// Apple_APFS_Recovery). Attaching it makes a disk for the image
// ("disk4", its partitions "disk4s1"...) and, for each APFS partition,
// a synthesized disk for the APFS container on it, whose slices are the
// container's volumes. `hdiutil attach -plist` may list those synthesized
// containers too (content hint EF57347C-0000-11AA-AA11-00306543ECAC, the
// APFS container type; their volumes 41504653-0000-11AA-AA11-00306543ECAC,
// "APFS"), in any order (they may come before the image's own disk), and
// disk numbers say nothing ("disk1" is no prefix of "disk10"). The
// image's disk is the one whole disk with a partition
// scheme; it is what hdiutil detach takes (detaching it detaches the
// containers on it). The volume written to is the one with the Data role
// in the container whose physical store is one of its partitions
// (diskutil apfs list): /Library and /usr/local are on the Data volume
// (the System volume is sealed and read-only; macOS firmlinks those
// directories into the Data volume). Anything else in hdiutil's or
// diskutil's answer is an error, never a guess.

const (
	// apfsContainerHint is the content hint of a synthesized APFS
	// container disk.
	apfsContainerHint = "EF57347C-0000-11AA-AA11-00306543ECAC"
	// gptHint is the content hint of a disk with a GUID partition table.
	gptHint = "GUID_partition_scheme"
)

// isContainerHint: hint is the APFS container type, in full or cut to
// the 31 characters hdiutil's text output shows (in case its property
// list ever does the same).
func isContainerHint(hint string) bool {
	return len(hint) >= 31 && strings.HasPrefix(strings.ToUpper(apfsContainerHint), strings.ToUpper(hint))
}

// bsdDisk splits a BSD disk name: "disk4" is whole disk "disk4",
// "disk4s2" slice 2 of it. ok is false for anything else.
func bsdDisk(name string) (whole string, slice bool, ok bool) {
	rest, found := strings.CutPrefix(name, "disk")
	if !found || len(name) > 20 {
		return "", false, false
	}
	num, sl, hasSlice := strings.Cut(rest, "s")
	if !digits(num) || (hasSlice && !digits(sl)) {
		return "", false, false
	}
	return "disk" + num, hasSlice, true
}

// digits: one or more ASCII digits, no leading zero.
func digits(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// attachment is what `hdiutil attach` made of the image.
type attachment struct {
	// whole is the image's disk ("disk4"), what hdiutil detach takes.
	whole string
	// parts are its partitions ("disk4s2").
	parts map[string]bool
	// containers are the synthesized APFS container disks hdiutil
	// listed with it ("disk6"); none on systems that do not list them.
	containers map[string]bool
}

// attachedDevices reads `hdiutil attach -plist`. On an error, whole is
// still set when the image's disk was found (for the caller to detach).
func attachedDevices(out []byte) (attachment, error) {
	var a struct {
		Entities []struct {
			DevEntry    string `plist:"dev-entry"`
			ContentHint string `plist:"content-hint"`
		} `plist:"system-entities"`
	}
	var att attachment
	if _, err := plist.Unmarshal(out, &a); err != nil {
		return att, fmt.Errorf("reading hdiutil's answer: %w", err)
	}
	type entity struct{ dev, whole, hint string }
	var wholes, sliceEnts []entity
	for _, e := range a.Entities {
		dev, found := strings.CutPrefix(e.DevEntry, "/dev/")
		w, slice, ok := bsdDisk(dev)
		if !found || !ok {
			return att, fmt.Errorf("hdiutil attached %q, which is not a disk device: %w", e.DevEntry, errdefs.ErrFailedPrecondition)
		}
		if slice {
			sliceEnts = append(sliceEnts, entity{dev, w, e.ContentHint})
		} else {
			wholes = append(wholes, entity{dev, w, e.ContentHint})
		}
	}
	att.parts, att.containers = map[string]bool{}, map[string]bool{}
	var disks []entity
	for _, w := range wholes {
		if isContainerHint(w.hint) {
			att.containers[w.dev] = true
		} else {
			disks = append(disks, w)
		}
	}
	switch len(disks) {
	case 0:
		return att, fmt.Errorf("hdiutil attached no disk with a partition table (%d devices): %w", len(a.Entities), errdefs.ErrFailedPrecondition)
	case 1:
	default:
		var names []string
		for _, d := range disks {
			names = append(names, d.dev)
		}
		sort.Strings(names)
		return att, fmt.Errorf("hdiutil attached several disks (%s); not knowing which is the image's, nothing is written (detach them with hdiutil detach): %w", strings.Join(names, ", "), errdefs.ErrFailedPrecondition)
	}
	att.whole = disks[0].dev
	if disks[0].hint != gptHint {
		return att, fmt.Errorf("%s is not a macOS VM disk: its content is %q, not a GUID partition table: %w", att.whole, disks[0].hint, errdefs.ErrFailedPrecondition)
	}
	for _, s := range sliceEnts {
		switch {
		case s.whole == att.whole:
			att.parts[s.dev] = true
		case att.containers[s.whole]:
			// A volume of a synthesized container: diskutil says which.
		default:
			return att, fmt.Errorf("hdiutil attached %s, a slice of %s, which it did not list: %w", s.dev, s.whole, errdefs.ErrFailedPrecondition)
		}
	}
	if len(att.parts) == 0 {
		return att, fmt.Errorf("%s has no partitions: not a macOS VM disk: %w", att.whole, errdefs.ErrFailedPrecondition)
	}
	return att, nil
}

// dataVolume reads `diskutil apfs list -plist` and returns the device of
// the volume with the Data role in the APFS container stored on the
// image's partitions.
func dataVolume(out []byte, att attachment) (string, error) {
	var l struct {
		Containers []struct {
			Reference      string `plist:"ContainerReference"`
			PhysicalStores []struct {
				DeviceIdentifier string `plist:"DeviceIdentifier"`
			} `plist:"PhysicalStores"`
			Volumes []struct {
				DeviceIdentifier string   `plist:"DeviceIdentifier"`
				Name             string   `plist:"Name"`
				Roles            []string `plist:"Roles"`
			} `plist:"Volumes"`
		} `plist:"Containers"`
	}
	if _, err := plist.Unmarshal(out, &l); err != nil {
		return "", fmt.Errorf("reading diskutil's APFS list: %w", err)
	}
	var found []string
	for _, c := range l.Containers {
		ours, theirs := 0, 0
		for _, s := range c.PhysicalStores {
			if att.parts[s.DeviceIdentifier] {
				ours++
			} else {
				theirs++
			}
		}
		if ours == 0 {
			continue
		}
		if theirs > 0 {
			return "", fmt.Errorf("APFS container %s is stored on the image and on other disks: %w", c.Reference, errdefs.ErrFailedPrecondition)
		}
		if w, slice, ok := bsdDisk(c.Reference); !ok || slice || w != c.Reference {
			return "", fmt.Errorf("diskutil names the image's APFS container %q: %w", c.Reference, errdefs.ErrFailedPrecondition)
		}
		if len(att.containers) > 0 && !att.containers[c.Reference] {
			return "", fmt.Errorf("the APFS container %s on the image is not one hdiutil attached: %w", c.Reference, errdefs.ErrFailedPrecondition)
		}
		for _, v := range c.Volumes {
			if !slices.Contains(v.Roles, "Data") {
				continue
			}
			if w, slice, ok := bsdDisk(v.DeviceIdentifier); !ok || !slice || w != c.Reference {
				return "", fmt.Errorf("the Data volume %q is not a volume of its container %s: %w", v.DeviceIdentifier, c.Reference, errdefs.ErrFailedPrecondition)
			}
			found = append(found, v.DeviceIdentifier)
		}
	}
	sort.Strings(found)
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no APFS volume with the Data role: not a macOS VM disk, or macOS is not installed on it yet: %w", errdefs.ErrFailedPrecondition)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("several APFS Data volumes (%s): %w", strings.Join(found, ", "), errdefs.ErrFailedPrecondition)
}
