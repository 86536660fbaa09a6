// Command euid prints the effective user ID it runs with. The test guest
// installs it setuid root as /bin/euid: run by a non-root user it shows
// whether privilege escalation through a setuid binary is allowed (0) or
// blocked by no_new_privs (the caller's uid), which is what critest's
// NoNewPrivs specs check with their nonewprivs image.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
