package agent

import (
	"net"
	"os"
	"strconv"
	"testing"
)

// TestOpenFiles: this process's files and sockets are counted; a
// missing process is none.
func TestOpenFiles(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	fds0, socks0 := openFiles(pid)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fds, socks := openFiles(pid)
	if fds < fds0+2 || socks < socks0+1 {
		t.Errorf("files %d → %d, sockets %d → %d after opening a file and a socket", fds0, fds, socks0, socks)
	}
	if fds, socks := openFiles("0"); fds != 0 || socks != 0 {
		t.Errorf("no such process: %d files, %d sockets", fds, socks)
	}
}
