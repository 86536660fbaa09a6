package agent

import (
	"context"
	"crypto/rand"
	"os"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/macvz/macvz/runtime/agentapi"
)

// Reseed refuses seeds of the wrong size and, as root, feeds the kernel:
// the input pool's entropy count is credited (or stays full).
func TestReseed(t *testing.T) {
	ta := startAgent(t)
	ctx := context.Background()
	for _, n := range []int{0, minSeed - 1, maxSeed + 1} {
		_, err := ta.client.Reseed(ctx, &api.ReseedRequest{Seed: make([]byte, n)})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("a %d-byte seed: %v, want InvalidArgument", n, err)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the ioctls need root; CI runs tests as root")
		}
		t.Skip("reseeding the kernel's RNG needs root: run the tests as root (sudo go test)")
	}
	// Random bytes: this test runs on the host, whose pool it credits.
	seed := make([]byte, 64)
	rand.Read(seed)
	if _, err := ta.client.Reseed(ctx, &api.ReseedRequest{Seed: seed}); err != nil {
		t.Fatalf("Reseed: %v", err)
	}
	data, err := os.ReadFile("/proc/sys/kernel/random/entropy_avail")
	if err != nil || len(data) == 0 || data[0] == '0' {
		t.Errorf("entropy_avail after a reseed: %q %v", data, err)
	}
}
