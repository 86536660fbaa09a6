package agent

import (
	"net"
	"os"
	"strconv"
	"testing"
)

// TestOpenFiles: this process's files and sockets are counted; a
// missing process is none. Other tests' goroutines may open or close a
// descriptor between two counts (a finished command's pipes): the
// measure is retried, and fails only if the opened ones never show.
func TestOpenFiles(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	var fds0, socks0, fds, socks uint64
	for range 10 {
		fds0, socks0 = openFiles(pid)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		fds, socks = openFiles(pid)
		f.Close()
		ln.Close()
		if fds >= fds0+2 && socks >= socks0+1 {
			break
		}
	}
	if fds < fds0+2 || socks < socks0+1 {
		t.Errorf("files %d → %d, sockets %d → %d after opening a file and a socket", fds0, fds, socks0, socks)
	}
	if fds, socks := openFiles("0"); fds != 0 || socks != 0 {
		t.Errorf("no such process: %d files, %d sockets", fds, socks)
	}
}
