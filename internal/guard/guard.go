// Package guard keeps a panic in one stream or connection from ending the
// process. The daemon and the shim serve streams whose every byte comes
// from a guest the pod author controls; a bug that such input reaches
// must end that stream (with an error and a log entry naming the sandbox
// or container), never `macvz serve` or the shim.
package guard

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/containerd/errdefs"
)

// Do runs fn and returns its error. A panic in fn is logged with log
// (which carries the sandbox or container id) and its stack, and becomes
// an errdefs.ErrInternal error naming what.
func Do(log *slog.Logger, what string, fn func() error) (err error) {
	defer Recover(log, what, &err)
	return fn()
}

// Go runs fn in a new goroutine under Do; its error is dropped (fn logs
// what it must).
func Go(log *slog.Logger, what string, fn func()) {
	go Do(log, what, func() error { fn(); return nil })
}

// Recover is Do as a deferred call: `defer guard.Recover(log, what, &err)`
// at the top of a function turns its panic into *errp. errp may be nil.
// It must be deferred directly (recover works only there).
func Recover(log *slog.Logger, what string, errp *error) {
	r := recover()
	if r == nil {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	log.Error("panic recovered; ending only this "+what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	if errp != nil {
		*errp = fmt.Errorf("%s failed: internal error (panic: %v): %w", what, r, errdefs.ErrInternal)
	}
}
