package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/cri"
	"github.com/macvz/macvz/cri/config"
	"github.com/macvz/macvz/runtime/adminapi"
)

// The admin commands (`macvz node`, `vm`, `image` but install-agent)
// talk to the running daemon over its admin socket (runtime/adminapi),
// never to its databases, which the daemon holds open.

// adminConn is a connection to the daemon's admin API.
type adminConn struct {
	adminapi.AdminClient
	cc *grpc.ClientConn
}

func (c *adminConn) Close() error { return c.cc.Close() }

// addConfigFlag adds --config (the daemon's configuration, whose state
// directory holds the admin socket) to cmd and its subcommands.
func addConfigFlag(cmd *cobra.Command) *string {
	p := new(string)
	cmd.PersistentFlags().StringVar(p, "config", config.DefaultPath, "the daemon's configuration file (its state directory holds the admin socket)")
	return p
}

// dialAdmin connects to the admin socket of the daemon that cfgPath
// configures. A daemon that does not answer is said plainly, with the
// socket's path.
func dialAdmin(cmd *cobra.Command, cfgPath string) (*adminConn, error) {
	cfg, err := config.Load(cfgPath, cmd.Flags().Changed("config"))
	if err != nil {
		return nil, err
	}
	path := cri.AdminSocket(cfg)
	if err := probeAdmin(path); err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &adminConn{AdminClient: adminapi.NewAdminClient(cc), cc: cc}, nil
}

// probeAdmin connects once to path and says why that fails in the
// operator's terms.
func probeAdmin(path string) error {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	switch {
	case err == nil:
		c.Close()
		return nil
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("the macvz daemon is not running: no admin socket at %s (start it with `macvz serve`, or give its --config)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("the macvz daemon is not running: nothing answers on its admin socket %s", path)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%s is root's: run this as root (sudo)", path)
	}
	return fmt.Errorf("the macvz daemon's admin socket %s: %w", path, err)
}

// adminErr is the daemon's answer as the CLI prints it: the status's
// message, without gRPC's wrapping.
func adminErr(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return errors.New(st.Message())
	}
	return err
}

// withAdmin runs f with a connection to the daemon and a context that
// ends with the command's.
func withAdmin(cmd *cobra.Command, cfgPath *string, f func(ctx context.Context, c *adminConn) error) error {
	c, err := dialAdmin(cmd, *cfgPath)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return adminErr(f(ctx, c))
}

// humanSize is bytes in binary units, as crictl and docker show sizes
// ("0B", "512B", "1.5KiB", "2GiB").
func humanSize(b int64) string {
	if b < 1024 {
		return fmt.Sprintf("%dB", b)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(b)
	u := -1
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	s := fmt.Sprintf("%.1f", v)
	s = strings.TrimSuffix(s, ".0")
	return s + units[u]
}

// humanDuration is a duration as an uptime ("45s", "12m", "3h4m",
// "2d5h").
func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// shortID is an ID as crictl shows it: 13 characters, without
// "sha256:".
func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	return id[:min(13, len(id))]
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// safeTerminal makes bytes a guest wrote safe to show on a terminal:
// control characters but newline, tab and carriage return (escape
// sequences above all, which could retitle the window, move the cursor
// or answer queries into the terminal's input) become \xNN, as does
// invalid UTF-8; carry holds an incomplete UTF-8 sequence for the next
// call.
type safeTerminal struct {
	w     io.Writer
	carry []byte
}

func (s *safeTerminal) Write(p []byte) (int, error) {
	b := append(s.carry, p...)
	s.carry = nil
	var out []byte
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			if !utf8.FullRune(b) && len(b) < utf8.UTFMax {
				s.carry = append([]byte(nil), b...)
				break
			}
			out = fmt.Appendf(out, `\x%02x`, b[0])
			b = b[1:]
			continue
		}
		switch {
		case r == '\n' || r == '\t' || r == '\r':
			out = append(out, b[:n]...)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			out = fmt.Appendf(out, `\x%02x`, r)
		default:
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	if _, err := s.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fromUnixNano is the admin API's time: 0 is the zero time.
func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
