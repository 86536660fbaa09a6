package imagestore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/testimage"
	"github.com/macvz/macvz/integration/testregistry"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// TestPullDone: each pull is reported once it ends, with the bytes it
// downloaded (none for blobs already stored) and its error.
func TestPullDone(t *testing.T) {
	reg := testregistry.Start(t, testregistry.Options{})
	img, err := testimage.OCI(testimage.OCIOptions{})
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, "app", "v1", img)
	type done struct {
		fetched int64
		took    time.Duration
		err     error
	}
	var mu sync.Mutex
	var got []done
	s := newStore(t, insecure(reg.Host()), func(o *imagestore.Options) {
		o.PullDone = func(fetched int64, took time.Duration, err error) {
			mu.Lock()
			got = append(got, done{fetched, took, err})
			mu.Unlock()
		}
	})
	take := func() []done {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
	pulled := mustPull(t, s, reg.Ref("app", "v1"), nil)
	if d := take(); len(d) != 1 || d[0].err != nil || d[0].took <= 0 || d[0].fetched != pulled.Size {
		t.Errorf("first pull of an image of %d bytes: %+v", pulled.Size, d)
	}
	mustPull(t, s, reg.Ref("app", "v1"), nil)
	if d := take(); len(d) != 1 || d[0].err != nil || d[0].fetched != 0 {
		t.Errorf("a pull of what is stored: %+v, want 0 bytes fetched", d)
	}
	if _, err := s.Pull(context.Background(), reg.Ref("app", "nosuch"), nil); err == nil {
		t.Fatal("pull of a missing tag succeeded")
	}
	if d := take(); len(d) != 1 || d[0].err == nil {
		t.Errorf("a failed pull: %+v", d)
	}
	// A reference that does not parse is no pull.
	s.Pull(context.Background(), "Not A Ref", nil)
	if d := take(); len(d) != 0 {
		t.Errorf("a bad reference was reported as a pull: %+v", d)
	}
}
