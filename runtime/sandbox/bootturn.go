package sandbox

import (
	"context"
	"fmt"
)

// bootTurn waits until fewer than Config.MaxConcurrentBoots cold boots
// run and returns the function that ends this one's turn. Waiting ends
// with ctx (kubelet's RunPodSandbox deadline), as an error the caller
// handles like any other boot failure: bootVMFrom undoes the disk clone
// and record changes it made before asking. Without a bound it returns
// at once.
func (s *Controller) bootTurn(ctx context.Context) (func(), error) {
	if s.boots == nil {
		return func() {}, nil
	}
	select {
	case s.boots <- struct{}{}:
		return func() { <-s.boots }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of the %d cold boots in progress to finish (vm.max_concurrent_boots): %w", cap(s.boots), ctx.Err())
	}
}
