package cri

import (
	"log/slog"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/runtime/nodevm"
	"github.com/macvz/macvz/runtime/sandbox"
	"github.com/macvz/macvz/runtime/store"
)

// sandboxSpec decodes what the sandbox controller needs of a pod's CRI
// config; the config's bytes stay in the record for the CRI's own
// answers (labels, annotations, log directory).
func sandboxSpec(cfg *runtimeapi.PodSandboxConfig) *store.SandboxSpec {
	md := cfg.GetMetadata()
	spec := &store.SandboxSpec{
		Namespace:   md.GetNamespace(),
		Name:        md.GetName(),
		UID:         md.GetUid(),
		Hostname:    podHostname(cfg),
		HostNetwork: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE,
		Sysctls:     cfg.GetLinux().GetSysctls(),
		Resources:   resourcesOf(cfg.GetLinux().GetResources()),
	}
	if nodevm.IsNode(cfg.GetLabels()) {
		// Checked by RunPodSandbox.
		spec.NodeShares, _ = nodevm.DecodeShares(cfg.GetAnnotations()[nodevm.SharesAnnotation])
	}
	// Checked by RunPodSandbox (checkVolumeDirs).
	spec.VolumeDirs, _ = decodeVolumeDirs(cfg.GetAnnotations()[sandbox.AnnotationVolumeDirs])
	for _, p := range cfg.GetPortMappings() {
		spec.Ports = append(spec.Ports, store.Port{
			Protocol:      strings.ToLower(p.GetProtocol().String()),
			HostIP:        p.GetHostIp(),
			HostPort:      p.GetHostPort(),
			ContainerPort: p.GetContainerPort(),
		})
	}
	if d := cfg.GetDnsConfig(); d != nil {
		spec.DNS = &store.DNS{Servers: d.GetServers(), Searches: d.GetSearches(), Options: d.GetOptions()}
	}
	return spec
}

// podHostname is the guest's hostname: the pod's, else its name, cut to
// a valid host name.
func podHostname(pod *runtimeapi.PodSandboxConfig) string {
	h := pod.GetHostname()
	if h == "" {
		h = pod.GetMetadata().GetName()
	}
	if len(h) > 63 {
		h = h[:63]
	}
	return strings.TrimRight(h, "-.")
}

// resourcesOf is the CPU (millicores) and memory of CRI Linux resources:
// the CFS quota when set (a limit), else the shares (a request).
func resourcesOf(r *runtimeapi.LinuxContainerResources) store.Resources {
	if r == nil {
		return store.Resources{}
	}
	var milli int64
	switch {
	case r.GetCpuQuota() > 0 && r.GetCpuPeriod() > 0:
		milli = r.GetCpuQuota() * 1000 / r.GetCpuPeriod()
	case r.GetCpuShares() > 2: // 2 is kubelet's "no request" minimum
		milli = r.GetCpuShares() * 1000 / 1024
	}
	return store.Resources{MilliCPU: milli, MemoryBytes: r.GetMemoryLimitInBytes()}
}

// fillSpecs gives the records of sandboxes made by a daemon before
// sandboxes had a typed spec one, decoded from their CRI config.
func (s *Service) fillSpecs() {
	sbs, err := s.st.Sandboxes(func(sb *store.Sandbox) bool { return sb.Spec == nil })
	if err != nil {
		slog.Warn("listing sandboxes without a spec", "err", err)
		return
	}
	for _, sb := range sbs {
		cfg, err := podConfig(sb)
		if err != nil {
			sbLog(sb.ID).Warn("a sandbox's stored config does not decode; it gets an empty spec", "err", err)
			cfg = &runtimeapi.PodSandboxConfig{}
		}
		if _, err := s.st.UpdateSandbox(sb.ID, func(r *store.Sandbox) error { r.Spec = sandboxSpec(cfg); return nil }); err != nil {
			sbLog(sb.ID).Warn("recording a sandbox's spec", "err", err)
		}
	}
}
