package sandbox

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Turns: at most MaxConcurrentBoots at once, the next waits until one
// ends, a wait ends with its context, and no bound never waits.
func TestBootTurn(t *testing.T) {
	s := &Controller{boots: make(chan struct{}, 2)}
	ctx := context.Background()
	end1, err := s.bootTurn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	end2, err := s.bootTurn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.bootTurn(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third boot while two run: %v, want it to wait until its deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		end, err := s.bootTurn(ctx)
		if err == nil {
			end()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third boot got a turn while two run (%v)", err)
	case <-time.After(20 * time.Millisecond):
	}
	end1()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting boot got no turn after one ended")
	}
	end2()
	if len(s.boots) != 0 {
		t.Errorf("%d turns still held", len(s.boots))
	}
	free := &Controller{}
	for range 5 {
		if _, err := free.bootTurn(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
