package cri

import "github.com/macvz/macvz/cri/deviceplugin"

// VMSlots is the sandbox controller's VM slots of a guest OS as the
// device plugin (cri/deviceplugin.Slots) sees them: the bound and the
// pods whose VM runs or boots.
func (s *Service) VMSlots(os string) (int, []deviceplugin.Holder, error) {
	limit, hs, err := s.ctl.Slots(os)
	if err != nil {
		return 0, nil, err
	}
	out := make([]deviceplugin.Holder, 0, len(hs))
	for _, h := range hs {
		out = append(out, deviceplugin.Holder{SandboxID: h.SandboxID, Namespace: h.Namespace, Name: h.Name})
	}
	return limit, out, nil
}
