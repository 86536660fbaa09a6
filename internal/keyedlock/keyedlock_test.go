package keyedlock

import (
	"sync"
	"testing"
	"time"
)

// One key's holders exclude each other, other keys do not wait, and the
// set does not keep keys nobody holds.
func TestLocks(t *testing.T) {
	var k Locks[string]
	unlock := k.Lock("a")
	if !k.Busy("a") || k.Busy("b") {
		t.Fatal("Busy does not say who holds a lock")
	}
	other := make(chan struct{})
	go func() { k.Lock("b")(); close(other) }()
	select {
	case <-other:
	case <-time.After(5 * time.Second):
		t.Fatal("another key waited")
	}
	var wg sync.WaitGroup
	got := make(chan struct{})
	wg.Add(1)
	go func() { defer wg.Done(); k.Lock("a")(); close(got) }()
	select {
	case <-got:
		t.Fatal("the same key did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	wg.Wait()
	if n := k.Len(); n != 0 {
		t.Errorf("%d locks left", n)
	}
}
