package cri

import (
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/sandbox"
)

// decodeVolumeDirs reads the pod annotation macvz.io/volume-dirs: a JSON
// array of host directories for a vz VM's volume share ("" = none).
func decodeVolumeDirs(a string) ([]string, error) {
	if a == "" {
		return nil, nil
	}
	var dirs []string
	if err := json.Unmarshal([]byte(a), &dirs); err != nil {
		return nil, fmt.Errorf("pod annotation %s must be a JSON array of absolute paths: %v: %w", sandbox.AnnotationVolumeDirs, err, errdefs.ErrInvalidArgument)
	}
	return dirs, nil
}

// checkVolumeDirs is RunPodSandbox's check of the pod's
// macvz.io/volume-dirs annotation: allowed by its runtime handler
// (FailedPrecondition otherwise: any pod author could share any host
// directory with their VM), and each entry an absolute, clean path of
// an existing directory that is not a symlink (InvalidArgument).
func (s *Service) checkVolumeDirs(handler string, cfg *runtimeapi.PodSandboxConfig) error {
	a := cfg.GetAnnotations()[sandbox.AnnotationVolumeDirs]
	if a == "" {
		return nil
	}
	name := handler
	if name == "" {
		name = config.DefaultHandler
	}
	if !s.cfg.RuntimeHandlers[name].AllowVolumeDirsAnnotation {
		return fmt.Errorf("pod annotation %s is not allowed for runtime handler %q: it shares host directories with the pod's VM; set allow_volume_dirs_annotation = true under [runtime_handlers.%s] in the daemon configuration to allow it: %w",
			sandbox.AnnotationVolumeDirs, name, name, errdefs.ErrFailedPrecondition)
	}
	dirs, err := decodeVolumeDirs(a)
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := sandbox.CheckVolumeDir(d); err != nil {
			return fmt.Errorf("pod annotation %s: %w", sandbox.AnnotationVolumeDirs, err)
		}
	}
	return nil
}
