// Package keyedlock is a mutex per key (a sandbox ID, an image manifest),
// made on first use and dropped when nobody holds or waits for it, so the
// set of keys ever locked does not grow with the daemon's life.
package keyedlock

import "sync"

// Locks is a set of mutexes by key. The zero value is ready to use.
type Locks[K comparable] struct {
	mu sync.Mutex
	m  map[K]*entry
}

type entry struct {
	mu   sync.Mutex
	refs int // holders and waiters, guarded by Locks.mu
}

// Lock waits for key's mutex and returns the func that releases it.
func (k *Locks[K]) Lock(key K) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[K]*entry{}
	}
	e := k.m[key]
	if e == nil {
		e = &entry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// Busy reports whether someone holds or waits for key's mutex.
func (k *Locks[K]) Busy(key K) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[key] != nil
}

// Len is the number of keys held or waited for.
func (k *Locks[K]) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}
