package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containernetworking/cni/libcni"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/internal/atomicfile"
)

// UpdateRuntimeConfig takes the node's pod CIDRs, as containerd does:
// kubelet sends runtime_config.network_config.pod_cidr (comma-separated,
// one per family for dual stack) once the controller-manager has given
// its Node a podCIDR, and again when that changes. With
// network.conf_template set, the template is rendered into
// <conf_dir>/10-macvz.conflist (templateConfName), so each node's pods get
// addresses from its own range; without one the CIDR is only recorded and
// the conf dir is left to whatever else writes it (containerd logs the
// same). The CIDR is persisted (<root>/pod-cidr) for the next start.
//
// The rendered file has a fixed name, like containerd's
// 10-containerd-net.conflist: cnimgr uses the first configuration in
// name order, so it must sort first in conf_dir, or network.name must
// name the template's network. cnimgr reads conf_dir at every call, so
// the new file is used from the next Status or RunPodSandbox on.
//
// An empty pod_cidr is a no-op; a malformed CIDR is InvalidArgument and
// changes nothing. Calls are serialised and idempotent: the conflist and
// the record are rewritten only when their content changes.
func (s *Service) UpdateRuntimeConfig(ctx context.Context, r *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	raw := r.GetRuntimeConfig().GetNetworkConfig().GetPodCidr()
	if strings.TrimSpace(raw) == "" {
		return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
	}
	cidrs, err := parsePodCIDRs(raw)
	if err != nil {
		return nil, err
	}
	s.podCIDRMu.Lock()
	defer s.podCIDRMu.Unlock()
	if s.cfg.Network.ConfTemplate == "" {
		slog.Info("pod CIDR received, but network.conf_template is not set: the network configuration in conf_dir is left as it is (another component must write it)",
			"pod_cidr", strings.Join(cidrs, ","), "conf_dir", s.cfg.Network.ConfDir)
	} else if err := s.renderConfTemplate(cidrs); err != nil {
		return nil, err
	}
	if err := s.savePodCIDRs(cidrs); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

// Names of the files UpdateRuntimeConfig writes.
const (
	// templateConfName is the conflist rendered from network.conf_template
	// in network.conf_dir.
	templateConfName = "10-macvz.conflist"
	// podCIDRFile, under root, holds the last pod CIDRs kubelet sent
	// (comma-separated, one line).
	podCIDRFile = "pod-cidr"
)

// confTemplateData is what network.conf_template sees: containerd's
// cniConfigTemplate.
type confTemplateData struct {
	// PodCIDR is the first of the node's pod CIDRs.
	PodCIDR string
	// PodCIDRRanges are all of them, in kubelet's order.
	PodCIDRRanges []string
	// Routes are the default routes of the families present:
	// "0.0.0.0/0" and/or "::/0".
	Routes []string
}

// parsePodCIDRs validates kubelet's comma-separated pod_cidr and returns
// the CIDRs in canonical form, in its order.
func parsePodCIDRs(raw string) ([]string, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pod_cidr %q: %s: %w", raw, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	var out []string
	for _, f := range strings.Split(raw, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, bad("an empty entry (want CIDRs separated by commas)")
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, bad("%q is not a CIDR (address/prefix length): %v", f, err)
		}
		if p != p.Masked() {
			return nil, bad("%q has host bits set; the network is %s", f, p.Masked())
		}
		out = append(out, p.String())
	}
	return out, nil
}

// templateData is the template's data for cidrs (valid, canonical).
func templateData(cidrs []string) confTemplateData {
	var v4, v6 bool
	for _, c := range cidrs {
		if netip.MustParsePrefix(c).Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	d := confTemplateData{PodCIDR: cidrs[0], PodCIDRRanges: cidrs}
	if v4 {
		d.Routes = append(d.Routes, "0.0.0.0/0")
	}
	if v6 {
		d.Routes = append(d.Routes, "::/0")
	}
	return d
}

// renderConfTemplate renders network.conf_template for cidrs and writes
// it to <conf_dir>/templateConfName when its content differs. The
// template is read again each time: an edited one needs no restart.
func (s *Service) renderConfTemplate(cidrs []string) error {
	path := s.cfg.Network.ConfTemplate
	t, err := config.ParseConfTemplate(path)
	if err != nil {
		return fmt.Errorf("network.conf_template: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, templateData(cidrs)); err != nil {
		return fmt.Errorf("network.conf_template %s: %v: %w", path, err, errdefs.ErrFailedPrecondition)
	}
	if _, err := libcni.NetworkConfFromBytes(buf.Bytes()); err != nil {
		return fmt.Errorf("network.conf_template %s renders no CNI configuration list for pod CIDR %s: %v: %w",
			path, strings.Join(cidrs, ","), err, errdefs.ErrFailedPrecondition)
	}
	dir := s.cfg.Network.ConfDir
	out := filepath.Join(dir, templateConfName)
	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, buf.Bytes()) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("network.conf_dir: %w", err)
	}
	if err := atomicfile.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the network configuration from network.conf_template: %w", err)
	}
	slog.Info("network configuration rendered from network.conf_template", "pod_cidr", strings.Join(cidrs, ","), "template", path, "file", out)
	if s.cfg.Network.Name == "" {
		if files, err := libcni.ConfFiles(dir, []string{".conflist", ".conf", ".json"}); err == nil && len(files) > 0 {
			sort.Strings(files)
			if files[0] != out {
				slog.Warn("the network configuration rendered from network.conf_template is not the first in conf_dir, so it is not used: remove the other, or set network.name",
					"used", files[0], "rendered", out)
			}
		}
	}
	return nil
}

// savePodCIDRs records cidrs in <root>/pod-cidr, when they changed.
func (s *Service) savePodCIDRs(cidrs []string) error {
	p := filepath.Join(s.cfg.Root, podCIDRFile)
	data := []byte(strings.Join(cidrs, ",") + "\n")
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, data) {
		return nil
	}
	if err := atomicfile.WriteFile(p, data, 0o644); err != nil {
		return fmt.Errorf("recording the pod CIDR: %w", err)
	}
	slog.Info("pod CIDR recorded", "pod_cidr", strings.Join(cidrs, ","))
	return nil
}

// restorePodCIDRs renders network.conf_template at start with the pod
// CIDRs recorded by the last UpdateRuntimeConfig, so an edited template
// (or a lost conflist) takes effect before kubelet calls again; kubelet
// only re-sends the CIDR when it restarts itself. Failures are logged:
// the next UpdateRuntimeConfig reports them.
func (s *Service) restorePodCIDRs() {
	if s.cfg.Network.ConfTemplate == "" {
		return
	}
	p := filepath.Join(s.cfg.Root, podCIDRFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return // kubelet has sent none yet
	}
	if err != nil {
		slog.Warn("reading the recorded pod CIDR", "err", err)
		return
	}
	cidrs, err := parsePodCIDRs(strings.TrimSpace(string(b)))
	if err != nil {
		slog.Warn("ignoring the recorded pod CIDR", "file", p, "err", err)
		return
	}
	s.podCIDRMu.Lock()
	defer s.podCIDRMu.Unlock()
	if err := s.renderConfTemplate(cidrs); err != nil {
		slog.Warn("rendering network.conf_template with the recorded pod CIDR", "pod_cidr", strings.Join(cidrs, ","), "err", err)
	}
}
