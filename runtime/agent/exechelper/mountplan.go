package exechelper

// A container's own mount namespace is set up in a fixed order, planned
// here so it can be tested anywhere: a new /proc first when the process
// has its own PID namespace (so the masks and read-only binds under /proc
// land on the /proc it sees), then the read-only paths, then the masked
// ones (runc's order: a path both read-only and masked ends masked), the
// read-only root last.

type mountStepKind int

const (
	stepProc     mountStepKind = iota // mount a new proc on /proc
	stepReadonly                      // bind path on itself, read-only
	stepMask                          // /dev/null or an empty read-only tmpfs over path
	stepRORoot                        // remount / read-only
)

type mountStep struct {
	kind mountStepKind
	path string
}

func mountPlan(h Spec) []mountStep {
	var plan []mountStep
	if h.NewPidNS {
		plan = append(plan, mountStep{kind: stepProc, path: "/proc"})
	}
	for _, p := range h.ReadonlyPaths {
		plan = append(plan, mountStep{kind: stepReadonly, path: p})
	}
	for _, p := range h.MaskedPaths {
		plan = append(plan, mountStep{kind: stepMask, path: p})
	}
	if h.ReadOnlyRoot {
		plan = append(plan, mountStep{kind: stepRORoot, path: "/"})
	}
	return plan
}
