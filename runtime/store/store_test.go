package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func open(t *testing.T) (*Store, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func TestNamesAreUniqueAndFreedOnDelete(t *testing.T) {
	s, _ := open(t)
	a := &Sandbox{ID: NewID(), Name: "web_default_uid1_0", State: SandboxReady, CreatedAt: time.Now()}
	if err := s.CreateSandbox(a); err != nil {
		t.Fatal(err)
	}
	b := &Sandbox{ID: NewID(), Name: a.Name}
	if err := s.CreateSandbox(b); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("duplicate name: %v, want AlreadyExists", err)
	}
	if err := s.DeleteSandbox(*a); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSandbox(b); err != nil {
		t.Fatalf("name not freed: %v", err)
	}
}

func TestPrefixLookup(t *testing.T) {
	s, _ := open(t)
	a := &Sandbox{ID: "abc111" + NewID()[6:], Name: "a"}
	b := &Sandbox{ID: "abc222" + NewID()[6:], Name: "b"}
	for _, sb := range []*Sandbox{a, b} {
		if err := s.CreateSandbox(sb); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Sandbox("abc1"); err != nil || got.ID != a.ID {
		t.Fatalf("prefix lookup: %v %v", got.ID, err)
	}
	if _, err := s.Sandbox("abc"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("ambiguous prefix: %v", err)
	}
	if _, err := s.Sandbox("fff"); !errdefs.IsNotFound(err) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := s.Sandbox(""); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("empty: %v", err)
	}
}

func TestContainersNeedTheirSandboxAndSurviveReopen(t *testing.T) {
	s, path := open(t)
	if err := s.CreateContainer(&Container{ID: NewID(), SandboxID: "nope", Name: "c"}); !errdefs.IsNotFound(err) {
		t.Fatalf("container without sandbox: %v", err)
	}
	sb := &Sandbox{ID: NewID(), Name: "p"}
	s.CreateSandbox(sb)
	c := &Container{ID: NewID(), SandboxID: sb.ID, Name: "c_p", State: ContainerCreated, CreatedAt: time.Now()}
	if err := s.CreateContainer(c); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("abort")
	if _, err := s.UpdateContainer(c.ID, func(c *Container) error { c.State = ContainerRunning; return stop }); err != stop {
		t.Fatal(err)
	}
	if got, _ := s.Container(c.ID); got.State != ContainerCreated {
		t.Fatal("aborted update was applied")
	}
	if _, err := s.UpdateContainer(c.ID, func(c *Container) error { c.State = ContainerExited; c.ExitCode = 3; return nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.Containers(func(c *Container) bool { return c.SandboxID == sb.ID })
	if err != nil || len(got) != 1 || got[0].State != ContainerExited || got[0].ExitCode != 3 {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
}

// TestIndexFollowsTheDatabase: reads come from memory, and memory holds
// what the database holds: after updates, deletes, a failed update, and
// a reopen; a caller's copy changed in place changes nothing stored.
func TestIndexFollowsTheDatabase(t *testing.T) {
	s, p := open(t)
	base := time.Now()
	var ids []string
	for i := range 3 {
		sb := &Sandbox{ID: NewID(), Name: "pod" + string(rune('a'+i)), State: SandboxReady, CreatedAt: base.Add(time.Duration(2-i) * time.Second), IPs: []string{"10.0.0.1"}}
		if err := s.CreateSandbox(sb); err != nil {
			t.Fatal(err)
		}
		sb.IPs[0] = "changed by the caller after create"
		ids = append(ids, sb.ID)
	}
	if _, err := s.UpdateSandbox(ids[0], func(r *Sandbox) error { r.State = SandboxNotReady; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateSandbox(ids[1], func(r *Sandbox) error { r.State = SandboxNotReady; return errors.New("no") }); err == nil {
		t.Fatal("a failing update did not fail")
	}
	got, err := s.Sandbox(ids[0][:10])
	if err != nil || got.State != SandboxNotReady || got.IPs[0] != "10.0.0.1" {
		t.Fatalf("Sandbox after update: %+v, %v", got, err)
	}
	got.State = SandboxReady // a copy: stays the caller's
	if again, _ := s.Sandbox(ids[0]); again.State != SandboxNotReady {
		t.Errorf("a caller's change to its copy reached the store")
	}
	if err := s.DeleteSandbox(Sandbox{ID: ids[2], Name: "podc"}); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store, when string) {
		all, err := s.Sandboxes(nil)
		if err != nil || len(all) != 2 || all[0].ID != ids[1] || all[1].ID != ids[0] {
			t.Fatalf("%s: %d sandboxes (%v), want pod b then pod a, oldest first", when, len(all), err)
		}
		if all[0].State != SandboxReady || all[1].State != SandboxNotReady {
			t.Errorf("%s: states %v %v", when, all[0].State, all[1].State)
		}
		if _, err := s.Sandbox(ids[2]); !errdefs.IsNotFound(err) {
			t.Errorf("%s: a deleted sandbox: %v", when, err)
		}
	}
	check(s, "before reopening")
	s.Close()
	s2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2, "after reopening")
}
