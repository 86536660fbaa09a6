package cri

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/agentapi"
	"github.com/macvz/macvz/vmimage"
)

// A container's process as the guest agent runs it: argv, environment,
// working directory, user and capabilities, decided from the CRI config
// and the image's default process the way containerd decides them for
// an OCI spec.

// defaultPath is PATH when neither the image nor the container sets one
// (containerd's default).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// processOf merges an image's default process with a container config,
// as Docker and containerd do: command replaces the entrypoint (and drops
// the image's cmd), args replace cmd; env is the image's, overridden by
// the config's; workdir and user from the config when set.
func processOf(def *vmimage.Process, cfg *runtimeapi.ContainerConfig) (argv, env []string, cwd, user string) {
	var entry, cmd []string
	if def != nil {
		entry, cmd, env, cwd, user = def.Entrypoint, def.Cmd, append([]string(nil), def.Env...), def.WorkingDir, def.User
	}
	if len(cfg.GetCommand()) > 0 {
		entry, cmd = cfg.GetCommand(), nil
	}
	if len(cfg.GetArgs()) > 0 {
		cmd = cfg.GetArgs()
	}
	argv = append(append([]string{}, entry...), cmd...)
	for _, kv := range cfg.GetEnvs() {
		env = setEnv(env, kv.GetKey(), string(kv.GetValue()))
	}
	if cfg.GetWorkingDir() != "" {
		cwd = cfg.GetWorkingDir()
	}
	return argv, env, cwd, user
}

func setEnv(env []string, k, v string) []string {
	for i, e := range env {
		if len(e) > len(k) && e[:len(k)] == k && e[len(k)] == '=' {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// completeEnv adds what containerd adds when missing: PATH and HOSTNAME.
func completeEnv(env []string, hostname string) []string {
	has := func(k string) bool {
		for _, e := range env {
			if strings.HasPrefix(e, k+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		env = append(env, defaultPath)
	}
	if !has("HOSTNAME") && hostname != "" {
		env = append(env, "HOSTNAME="+hostname)
	}
	return env
}

// procUser is who a process runs as: what the host knows, and what the
// agent resolves in the guest's /etc/passwd and /etc/group.
type procUser struct {
	uid, gid      uint32
	groups        []uint32
	username      string // resolved in the guest
	gidFromPasswd bool   // gid from the user's passwd entry
	// Linux guests: the capability set, and no_new_privs.
	restrictCaps bool
	caps         []string
	noNewPrivs   bool
}

// userOf is who a container's processes run as, as containerd decides
// it: run_as_user / run_as_username, else the image's user ("uid",
// "name", "uid:gid", "name:gid"); run_as_group, else the image's gid,
// else the user's primary group in the guest's /etc/passwd; plus the
// groups /etc/group lists the user in and the supplemental groups.
func userOf(sc *runtimeapi.LinuxContainerSecurityContext, imageUser string) (procUser, error) {
	var u procUser
	gidSet := false
	if imageUser != "" {
		name, g, hasG := strings.Cut(imageUser, ":")
		if n, err := strconv.ParseUint(name, 10, 32); err == nil {
			u.uid = uint32(n)
		} else {
			u.username = name
		}
		if hasG {
			n, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return u, fmt.Errorf("image user %q: group %q is not numeric (group names are not resolved): %w", imageUser, g, errdefs.ErrInvalidArgument)
			}
			u.gid, gidSet = uint32(n), true
		}
	}
	if v := sc.GetRunAsUser(); v != nil {
		u.uid, u.username = uint32(v.GetValue()), ""
	} else if n := sc.GetRunAsUsername(); n != "" {
		u.uid, u.username = 0, n
	}
	if g := sc.GetRunAsGroup(); g != nil {
		u.gid, gidSet = uint32(g.GetValue()), true
	}
	u.gidFromPasswd = !gidSet
	u.caps, u.restrictCaps = capabilitiesOf(sc)
	u.noNewPrivs = sc.GetNoNewPrivs()
	for _, g := range sc.GetSupplementalGroups() {
		u.groups = append(u.groups, uint32(g))
	}
	return u, nil
}

// forOS drops what only Linux guests have (capabilities, no_new_privs).
func (u procUser) forOS(goos string) procUser {
	if goos != "linux" {
		u.restrictCaps, u.caps, u.noNewPrivs = false, nil, false
	}
	return u
}

// apply sets the user fields of a CreateProcessRequest.
func (u procUser) apply(req *agentapi.CreateProcessRequest) {
	req.Uid, req.Gid, req.AdditionalGids = u.uid, u.gid, u.groups
	req.Username, req.GidFromPasswd, req.GroupsFromEtc = u.username, u.gidFromPasswd, true
	req.RestrictCapabilities, req.Capabilities, req.NoNewPrivs = u.restrictCaps, u.caps, u.noNewPrivs
}

// defaultCapabilities are what a container that is not privileged keeps
// unless it adds or drops some: containerd's (and Docker's) default set.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// capabilitiesOf is a container's capability set, as containerd computes
// it: privileged keeps everything; else the default set, or every one
// when ALL is added, minus the dropped ones (ALL drops all), plus the
// added ones.
func capabilitiesOf(sc *runtimeapi.LinuxContainerSecurityContext) (caps []string, restrict bool) {
	if sc.GetPrivileged() {
		return nil, false
	}
	norm := func(c string) string {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		return c
	}
	add := map[string]bool{}
	for _, c := range sc.GetCapabilities().GetAddCapabilities() {
		add[norm(c)] = true
	}
	drop := map[string]bool{}
	for _, c := range sc.GetCapabilities().GetDropCapabilities() {
		drop[norm(c)] = true
	}
	if add["ALL"] && !drop["ALL"] && len(drop) == 0 {
		return nil, false
	}
	set := map[string]bool{}
	if !drop["ALL"] {
		for _, c := range defaultCapabilities {
			set[c] = true
		}
	}
	for c := range drop {
		delete(set, c)
	}
	for c := range add {
		if c != "ALL" {
			set[c] = true
		}
	}
	for c := range set {
		caps = append(caps, c)
	}
	slices.Sort(caps)
	return caps, true
}
