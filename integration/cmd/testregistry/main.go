// Command testregistry serves the same in-process OCI registry the tests
// use, in the foreground, for `make demo` and manual testing:
//
//	testregistry -addr 127.0.0.1:5000 -root /tmp/reg -htpasswd user:pass
//
// Plain HTTP only: point clients at it as an insecure (http) registry.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/macvz/macvz/integration/testregistry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5000", "listen address (port 0 picks a free one)")
	root := flag.String("root", "", "storage directory (default: a temporary directory removed on exit)")
	auth := flag.String("htpasswd", "", "require HTTP Basic auth as user:pass")
	flag.Parse()

	opts := testregistry.Options{Addr: *addr, Root: *root}
	if *auth != "" {
		user, pass, ok := strings.Cut(*auth, ":")
		if !ok || user == "" || pass == "" {
			fmt.Fprintln(os.Stderr, "testregistry: -htpasswd wants user:pass")
			os.Exit(2)
		}
		opts.Username, opts.Password = user, pass
	}
	r, err := testregistry.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testregistry:", err)
		os.Exit(1)
	}
	// Scripts wait for this line and read the address from it.
	fmt.Printf("testregistry listening on %s\n", r.Host())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case <-r.Done():
	}
	r.Stop()
}
